//! clientDataJSON parsing and checking: any bytes must give a value or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet::webauthn::RelyingParty;
use signet::webauthn::client_data::{CeremonyType, ClientData};

fuzz_target!(|data: &[u8]| {
    if let Ok(cd) = ClientData::parse(data) {
        let rp = RelyingParty::new("example.org", vec!["https://example.org".into()]);
        let _ = cd.check(&[CeremonyType::Get, CeremonyType::Create], &[0u8; 16], &rp);
    }
});
