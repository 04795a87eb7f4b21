//! See signet::fuzzing::sealed_registration, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("sealed_registration"), |data: &[u8]| {
    signet::fuzzing::sealed_registration(data)
});
