//! libFuzzer target: see [`troupe_fuzz::csr`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    troupe_fuzz::csr(data);
});
