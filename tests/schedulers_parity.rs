//! The ten schedulers against diffusers 0.42.1: timesteps, sigma tables, init_noise_sigma,
//! 10-step trajectories on a synthetic model and add_noise, for every option set that
//! tools/reference/make_scheduler_references.py recorded (tests/fixtures/reference/schedulers.*).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, reference};
use sdxl::rng::{NormalKernel, TorchCpuGenerator};
use sdxl::schedulers::{
    build_scheduler, ddim, dpm_solver_multistep, dpm_solver_singlestep, euler_ancestral_discrete, euler_discrete,
    heun_discrete, k_dpm_2_ancestral_discrete, k_dpm_2_discrete, lms_discrete, unipc_multistep, NoiseSource, Scheduler,
    SchedulerConfig, SchedulerKind, SchedulerOverrides,
};

const STEPS: usize = 10;
const TIMESTEP_REL_TOLERANCE: f64 = 1e-6;
const SIGMA_REL_TOLERANCE: f64 = 1e-6;
const SAMPLE_ABS_TOLERANCE: f32 = 1e-5;

/// One option set of one scheduler, as schedulers.json lists it.
struct Case {
    class: String,
    set: String,
    /// Request options (`scheduler_options` names).
    options: serde_json::Value,
    /// Extra scheduler_config.json keys.
    config: serde_json::Value,
    model_calls: usize,
}

impl Case {
    fn name(&self) -> String {
        format!("{}/{}", self.class, self.set)
    }

    fn kind(&self) -> SchedulerKind {
        SchedulerKind::from_name(&self.class).unwrap()
    }

    fn overrides(&self) -> SchedulerOverrides {
        let text = |key: &str| self.options.get(key).and_then(|v| v.as_str()).map(str::to_string);
        SchedulerOverrides {
            use_karras_sigmas: self.options.get("use_karras_sigmas").and_then(|v| v.as_bool()),
            timestep_spacing: text("timestep_spacing"),
            prediction_type: text("prediction_type"),
            algorithm_type: text("algorithm_type"),
            solver_order: self.options.get("solver_order").and_then(|v| v.as_u64()).map(|v| v as usize),
            eta: self.options.get("eta").and_then(|v| v.as_f64()),
        }
    }

    /// SDXL base's scheduler_config.json plus this case's extra keys.
    fn base_config(&self) -> SchedulerConfig {
        config_with(&self.config)
    }

    /// The config the scheduler ends up with: base, extra keys and request options.
    fn merged_config(&self) -> SchedulerConfig {
        let mut keys = self.config.as_object().cloned().unwrap_or_default();
        keys.extend(self.options.as_object().cloned().unwrap_or_default());
        config_with(&serde_json::Value::Object(keys))
    }

    fn build(&self) -> Box<dyn Scheduler> {
        build_scheduler(self.kind(), &self.base_config(), &self.overrides(), STEPS)
            .unwrap_or_else(|e| panic!("{}: build_scheduler failed: {e}", self.name()))
    }
}

fn sdxl_config_json() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("tiny-sdxl/scheduler/scheduler_config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config_with(extra: &serde_json::Value) -> SchedulerConfig {
    let mut json = sdxl_config_json();
    for (key, value) in extra.as_object().into_iter().flatten() {
        json[key] = value.clone();
    }
    SchedulerConfig::from_json(&json.to_string()).unwrap()
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("reference/schedulers.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(meta["steps"], STEPS as u64);
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            class: case["class"].as_str().unwrap().to_string(),
            set: case["set"].as_str().unwrap().to_string(),
            options: case["options"].clone(),
            config: case["config"].clone(),
            model_calls: case["model_calls"].as_u64().unwrap() as usize,
        })
        .collect()
}

