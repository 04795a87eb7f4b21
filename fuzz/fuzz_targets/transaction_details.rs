//! See signet::fuzzing::transaction_details, which tests/fuzz_regressions.rs also runs.
#![no_main]
libfuzzer_sys::fuzz_target!(init: signet::fuzzing::init("transaction_details"), |data: &[u8]| {
    signet::fuzzing::transaction_details(data)
});
