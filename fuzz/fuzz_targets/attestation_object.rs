//! The attestation object and every statement format behind it, with a
//! fixed time and the default (strict) policy.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use signet::webauthn::attestation::{self, AttestationPolicy, Statement};
use signet::webauthn::registration::AttestationObject;

fuzz_target!(|data: &[u8]| {
    let Ok(object) = AttestationObject::parse(data) else { return };
    let policy = AttestationPolicy::default();
    let stmt = Statement {
        fmt: &object.fmt,
        att_stmt: &object.att_stmt,
        auth_data: &object.auth_data,
        client_data_hash: &[7u8; 32],
        policy: &policy,
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600),
    };
    let _ = attestation::verify(&stmt);
});