fn values_f64(tensor: &Tensor) -> Vec<f64> {
    tensor.to_dtype(candle_core::DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn values_f32(tensor: &Tensor) -> Vec<f32> {
    tensor.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest |a − e| / |e| (|a − e| where e = 0), and its index.
fn max_relative_difference(actual: &[f64], expected: &[f64]) -> (f64, usize) {
    actual
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (a, e))| (if *e == 0.0 { (a - e).abs() } else { ((a - e) / e).abs() }, i))
        .fold((0.0, 0), |best, x| if x.0 > best.0 || x.0.is_nan() { x } else { best })
}

fn max_abs_difference(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims());
    values_f32(actual).iter().zip(values_f32(expected)).map(|(a, e)| (a - e).abs()).fold(0.0, f32::max)
}

/// Step noise from one `torch.Generator("cpu").manual_seed(seed)`, as the reference passes
/// the same generator to every `step`.
struct TorchGeneratorNoise(TorchCpuGenerator);

impl NoiseSource for TorchGeneratorNoise {
    fn sample_like(&mut self, latents: &Tensor) -> sdxl::Result<Tensor> {
        let values = self.0.randn(latents.elem_count());
        Ok(Tensor::from_vec(values, latents.dims(), latents.device())?)
    }
}

/// The reference's stand-in for the UNet: 0.5·tanh(x_in) + 0.1·cos(t/100), in float64 and
/// rounded once to float32 (so libm's tanh and torch's agree to the bit).
fn synthetic_model(model_input: &Tensor, timestep: f64) -> Tensor {
    let offset = 0.1 * (timestep / 100.0).cos();
    let wide = model_input.to_dtype(DType::F64).unwrap();
    ((wide.tanh().unwrap() * 0.5).unwrap() + offset).unwrap().to_dtype(DType::F32).unwrap()
}

/// The samples after each model call of a 10-step run, as the reference script runs it.
fn trajectory(scheduler: &mut dyn Scheduler) -> Vec<Tensor> {
    let sample_shape = [1usize, 4, 8, 8];
    let initial = TorchCpuGenerator::new(0, NormalKernel::Vectorized).randn(sample_shape.iter().product());
    let mut sample =
        (Tensor::from_vec(initial, &sample_shape[..], &Device::Cpu).unwrap() * scheduler.init_noise_sigma()).unwrap();
    let mut noise = TorchGeneratorNoise(TorchCpuGenerator::new(1, NormalKernel::Vectorized));
    let timesteps = scheduler.timesteps().to_vec();
    let mut samples = Vec::with_capacity(timesteps.len());
    for (index, &timestep) in timesteps.iter().enumerate() {
        let model_input = scheduler.scale_model_input(&sample, index).unwrap();
        let model_output = synthetic_model(&model_input, timestep);
        sample = scheduler.step(&model_output, index, &sample, &mut noise).unwrap();
        samples.push(sample.clone());
    }
    samples
}

/// diffusers' `scheduler.sigmas` of our scheduler for a case (DDIM has none).
fn sigma_table(case: &Case) -> Option<Vec<f32>> {
    let config = case.merged_config();
    let table = match case.kind() {
        SchedulerKind::EulerDiscrete => euler_discrete::EulerDiscrete::new(&config, STEPS).unwrap().sigmas().to_vec(),
        SchedulerKind::EulerAncestralDiscrete => {
            euler_ancestral_discrete::EulerAncestralDiscrete::new(&config, STEPS).unwrap().sigmas().to_vec()
        }
        SchedulerKind::HeunDiscrete => heun_discrete::HeunDiscrete::new(&config, STEPS).unwrap().sigmas().to_vec(),
        SchedulerKind::Kdpm2Discrete => k_dpm_2_discrete::Kdpm2Discrete::new(&config, STEPS).unwrap().sigmas().to_vec(),
        SchedulerKind::Kdpm2AncestralDiscrete => {
            k_dpm_2_ancestral_discrete::Kdpm2AncestralDiscrete::new(&config, STEPS).unwrap().sigmas().to_vec()
        }
        SchedulerKind::LmsDiscrete => lms_discrete::LmsDiscrete::new(&config, STEPS).unwrap().sigmas().to_vec(),
        SchedulerKind::DpmSolverMultistep => {
            dpm_solver_multistep::DpmSolverMultistep::new(&config, STEPS).unwrap().sigmas().to_vec()
        }
        SchedulerKind::DpmSolverSinglestep => {
            dpm_solver_singlestep::DpmSolverSinglestep::new(&config, STEPS).unwrap().sigmas().to_vec()
        }
        SchedulerKind::UniPcMultistep => {
            unipc_multistep::UniPcMultistep::new(&config, STEPS).unwrap().sigmas().to_vec()
        }
        SchedulerKind::Ddim => {
            let _ = ddim::Ddim::new(&config, STEPS).unwrap();
            return None;
        }
    };
    Some(table)
}

