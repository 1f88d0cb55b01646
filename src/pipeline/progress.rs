//! What the pipeline reports while it runs, and how a host stops it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub enum Stage {
    Encode = 0,
    Denoise = 1,
    Decode = 2,
    Upscale = 3,
    Save = 4,
    /// The refiner's denoising steps, counted from 0 to its own step count.
    Refine = 5,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Encode => "encode",
            Stage::Denoise => "denoise",
            Stage::Decode => "decode",
            Stage::Upscale => "upscale",
            Stage::Save => "save",
            Stage::Refine => "refine",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ProgressEvent {
    pub stage: Stage,
    /// Image of the batch the event concerns (0 for batch-wide stages).
    pub image_index: u32,
    /// Denoising steps done so far, of `total_steps`.
    pub step: u32,
    pub total_steps: u32,
    /// UNet evaluations done so far (second-order schedulers make two per step).
    pub model_calls: u32,
    pub elapsed_ms: u64,
}

/// Receives progress; returning false asks the pipeline to stop with `Error::Cancelled`.
pub trait ProgressObserver {
    fn on_progress(&mut self, event: &ProgressEvent) -> bool;
}

/// Observes nothing and never cancels.
pub struct NoProgress;

impl ProgressObserver for NoProgress {
    fn on_progress(&mut self, _event: &ProgressEvent) -> bool {
        true
    }
}
