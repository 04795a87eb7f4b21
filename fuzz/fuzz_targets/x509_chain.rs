//! See signet::fuzzing::x509_chain, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("x509_chain"), |data: &[u8]| {
    signet::fuzzing::x509_chain(data)
});
