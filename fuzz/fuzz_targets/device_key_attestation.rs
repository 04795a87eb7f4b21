//! See signet::fuzzing::device_key_attestation, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("device_key_attestation"), |data: &[u8]| {
    signet::fuzzing::device_key_attestation(data)
});
