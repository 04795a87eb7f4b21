//! See signet::fuzzing::evidence_record, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("evidence_record"), |data: &[u8]| {
    signet::fuzzing::evidence_record(data)
});
