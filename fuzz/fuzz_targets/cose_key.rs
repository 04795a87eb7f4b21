//! See signet::fuzzing::cose_key, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("cose_key"), |data: &[u8]| {
    signet::fuzzing::cose_key(data)
});
