#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdxl_fuzz::vae_file(data));
