//! One `step` of each scheduler on an SDXL-sized 1×4×128×128 latent (1024², CPU, float32),
//! taken at model call 3 so the multistep and two-call schedulers run their higher-order
//! update (Heun's correction, KDPM2's midpoint half, DPM-Solver++(2M), UniC + UniP, LMS order 4).
//!
//!     cargo bench --bench schedulers

use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sdxl::rng::{NormalKernel, TorchCpuGenerator};
use sdxl::schedulers::{build_scheduler, NoiseSource, Scheduler, SchedulerConfig, SchedulerKind, SchedulerOverrides};

const STEPS: usize = 25;
const MEASURED_CALL: usize = 3;
const LATENT: [usize; 4] = [1, 4, 128, 128];

struct TorchGeneratorNoise(TorchCpuGenerator);

impl NoiseSource for TorchGeneratorNoise {
    fn sample_like(&mut self, latents: &Tensor) -> sdxl::Result<Tensor> {
        Ok(Tensor::from_vec(self.0.randn(latents.elem_count()), latents.dims(), latents.device())?)
    }
}

fn latent(seed: u64) -> Tensor {
    let values = TorchCpuGenerator::new(seed, NormalKernel::Vectorized).randn(LATENT.iter().product());
    Tensor::from_vec(values, &LATENT[..], &Device::Cpu).unwrap()
}

/// A scheduler that has already taken `MEASURED_CALL` steps, with the sample and model output
/// for the next one.
fn prepared(
    kind: SchedulerKind,
    overrides: &SchedulerOverrides,
) -> (Box<dyn Scheduler>, Tensor, Tensor, TorchGeneratorNoise) {
    let mut scheduler = build_scheduler(kind, &SchedulerConfig::default(), overrides, STEPS).unwrap();
    let mut noise = TorchGeneratorNoise(TorchCpuGenerator::new(1, NormalKernel::Vectorized));
    let mut sample = (latent(0) * scheduler.init_noise_sigma()).unwrap();
    let model_output = latent(2);
    for index in 0..MEASURED_CALL {
        sample = scheduler.step(&model_output, index, &sample, &mut noise).unwrap();
    }
    (scheduler, sample, model_output, noise)
}

fn bench_steps(c: &mut Criterion) {
    let mut group = c.benchmark_group("scheduler_step_1x4x128x128");
    group.measurement_time(Duration::from_secs(3)).sample_size(30);
    let sde = SchedulerOverrides { algorithm_type: Some("sde-dpmsolver++".into()), ..Default::default() };
    let cases = [
        ("EulerDiscrete", SchedulerKind::EulerDiscrete, SchedulerOverrides::default()),
        ("EulerAncestralDiscrete", SchedulerKind::EulerAncestralDiscrete, SchedulerOverrides::default()),
        ("HeunDiscrete", SchedulerKind::HeunDiscrete, SchedulerOverrides::default()),
        ("KDPM2Discrete", SchedulerKind::Kdpm2Discrete, SchedulerOverrides::default()),
        ("KDPM2AncestralDiscrete", SchedulerKind::Kdpm2AncestralDiscrete, SchedulerOverrides::default()),
        ("LMSDiscrete", SchedulerKind::LmsDiscrete, SchedulerOverrides::default()),
        ("DDIM", SchedulerKind::Ddim, SchedulerOverrides::default()),
        ("DPMSolverMultistep", SchedulerKind::DpmSolverMultistep, SchedulerOverrides::default()),
        ("DPMSolverMultistep_sde", SchedulerKind::DpmSolverMultistep, sde),
        ("DPMSolverSinglestep", SchedulerKind::DpmSolverSinglestep, SchedulerOverrides::default()),
        ("UniPCMultistep", SchedulerKind::UniPcMultistep, SchedulerOverrides::default()),
    ];
    for (name, kind, overrides) in cases {
        group.bench_function(name, |b| {
            b.iter_batched(
                || prepared(kind, &overrides),
                |(mut scheduler, sample, model_output, mut noise)| {
                    scheduler.step(&model_output, MEASURED_CALL, &sample, &mut noise).unwrap()
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_steps);
criterion_main!(benches);
