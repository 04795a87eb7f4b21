//! COSE_Key parsing, then a verification attempt with whatever key came out.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet::webauthn::cose_key::CredentialPublicKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = CredentialPublicKey::from_cose(data, "credentialPublicKey") {
        let _ = key.verify(b"message", &data[..data.len().min(72)], "signature");
    }
});
