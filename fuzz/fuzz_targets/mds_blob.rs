//! See signet::fuzzing::mds_blob, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("mds_blob"), |data: &[u8]| {
    signet::fuzzing::mds_blob(data)
});
