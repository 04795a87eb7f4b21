//! See signet::fuzzing::receipt, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("receipt"), |data: &[u8]| {
    signet::fuzzing::receipt(data)
});
