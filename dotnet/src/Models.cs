// The seed's request and response model (DeviceOperations.Models.Enhanced), the engine
// configuration, and the managed progress report.

using System;
using System.Collections.Generic;

namespace DeviceOperations.Sdxl
{
    /// <summary>The seed's EnhancedSDXLRequest: what a C# caller asks for.</summary>
    public class EnhancedSDXLRequest
    {
        public ConditioningConfiguration Conditioning { get; set; }
        public ModelConfiguration Model { get; set; }
        public SchedulerConfiguration Scheduler { get; set; }
        public HyperparametersConfiguration Hyperparameters { get; set; }
        public OutputConfiguration Output { get; set; }
        public List<PostProcessingStep> PostProcessing { get; set; }
        /// <summary>Not in the seed's model (its transformer always sent float16/float32, no
        /// offload, slicing on): a member left null is not sent, so the engine's config decides.</summary>
        public PrecisionConfiguration Precision { get; set; }
        /// <summary>How Model.Refiner finishes the image (the request's `refiner` object); null
        /// members keep the engine's defaults (ensemble, denoising_start 0.8, strength 0.3,
        /// aesthetic scores 6.0 / 2.5). Ignored by the engine, with a warning, without a Model.Refiner.</summary>
        public RefinerConfiguration Refiner { get; set; }
        /// <summary>Seconds the request may run once it leaves the engine's queue
        /// (`metadata.timeout`). Null (the default): no limit unless the engine config sets
        /// `timeout_s`. The seed always sent 300, which cut a CPU engine's first 1024² request.</summary>
        public double? TimeoutSeconds { get; set; }
    }

    /// <summary>The request's `precision` object; each null member keeps the engine's setting
    /// (SdxlEngineConfig.Dtype, VaeDtype, CpuOffload).</summary>
    public class PrecisionConfiguration
    {
        /// <summary>"float32", "float16" or "bfloat16".</summary>
        public string Dtype { get; set; }
        public string VaeDtype { get; set; }
        /// <summary>Overrides SdxlEngineConfig.CpuOffload for this request; a model resident with
        /// the other placement is loaded again.</summary>
        public bool? CpuOffload { get; set; }
        public bool? AttentionSlicing { get; set; }
        public bool? VaeSlicing { get; set; }
        /// <summary>Decode (and encode) in overlapping tiles, as diffusers' enable_vae_tiling:
        /// On, Off, or Auto (tile only when the whole image would not fit the memory budget).
        /// Sent as true, false or "auto"; null: the engine's default, Auto.</summary>
        public VaeTilingMode? VaeTiling { get; set; }
        /// <summary>Tile size in pixels (diffusers' tile_sample_min_size; 64-4096, a multiple of 8);
        /// null: the VAE's sample_size.</summary>
        public int? VaeTileSize { get; set; }
        /// <summary>Fraction of a tile shared with its neighbour (diffusers' tile_overlap_factor,
        /// [0, 0.5)); null: 0.25.</summary>
        public double? VaeTileOverlap { get; set; }
    }

    /// <summary>PrecisionConfiguration.VaeTiling.</summary>
    public enum VaeTilingMode
    {
        /// <summary>false: never tile.</summary>
        Off = 0,
        /// <summary>true: always tile.</summary>
        On = 1,
        /// <summary>"auto": tile when the untiled decode would not fit the memory budget.</summary>
        Auto = 2,
    }

    /// <summary>The request's `refiner` object: diffusers' two ways of using the SDXL refiner.
    /// Only the members set are sent.</summary>
    public class RefinerConfiguration
    {
        /// <summary>null: the engine's default, Ensemble.</summary>
        public RefinerMode? Mode { get; set; }
        /// <summary>Ensemble: the fraction of the schedule the base runs before the refiner
        /// takes over (diffusers' denoising_end / denoising_start), in (0, 1).</summary>
        public double? DenoisingStart { get; set; }
        /// <summary>Img2Img: how far the refiner re-noises the base's image, in (0, 1].</summary>
        public double? Strength { get; set; }
        /// <summary>The refiner's aesthetic-score conditioning (diffusers' aesthetic_score).</summary>
        public double? AestheticScore { get; set; }
        public double? NegativeAestheticScore { get; set; }
    }

    /// <summary>RefinerConfiguration.Mode.</summary>
    public enum RefinerMode
    {
        /// <summary>"ensemble": the base runs the first DenoisingStart of the schedule and hands
        /// its latents to the refiner for the rest (diffusers' ensemble of expert denoisers).</summary>
        Ensemble = 0,
        /// <summary>"img2img": the base runs every step; the refiner re-noises its image by
        /// Strength and denoises it again.</summary>
        Img2Img = 1,
    }

