//! libFuzzer target: see [`troupe_fuzz::module_tree`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    troupe_fuzz::module_tree(data);
});
