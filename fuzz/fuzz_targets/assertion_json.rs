//! A whole authentication response against a fixed ES256 credential.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use signet::webauthn::assertion::{self, StoredCredential};
use signet::webauthn::cose_key::CredentialPublicKey;
use signet::webauthn::response::AuthenticationResponse;
use signet::webauthn::{RelyingParty, UserVerification};

fn credential() -> &'static CredentialPublicKey {
    static KEY: OnceLock<CredentialPublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let secret = p256_point();
        let cose = signet::webauthn::cose_key::cose_p256(&secret);
        CredentialPublicKey::from_cose(&cose, "k").expect("fixed key")
    })
}

/// A fixed valid P-256 public point (the generator).
fn p256_point() -> [u8; 65] {
    let mut p = [0u8; 65];
    p[0] = 4;
    p[1..33].copy_from_slice(&[
        0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03,
        0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
    ]);
    p[33..].copy_from_slice(&[
        0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce,
        0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
    ]);
    p
}

fuzz_target!(|data: &[u8]| {
    let Ok(response) = AuthenticationResponse::from_json(data) else { return };
    let rp = RelyingParty::new("example.org", vec!["https://example.org".into()]);
    let stored = StoredCredential {
        id: &response.id,
        public_key: credential(),
        sign_count: 5,
        backup_eligible: false,
        user_handle: b"user",
    };
    let exp = assertion::Expectation {
        rp: &rp,
        challenge: &[0u8; 32],
        user_verification: UserVerification::Preferred,
        require_user_presence: true,
        discoverable: false,
        allow_payment: true,
    };
    let _ = assertion::verify(&response, &stored, &exp);
});
