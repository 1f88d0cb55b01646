//! The fuzz targets (fuzz/src/lib.rs) on stable Rust: every committed seed and every input that
//! once crashed a target (fuzz/regressions/<target>/) goes through the same code as under
//! libFuzzer, so `cargo test` keeps fixed crashes fixed. Each call must return (an error is
//! fine); a panic fails the test, naming the input.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

#[test]
fn every_committed_fuzz_input_runs_through_its_target_without_a_panic() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, target) in targets::TARGETS {
        let inputs = targets::committed_inputs(&fuzz_dir, name);
        assert!(!inputs.is_empty(), "fuzz target {name} has no committed seeds in fuzz/corpus/{name}");
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "fuzz target {name} panicked on {}", input.display());
            replayed += 1;
        }
    }
    eprintln!("{replayed} committed fuzz inputs replayed");
}
