//! A whole registration response as a browser's toJSON() sends it.
#![no_main]
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use signet::webauthn::attestation::AttestationPolicy;
use signet::webauthn::response::RegistrationResponse;
use signet::webauthn::{RelyingParty, UserVerification, registration};

fuzz_target!(|data: &[u8]| {
    let Ok(response) = RegistrationResponse::from_json(data) else { return };
    let rp = RelyingParty::new("example.org", vec!["https://example.org".into()]);
    let policy = AttestationPolicy::default();
    let exp = registration::Expectation {
        rp: &rp,
        challenge: &[0u8; 32],
        user_verification: UserVerification::Preferred,
        require_user_presence: true,
        policy: &policy,
        trust_anchors: &[],
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600),
    };
    let _ = registration::verify(&response, &exp);
});
