#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sdxl_fuzz::safetensors_file(data));