    public class ConditioningConfiguration
    {
        public string Prompt { get; set; }
        public string NegativePrompt { get; set; }
        public List<LoRAConfiguration> LoRAs { get; set; }
        public List<ControlNetConfiguration> ControlNets { get; set; }
    }

    public class LoRAConfiguration
    {
        /// <summary>Path of the adapter file; its file name without extension is sent as the name.</summary>
        public string ModelPath { get; set; }
        public double Weight { get; set; } = 1.0;
    }

    /// <summary>One entry of the request's `controlnet` (the seed's members, then ours: each
    /// null member keeps the seed's or the engine's default).</summary>
    public class ControlNetConfiguration
    {
        /// <summary>Path or name of the ControlNet (`controlnet.model`: a diffusers folder, a
        /// single file, or a name under the engine's models_dir); null or empty: the engine's
        /// `&lt;models_dir&gt;/controlnet/&lt;type&gt;`. Its file name gives the type unless Type is set.</summary>
        public string ModelPath { get; set; }
        /// <summary>`controlnet.conditioning_scale`, clamped to 0..2 as the seed did.</summary>
        public double Weight { get; set; } = 1.0;
        /// <summary>Path or base64 (a data: URI too) of the conditioning image; resized to the
        /// request's size (a warning says so).</summary>
        public string ConditioningImage { get; set; }
        /// <summary>canny, depth, pose, scribble, normal, seg or lineart (sent lowercased); null
        /// or empty: inferred from ModelPath's file name as the seed did (canny when nothing matches).</summary>
        public string Type { get; set; }
        /// <summary>Fraction of the schedule at which the ControlNet starts guiding, in [0, 1);
        /// null: 0 (diffusers' control_guidance_start).</summary>
        public double? GuidanceStart { get; set; }
        /// <summary>Fraction of the schedule at which it stops, in (GuidanceStart, 1]; null: 1.</summary>
        public double? GuidanceEnd { get; set; }
        /// <summary>`controlnet.preprocessor`; null: the seed's {enabled: true, resolution: 512}
        /// for canny, {enabled: false} for every other type (the engine ships only the canny
        /// preprocessor: send an already-processed depth/pose/... image).</summary>
        public ControlNetPreprocessorConfiguration Preprocessor { get; set; }
    }

    /// <summary>The request's `controlnet.preprocessor`: turns the control image into the
    /// ControlNet's input on the engine's side (canny edges only).</summary>
    public class ControlNetPreprocessorConfiguration
    {
        /// <summary>null: true for canny, false for other types. True with a type other than
        /// canny is refused by the engine (UNSUPPORTED, field `controlnet.preprocessor`).</summary>
        public bool? Enabled { get; set; }
        /// <summary>Pixels of the image's short side the edges are found at (64-4096); null: 512
        /// when enabled, as the seed sent.</summary>
        public int? Resolution { get; set; }
        /// <summary>Canny hysteresis thresholds (0 &lt;= low &lt;= high &lt;= 10000); null: the
        /// engine's 100 and 200.</summary>
        public double? LowThreshold { get; set; }
        public double? HighThreshold { get; set; }
    }

    public class ModelConfiguration
    {
        /// <summary>Model name or path (e.g. "builtin:tiny", a diffusers folder, a .safetensors file).</summary>
        public string Base { get; set; }
        public string Refiner { get; set; }
        public string Vae { get; set; }
    }

    public class SchedulerConfiguration
    {
        /// <summary>The C# enum name (DPMSolverMultistep, DDIM, EulerDiscrete, ...).</summary>
        public string Type { get; set; }
        public int? Steps { get; set; }
        public double? GuidanceScale { get; set; }
    }

    public class HyperparametersConfiguration
    {
        /// <summary>-1 (or null) for a random seed.</summary>
        public long? Seed { get; set; }
        public double? Strength { get; set; }
        public int? Width { get; set; }
        public int? Height { get; set; }
        public int? BatchSize { get; set; }
    }

    public class OutputConfiguration
    {
        public string Format { get; set; }
        public int? Quality { get; set; }
        /// <summary>Relative to the engine's output_dir.</summary>
        public string SavePath { get; set; }
        /// <summary>true: the engine writes no file and returns each encoded image (png with its
        /// metadata chunks, jpeg, webp) in GeneratedImage.Data, with Path null
        /// (`output.return_images`, sent only when set; null: files as before).</summary>
        public bool? ReturnImages { get; set; }
    }

