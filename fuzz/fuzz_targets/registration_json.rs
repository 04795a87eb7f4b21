//! See signet::fuzzing::registration_json, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("registration_json"), |data: &[u8]| {
    signet::fuzzing::registration_json(data)
});