fn expected<'a>(refs: &'a HashMap<String, Tensor>, case: &Case, key: &str) -> &'a Tensor {
    let full = format!("{}/{key}", case.name());
    refs.get(&full).unwrap_or_else(|| panic!("reference has no {full}"))
}

#[test]
fn sdxl_scheduler_config_json_parses_to_the_default_config() {
    assert_eq!(config_with(&serde_json::json!({})), SchedulerConfig::default());
}

#[test]
fn reference_covers_all_ten_schedulers() {
    let classes: std::collections::BTreeSet<String> = cases().iter().map(|c| c.class.clone()).collect();
    assert_eq!(classes.len(), 10, "{classes:?}");
}

#[test]
fn timesteps_init_noise_sigma_and_order_equal_diffusers() {
    let refs = reference("schedulers");
    let mut failures = Vec::new();
    let mut worst_overall = (0.0f64, String::new());
    for case in cases() {
        let scheduler = case.build();
        let expected_timesteps = values_f64(expected(&refs, &case, "timesteps"));
        let actual = scheduler.timesteps();
        if actual.len() != expected_timesteps.len() || actual.len() != case.model_calls {
            failures.push(format!(
                "{}: {} timesteps, diffusers {}",
                case.name(),
                actual.len(),
                expected_timesteps.len()
            ));
            continue;
        }
        let (worst, at) = max_relative_difference(actual, &expected_timesteps);
        if worst > worst_overall.0 {
            worst_overall = (worst, case.name());
        }
        if !(worst <= TIMESTEP_REL_TOLERANCE) {
            failures.push(format!(
                "{}: timestep {at} is {} vs diffusers {} (rel {worst:e})",
                case.name(),
                actual[at],
                expected_timesteps[at]
            ));
        }
        let expected_init = values_f64(expected(&refs, &case, "init_noise_sigma"))[0];
        let init = scheduler.init_noise_sigma();
        if ((init - expected_init) / expected_init).abs() > 1e-7 {
            failures.push(format!("{}: init_noise_sigma {init} vs diffusers {expected_init}", case.name()));
        }
        let two_calls = matches!(
            case.kind(),
            SchedulerKind::HeunDiscrete | SchedulerKind::Kdpm2Discrete | SchedulerKind::Kdpm2AncestralDiscrete
        );
        if scheduler.order() != if two_calls { 2 } else { 1 } {
            failures.push(format!("{}: order() = {}", case.name(), scheduler.order()));
        }
    }
    eprintln!("largest relative timestep difference: {:e} ({})", worst_overall.0, worst_overall.1);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn sigma_tables_equal_diffusers() {
    let refs = reference("schedulers");
    let mut failures = Vec::new();
    for case in cases() {
        let Some(actual) = sigma_table(&case) else { continue };
        let expected_sigmas = values_f64(expected(&refs, &case, "sigmas"));
        let actual: Vec<f64> = actual.iter().map(|&s| s as f64).collect();
        if actual.len() != expected_sigmas.len() {
            failures.push(format!("{}: {} sigmas, diffusers {}", case.name(), actual.len(), expected_sigmas.len()));
            continue;
        }
        let (worst, at) = max_relative_difference(&actual, &expected_sigmas);
        if !(worst <= SIGMA_REL_TOLERANCE) {
            failures.push(format!(
                "{}: sigma {at} is {} vs diffusers {} (rel {worst:e})",
                case.name(),
                actual[at],
                expected_sigmas[at]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_trajectory_step_equals_diffusers() {
    let refs = reference("schedulers");
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases() {
        let mut scheduler = case.build();
        let samples = trajectory(scheduler.as_mut());
        let expected_samples = expected(&refs, &case, "trajectory");
        let mut worst = 0.0f32;
        for (index, sample) in samples.iter().enumerate() {
            let reference_sample = expected_samples.get(index).unwrap();
            let diff = max_abs_difference(sample, &reference_sample);
            worst = worst.max(diff);
            if !(diff <= SAMPLE_ABS_TOLERANCE) {
                let scale = values_f32(&reference_sample).iter().fold(0.0f32, |m, v| m.max(v.abs()));
                failures.push(format!(
                    "{}: after model call {index} (t = {}) max |ours − diffusers| = {diff:e} (diffusers max |x| = {scale})",
                    case.name(),
                    scheduler.timesteps()[index]
                ));
                break;
            }
        }
        report.push(format!("{:48} max |diff| over {} calls = {worst:e}", case.name(), samples.len()));
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn add_noise_at_an_img2img_start_index_equals_diffusers() {
    let refs = reference("schedulers");
    let x0 = refs.get("add_noise/x0").unwrap();
    let noise = refs.get("add_noise/noise").unwrap();
    let mut failures = Vec::new();
    let mut worst = 0.0f32;
    for case in cases() {
        let scheduler = case.build();
        let noised = scheduler.add_noise(x0, noise, 3).unwrap();
        let diff = max_abs_difference(&noised, expected(&refs, &case, "add_noise"));
        worst = worst.max(diff);
        if !(diff <= 1e-6) {
            failures.push(format!("{}: add_noise at index 3 differs by {diff:e}", case.name()));
        }
    }
    eprintln!("largest add_noise difference: {worst:e}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn options_a_scheduler_lacks_are_refused_as_unsupported() {
    let config = SchedulerConfig::default();
    let refused = [
        (
            SchedulerKind::EulerAncestralDiscrete,
            SchedulerOverrides { use_karras_sigmas: Some(true), ..Default::default() },
        ),
        (SchedulerKind::Ddim, SchedulerOverrides { use_karras_sigmas: Some(true), ..Default::default() }),
        (
            SchedulerKind::DpmSolverSinglestep,
            SchedulerOverrides { timestep_spacing: Some("trailing".into()), ..Default::default() },
        ),
        (
            SchedulerKind::EulerDiscrete,
            SchedulerOverrides { algorithm_type: Some("sde-dpmsolver++".into()), ..Default::default() },
        ),
        (
            SchedulerKind::UniPcMultistep,
            SchedulerOverrides { algorithm_type: Some("sde-dpmsolver++".into()), ..Default::default() },
        ),
        (SchedulerKind::HeunDiscrete, SchedulerOverrides { solver_order: Some(3), ..Default::default() }),
        (SchedulerKind::EulerAncestralDiscrete, SchedulerOverrides { eta: Some(1.0), ..Default::default() }),
        (
            SchedulerKind::EulerDiscrete,
            SchedulerOverrides { prediction_type: Some("sample".into()), ..Default::default() },
        ),
    ];
    for (kind, overrides) in refused {
        match build_scheduler(kind, &config, &overrides, STEPS) {
            Err(sdxl::Error::Unsupported(message)) => {
                assert!(message.contains(kind.class_name()) || message.contains("prediction_type"), "{message}")
            }
            Err(other) => panic!("{} {overrides:?}: expected Unsupported, got {other}", kind.class_name()),
            Ok(_) => panic!("{} {overrides:?}: expected Unsupported, got a scheduler", kind.class_name()),
        }
    }
    // Values a scheduler honours anyway are accepted.
    let harmless = SchedulerOverrides { use_karras_sigmas: Some(false), eta: Some(0.0), ..Default::default() };
    assert!(build_scheduler(SchedulerKind::EulerAncestralDiscrete, &config, &harmless, STEPS).is_ok());
    // A Karras flag from the model's own config is ignored where diffusers ignores it.
    let karras_config = SchedulerConfig { use_karras_sigmas: true, ..Default::default() };
    assert!(build_scheduler(
        SchedulerKind::EulerAncestralDiscrete,
        &karras_config,
        &SchedulerOverrides::default(),
        STEPS
    )
    .is_ok());
}

/// The tiny SDXL pipeline with one scheduler at 128×128, below the API's 256 minimum: the
/// request is planned at 256² and the plan then shrunk, micro-conditioning included
/// (diffusers' defaults: original_size = target_size = (height, width)).
fn generate_small(model: &sdxl::loader::SdxlModel, e2e: &serde_json::Value, class: &str) -> (Tensor, Tensor) {
    use sdxl::api::{parse_request, plan_request, Limits};
    use sdxl::pipeline::{generate, Intermediates, NoProgress, RunContext};
    let request = serde_json::json!({
        "prompt": e2e["prompt"],
        "models": {"base": "tiny"},
        "hyperparameters": {"num_inference_steps": e2e["steps"], "guidance_scale": e2e["guidance_scale"], "seed": e2e["seed"]},
        "dimensions": {"width": 256, "height": 256},
        "scheduler": class,
    });
    let parsed = parse_request(request).expect("valid request");
    let mut plan =
        plan_request(&parsed, "scheduler-parity".into(), &Limits::default(), || unreachable!()).expect("valid plan");
    let (width, height) = (e2e["width"].as_u64().unwrap() as u32, e2e["height"].as_u64().unwrap() as u32);
    plan.width = width;
    plan.height = height;
    plan.micro_conditioning.original_size = [height, width];
    plan.micro_conditioning.target_size = [height, width];
    plan.negative_prompt = e2e["negative_prompt"].as_str().map(str::to_string);
    let mut intermediates = Intermediates::default();
    let mut progress = NoProgress;
    let mut ctx = RunContext {
        device: &Device::Cpu,
        noise_kernel: NormalKernel::Vectorized,
        progress: &mut progress,
        started: std::time::Instant::now(),
    };
    let batch = generate(&sdxl::pipeline::PipelineModels::base_only(model), &plan, None, &mut ctx, Some(&mut intermediates)).expect("generation runs");
    (common::image_tensor(&batch.images), intermediates.final_latents.expect("final latents recorded"))
}

#[test]
fn every_scheduler_drives_the_tiny_pipeline_to_the_diffusers_image() {
    let text = std::fs::read_to_string(fixtures().join("reference/schedulers.json")).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e2e = &meta["e2e"];
    let refs = reference("schedulers_e2e");
    let model = common::tiny_folder_model();
    let mut failures = Vec::new();
    for class in e2e["classes"].as_array().unwrap() {
        let class = class.as_str().unwrap();
        let (image, final_latents) = generate_small(&model, e2e, class);
        let (max_diff, differing) = common::max_pixel_diff(&image, &refs[&format!("{class}/image")]);
        let latent_diff = max_abs_difference(&final_latents, &refs[&format!("{class}/final_latents")]);
        eprintln!("{class:34} uint8 max diff {max_diff} ({differing} values differ), final latents max |diff| {latent_diff:e}");
        if max_diff > 2 {
            failures.push(format!(
                "{class}: uint8 max diff {max_diff} > 2 ({differing} values differ), final latents {latent_diff:e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
