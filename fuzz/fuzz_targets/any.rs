#![no_main]

//! Every target in one binary, picked by `SDXL_FUZZ_TARGET`: what `tools/fuzz/run.sh` ships to a
//! many-core machine to run all targets side by side from a single file.

static TARGET: std::sync::OnceLock<fn(&[u8])> = std::sync::OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let target = TARGET.get_or_init(|| {
        let name = std::env::var("SDXL_FUZZ_TARGET").expect("set SDXL_FUZZ_TARGET to a target name");
        sdxl_fuzz::TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap_or_else(|| panic!("no fuzz target {name}"))
    });
    target(data)
});