    /// <summary>One of the seed's post-processing steps. Only the first step of type "Upscale"
    /// (any case) is sent, as the request's `output.upscale`.</summary>
    public class PostProcessingStep
    {
        /// <summary>"Upscale" is the only type the transformer maps.</summary>
        public string Type { get; set; }
        /// <summary>2 or 4 (`output.upscale.factor`, an integer on the wire): any other value,
        /// 2.5 included, is a validation error on `output.upscale.factor`.</summary>
        public double Factor { get; set; } = 2.0;
        /// <summary>Which upscaler runs. Null, empty or "realesrgan" (any case): Real-ESRGAN with
        /// the engine's default weights, &lt;models_dir&gt;/upscalers/RealESRGAN_x{Factor}plus.pth.
        /// "lanczos" (any case): Lanczos resampling, no model. Anything else: Real-ESRGAN with
        /// these weights (`output.upscale.model`: a .pth/.safetensors path, or a name looked up
        /// as &lt;models_dir&gt;/upscalers/&lt;name&gt;[.pth|.safetensors]). The seed sent this
        /// lowercased as the method, which the engine refuses.</summary>
        public string Model { get; set; }
        /// <summary>Real-ESRGAN input tile in pixels (`output.upscale.tile`): 0 for the whole
        /// image at once, else 32-4096; null: the engine's 512.</summary>
        public int? Tile { get; set; }
        /// <summary>Pixels of context around each tile (`output.upscale.tile_pad`, 0-256);
        /// null: the engine's 16.</summary>
        public int? TilePad { get; set; }
    }

    /// <summary>The seed's EnhancedSDXLResponse, plus the native error code and field paths.</summary>
    public class EnhancedSDXLResponse
    {
        public EnhancedSDXLResponse()
        {
            FieldErrors = new List<SdxlFieldError>();
            Images = new List<GeneratedImage>();
            Warnings = new List<string>();
            Tags = new List<string>();
        }

        public bool Success { get; set; }
        public string Error { get; set; }
        /// <summary>Stable name, e.g. "VALIDATION_ERROR", "CANCELLED"; null on success.</summary>
        public string ErrorCode { get; set; }
        /// <summary>The same code as a number (SDXL_ERR_*); null on success.</summary>
        public int? ErrorNumber { get; set; }
        public List<SdxlFieldError> FieldErrors { get; set; }
        public List<GeneratedImage> Images { get; set; }
        public GenerationMetrics Metrics { get; set; }
        public List<string> Warnings { get; set; }
        /// <summary>metadata.priority the request queued at ("high", "normal", "low"); null on failure.</summary>
        public string Priority { get; set; }
        /// <summary>metadata.tags of the request, echoed by the engine (empty on failure).</summary>
        public List<string> Tags { get; set; }
        public string RequestId { get; set; }
        /// <summary>Seconds the engine spent on the request.</summary>
        public double ExecutionTime { get; set; }

        /// <summary>Throws the failure as an SdxlException (with its code and field errors).</summary>
        public EnhancedSDXLResponse EnsureSuccess()
        {
            if (!Success)
            {
                throw NativeResult.FromResponse(this);
            }
            return this;
        }
    }

    public class GeneratedImage
    {
        /// <summary>The file the engine wrote; null with Output.ReturnImages (nothing is written).</summary>
        public string Path { get; set; }
        /// <summary>The encoded file (the `data` base64 of generated_images, decoded once) with
        /// Output.ReturnImages; null otherwise.</summary>
        public byte[] Data { get; set; }
        public long Seed { get; set; }
        public int Width { get; set; }
        public int Height { get; set; }
        public string Format { get; set; }
    }

    public class GenerationMetrics
    {
        /// <summary>Seconds.</summary>
        public double TotalTime { get; set; }
        /// <summary>Seconds of text encoding, denoising and decoding.</summary>
        public double InferenceTime { get; set; }
        public string DeviceName { get; set; }
        /// <summary>Bytes held by loaded models on the device.</summary>
        public long MemoryUsed { get; set; }
        public long UnetCalls { get; set; }
        public double IterationsPerSecond { get; set; }
        /// <summary>base_model, scheduler, dtype, ... as the engine reported them.</summary>
        public IDictionary<string, object> ModelInfo { get; set; }
        /// <summary>Seconds per pipeline stage (processing_metrics.stage_times).</summary>
        public SdxlStageTimes StageTimes { get; set; }
        /// <summary>model_info.refiner_model: the refiner that ran; null without one.</summary>
        public string RefinerModel { get; set; }
        /// <summary>model_info.refiner_mode: "ensemble" or "img2img"; null without a refiner.</summary>
        public string RefinerMode { get; set; }
        /// <summary>model_info.refiner_steps: denoising steps the refiner ran (0 without one).</summary>
        public int RefinerSteps { get; set; }
        /// <summary>model_info.refiner_description: what the engine loaded as the refiner.</summary>
        public string RefinerDescription { get; set; }
        /// <summary>model_info.vae: the VAE that decoded (the base model's own unless the request named one).</summary>
        public string Vae { get; set; }
        /// <summary>model_info.vae_dtype: the VAE's dtype ("float32", "float16", "bfloat16").</summary>
        public string VaeDtype { get; set; }
        /// <summary>model_info.vae_tiling: the tile layout used; null when the VAE ran untiled.</summary>
        public SdxlVaeTiling VaeTiling { get; set; }
        /// <summary>model_info.controlnets: the ControlNets that guided the request, in request
        /// order; empty without any.</summary>
        public List<SdxlControlNetInfo> ControlNets { get; set; } = new List<SdxlControlNetInfo>();
        /// <summary>model_info.upscale: how the images were upscaled; null when they were not.</summary>
        public SdxlUpscaleInfo Upscale { get; set; }
    }

