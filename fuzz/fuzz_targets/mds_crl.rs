//! See signet::fuzzing::mds_crl, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("mds_crl"), |data: &[u8]| {
    signet::fuzzing::mds_crl(data)
});
