//! With the `cuda` feature, compiles the kernels in src/cuda/kernels/ to fatbins holding native
//! code (SASS) for the target GPU plus its PTX for newer ones, so no kernel of ours is compiled
//! by the driver at run time. Without the feature this does nothing (CPU builds need no nvcc).

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 3] = ["group_norm", "geglu", "flash_attention"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/kernels");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    // Our kernels use mma.sync / ldmatrix / cp.async: compute capability 8.0 or newer.
    let compute_cap: u32 = std::env::var("CUDA_COMPUTE_CAP").ok().and_then(|c| c.parse().ok()).unwrap_or(90);
    for kernel in KERNELS {
        let source = format!("src/cuda/kernels/{kernel}.cu");
        let output = out_dir.join(format!("{kernel}.fatbin"));
        let status = Command::new(&nvcc)
            .args(["--fatbin", "-O3", "-std=c++17", "-lineinfo"])
            .arg(format!("-gencode=arch=compute_{compute_cap},code=sm_{compute_cap}"))
            .arg(format!("-gencode=arch=compute_{compute_cap},code=compute_{compute_cap}"))
            .arg("-o")
            .arg(&output)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {nvcc} for {source}: {e} (set NVCC or source tools/cuda/env.sh)"));
        assert!(status.success(), "{nvcc} failed on {source}");
    }
}
