//! See signet::fuzzing::authenticator_data, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("authenticator_data"), |data: &[u8]| {
    signet::fuzzing::authenticator_data(data)
});