    /// <summary>model_info.upscale: the upscaler as the engine ran it.</summary>
    public sealed class SdxlUpscaleInfo
    {
        /// <summary>"realesrgan" or "lanczos".</summary>
        public string Method { get; set; }
        /// <summary>2 or 4: each side of an image grew by this much.</summary>
        public int Factor { get; set; }
        /// <summary>The model the request named; null for the engine's default (or lanczos).</summary>
        public string Model { get; set; }
        /// <summary>Input pixels per tile (0: the whole image at once).</summary>
        public int Tile { get; set; }
        public int TilePad { get; set; }
    }

    /// <summary>One entry of model_info.controlnets: a ControlNet as the engine ran it.</summary>
    public sealed class SdxlControlNetInfo
    {
        /// <summary>"canny", "depth", ...</summary>
        public string Type { get; set; }
        /// <summary>The model the request named; null when the engine's default for the type was used.</summary>
        public string Model { get; set; }
        public double ConditioningScale { get; set; }
        public double GuidanceStart { get; set; }
        public double GuidanceEnd { get; set; }
        /// <summary>The canny preprocessor's settings; null when the control image was used as given.</summary>
        public SdxlCannySettings Canny { get; set; }
    }

    /// <summary>model_info.controlnets[i].canny.</summary>
    public sealed class SdxlCannySettings
    {
        public double LowThreshold { get; set; }
        public double HighThreshold { get; set; }
        /// <summary>Null when the edges were found at the request's own size.</summary>
        public int? Resolution { get; set; }
    }

    /// <summary>processing_metrics.stage_times: wall seconds per stage.</summary>
    public sealed class SdxlStageTimes
    {
        public double TextEncode { get; set; }
        /// <summary>The base model's denoising.</summary>
        public double Denoise { get; set; }
        /// <summary>The refiner's denoising (0 without a refiner).</summary>
        public double Refine { get; set; }
        public double Decode { get; set; }
        /// <summary>output.upscale (0 without it).</summary>
        public double Upscale { get; set; }
        public double Save { get; set; }
    }

    /// <summary>model_info.vae_tiling: how a tiled VAE split the image.</summary>
    public sealed class SdxlVaeTiling
    {
        /// <summary>Tile size in pixels.</summary>
        public int TileSize { get; set; }
        /// <summary>Fraction of a tile shared with its neighbour.</summary>
        public double Overlap { get; set; }
    }

    /// <summary>The pipeline stage a progress report belongs to (SdxlProgress.stage).</summary>
    public enum SdxlStage
    {
        Encode = 0,
        Denoise = 1,
        Decode = 2,
        Upscale = 3,
        Save = 4,
        /// <summary>The refiner's denoising steps; Step restarts at 0 with the refiner's own TotalSteps.</summary>
        Refine = 5,
    }

    /// <summary>One progress report, copied out of the native struct.</summary>
    public sealed class SdxlProgress
    {
        public string RequestId { get; set; }
        public SdxlStage Stage { get; set; }
        public int ImageIndex { get; set; }
        public int Step { get; set; }
        public int TotalSteps { get; set; }
        public int ModelCalls { get; set; }
        public TimeSpan Elapsed { get; set; }

        public override string ToString()
        {
            return RequestId + " " + Stage + " image " + ImageIndex + " step " + Step + "/" + TotalSteps;
        }
    }

