//! See signet::fuzzing::attestation_object, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("attestation_object"), |data: &[u8]| {
    signet::fuzzing::attestation_object(data)
});
