//! libFuzzer target: see [`troupe_fuzz::catalog`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    troupe_fuzz::catalog(data);
});