    /// <summary>Validation ranges of an engine; null keeps the engine's default (the seed's).</summary>
    public class SdxlLimits
    {
        public int? MinSize { get; set; }
        public int? MaxSize { get; set; }
        public int? SizeMultiple { get; set; }
        public int? MinSteps { get; set; }
        public int? MaxSteps { get; set; }
        public double? MinGuidance { get; set; }
        public double? MaxGuidance { get; set; }
        public int? MaxBatch { get; set; }
        public double? MaxLoraWeight { get; set; }

        internal JsonObject ToJsonObject()
        {
            return new JsonObject()
                .Add("min_size", MinSize)
                .Add("max_size", MaxSize)
                .Add("size_multiple", SizeMultiple)
                .Add("min_steps", MinSteps)
                .Add("max_steps", MaxSteps)
                .Add("min_guidance", MinGuidance)
                .Add("max_guidance", MaxGuidance)
                .Add("max_batch", MaxBatch)
                .Add("max_lora_weight", MaxLoraWeight);
        }
    }

    /// <summary>The JSON config of sdxl_create; null members keep the engine's defaults.</summary>
    public class SdxlEngineConfig
    {
        /// <summary>"cpu", "cuda", "cuda:N" or "auto".</summary>
        public string Device { get; set; }
        /// <summary>"float32", "float16" or "bfloat16".</summary>
        public string Dtype { get; set; }
        public string VaeDtype { get; set; }
        public string ModelsDir { get; set; }
        /// <summary>Every saved image stays under this folder.</summary>
        public string OutputDir { get; set; }
        public SdxlLimits Limits { get; set; }
        /// <summary>"vectorized" (default) or "scalar".</summary>
        public string TorchCpuKernel { get; set; }
        public int? MaxLoadedModels { get; set; }
        /// <summary>Device memory (GiB) for cached weights plus a request's activations;
        /// null: the device's free memory less headroom.</summary>
        public double? MaxMemoryGb { get; set; }
        /// <summary>Default of precision.cpu_offload: text encoders and VAE stay in host memory.</summary>
        public bool? CpuOffload { get; set; }
        /// <summary>models_dir_only: requests name models, VAEs, ControlNets, LoRAs and upscalers
        /// by name under ModelsDir, never by path (for requests from untrusted callers).</summary>
        public bool? ModelsDirOnly { get; set; }

        /// <summary>Numbers JSON cannot carry (NaN, infinity), with their config paths: refused
        /// by SdxlEngine.Create rather than written as null (which would mean the default).</summary>
        internal List<SdxlFieldError> NonFiniteNumbers()
        {
            var errors = new List<SdxlFieldError>();
            CheckFinite(errors, "max_memory_gb", MaxMemoryGb);
            if (Limits != null)
            {
                CheckFinite(errors, "limits.min_guidance", Limits.MinGuidance);
                CheckFinite(errors, "limits.max_guidance", Limits.MaxGuidance);
                CheckFinite(errors, "limits.max_lora_weight", Limits.MaxLoraWeight);
            }
            return errors;
        }

        private static void CheckFinite(List<SdxlFieldError> errors, string field, double? value)
        {
            if (value.HasValue && (double.IsNaN(value.Value) || double.IsInfinity(value.Value)))
            {
                errors.Add(new SdxlFieldError(field, "must be a finite number, got " + value.Value.ToString(System.Globalization.CultureInfo.InvariantCulture)));
            }
        }

        public SdxlEngineConfig Clone()
        {
            var copy = (SdxlEngineConfig)MemberwiseClone();
            return copy;
        }

        public string ToJson()
        {
            return new JsonObject()
                .Add("device", Device)
                .Add("dtype", Dtype)
                .Add("vae_dtype", VaeDtype)
                .Add("models_dir", ModelsDir)
                .Add("output_dir", OutputDir)
                .Add("limits", Limits == null ? null : Limits.ToJsonObject())
                .Add("torch_cpu_kernel", TorchCpuKernel)
                .Add("max_loaded_models", MaxLoadedModels)
                .Add("max_memory_gb", MaxMemoryGb)
                .Add("cpu_offload", CpuOffload)
                .Add("models_dir_only", ModelsDirOnly)
                .ToString();
        }
    }

    /// <summary>sdxl_status_json, parsed.</summary>
    public sealed class SdxlEngineStatus
    {
        public string Version { get; set; }
        public string DeviceName { get; set; }
        public string Dtype { get; set; }
        public List<string> LoadedModels { get; set; }
        /// <summary>loaded_upscalers: the files of the Real-ESRGAN models held, as the engine resolved them.</summary>
        public List<string> LoadedUpscalers { get; set; }
        public long RequestsServed { get; set; }
        public string LastError { get; set; }
        /// <summary>The status JSON as the engine returned it.</summary>
        public string RawJson { get; set; }
    }
}
