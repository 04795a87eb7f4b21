//! X.509 chain input: the data is a CBOR x5c array (as in attStmt); the
//! chain is validated without anchors and against itself as anchor.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use signet::webauthn::certpath::{self, PathOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = ciborium::de::from_reader_with_recursion_limit::<ciborium::Value, _>(data, 8) else {
        return;
    };
    let Ok(chain) = certpath::parse_x5c(&value, "x5c") else { return };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    for allow in [false, true] {
        let opts = PathOptions { allow_root_in_chain: allow };
        let _ = certpath::validate(&chain, &[], now, &opts);
        let _ = certpath::validate(&chain, &chain[chain.len() - 1..], now, &opts);
    }
    for cert in &chain {
        let _ = cert.public_key();
        let _ = cert.basic_constraints();
        let _ = cert.key_usage();
    }
});
