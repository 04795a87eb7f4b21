//! See signet::fuzzing::assertion_json, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("assertion_json"), |data: &[u8]| {
    signet::fuzzing::assertion_json(data)
});
