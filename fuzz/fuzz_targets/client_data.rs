//! See signet::fuzzing::client_data, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("client_data"), |data: &[u8]| {
    signet::fuzzing::client_data(data)
});
