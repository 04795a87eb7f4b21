//! Authenticator data: flags, lengths, attested credential data, extensions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signet::webauthn::authenticator_data::AuthenticatorData;

fuzz_target!(|data: &[u8]| {
    let _ = AuthenticatorData::parse(data, "authenticatorData");
});
