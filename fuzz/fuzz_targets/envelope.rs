//! libFuzzer target: see [`troupe_fuzz::envelope`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    troupe_fuzz::envelope(data);
});
