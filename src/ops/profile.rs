//! Where a forward pass spends its time, by kind of op, for `gpu_bench profile`. When on,
//! every timed op waits for the device before and after itself, so the times are exact but the
//! whole pass runs slower than without the profile (no overlap of launch and execution);
//! "other" is the pass's time minus the timed ops (elementwise ops, copies, launch gaps).
//! Off (the default) it costs one relaxed atomic load per op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::Device;
use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Conv3x3,
    Conv1x1,
    Linear,
    Attention,
    GroupNorm,
    LayerNorm,
    Geglu,
    Layout,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Conv3x3 => "convolution 3x3",
            Category::Conv1x1 => "convolution 1x1",
            Category::Linear => "linear (GEMM + bias)",
            Category::Attention => "attention",
            Category::GroupNorm => "group norm (+SiLU)",
            Category::LayerNorm => "layer norm",
            Category::Geglu => "GEGLU",
            Category::Layout => "layout copies (NCHW <-> tokens)",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Vec<(Category, u64, Duration)>> = Mutex::new(Vec::new());
thread_local! {
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Turns timing on or off and clears what was recorded.
pub fn enable(on: bool) {
    TOTALS.lock().clear();
    ENABLED.store(on, Ordering::Relaxed);
}

/// (category, calls, total time) recorded since `enable(true)`, largest first.
pub fn report() -> Vec<(Category, u64, Duration)> {
    let mut totals = TOTALS.lock().clone();
    totals.sort_by(|a, b| b.2.cmp(&a.2));
    totals
}

/// Runs `op`, timing it under `category` when profiling is on. Nested timed ops count once,
/// in the outermost category.
pub fn timed<T, E: From<candle_core::Error>>(category: Category, device: &Device, op: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    if !ENABLED.load(Ordering::Relaxed) || DEPTH.with(|d| d.get()) > 0 {
        return op();
    }
    device.synchronize()?;
    DEPTH.with(|d| d.set(1));
    let start = Instant::now();
    let result = op();
    let synced = device.synchronize();
    let elapsed = start.elapsed();
    DEPTH.with(|d| d.set(0));
    let value = result?;
    synced?;
    let mut totals = TOTALS.lock();
    match totals.iter_mut().find(|(c, _, _)| *c == category) {
        Some(entry) => {
            entry.1 += 1;
            entry.2 += elapsed;
        }
        None => totals.push((category, 1, elapsed)),
    }
    Ok(value)
}
