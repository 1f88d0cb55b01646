// The seed's EnhancedRequestTransformer (src/Services/Enhanced/EnhancedRequestTransformer.cs)
// and WorkerTypeResolver, writing the `inference_request` envelope the Rust engine reads.
//
// Divergences from the seed: null members are omitted (models.refiner / models.vae only when
// set; the `refiner` options object and precision's VAE tiling members are ours, sent only when
// the caller set them) and a disabled controlnet /
// output.upscale is just {"enabled": false}, because src/api/request.rs rejects what the Python
// worker tolerated. `precision` carries only what the caller set in request.Precision (the seed
// always sent float16/float32/no offload/slicing, which overrode the engine's config and made it
// reload a model loaded with cpu_offload). A scheduler name outside the seed's table is sent as
// given (the engine takes diffusers class names and aliases, and refuses the rest with the field
// "scheduler") instead of being replaced by DPMSolverMultistep. NaN and infinity are validation
// errors, never written as null (the engine's default). negative_prompt is sent as the seed sent
// it: "" when the caller gave none, which the seed's worker (and the engine) encode as text, as
// diffusers does for "".
// ControlNet: one ControlNetConfiguration goes out as the seed's single `controlnet` object (now
// with `model`, and guidance_start/end and preprocessor thresholds when set), several as an array
// of such objects (the seed sent the first only); a type other than canny gets the preprocessor
// off unless the caller set it, because the engine ships only the canny preprocessor.
// Upscale: the seed sent a PostProcessingStep's Model lowercased as `method`, which the engine
// reads as the method name (realesrgan or lanczos) and refuses otherwise. Model now picks the
// method ("lanczos" → lanczos; null, empty or "realesrgan" → realesrgan with the engine's default
// weights) and any other Model is sent as `model`, the Real-ESRGAN weights (path or name), with
// method realesrgan. Factor goes out as a JSON integer, and a factor other than 2 or 4 (2.5
// included) is a validation error on output.upscale.factor, not a double for the engine to
// refuse. Tile and TilePad (ours) are sent only when set.
// Output.ReturnImages (ours) goes out as output.return_images only when set.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;

namespace DeviceOperations.Sdxl
{
    public interface IEnhancedRequestTransformer
    {
        /// <summary>The request as the JSON envelope sdxl_generate_json reads.</summary>
        string TransformEnhancedSDXLRequest(EnhancedSDXLRequest request, string requestId);

        bool ValidateRequest(EnhancedSDXLRequest request, out List<string> errors);
    }

    /// <summary>Math.Clamp is .NET Core only.</summary>
    internal static class Clamp
    {
        public static int Value(int value, int min, int max)
        {
            return value < min ? min : (value > max ? max : value);
        }

        /// <summary>NaN stays NaN (never a bound), so the JSON writer refuses it.</summary>
        public static double Value(double value, double min, double max)
        {
            return value < min ? min : (value > max ? max : value);
        }
    }

    /// <summary>The seed's worker routing, kept as a feature classifier: the native engine
    /// serves every request with one pipeline, but worker_type and the tags still say which
    /// features a request uses.</summary>
    public class WorkerTypeResolver
    {
        public const string EnhancedWorker = "enhanced_sdxl_worker";
        public const string BasicWorker = "sdxl_worker";

        public virtual string DetermineWorkerType(EnhancedSDXLRequest request)
        {
            return HasAdvancedFeatures(request) ? EnhancedWorker : BasicWorker;
        }

        public virtual bool HasAdvancedFeatures(EnhancedSDXLRequest request)
        {
            if (request == null)
            {
                return false;
            }
            if (request.Conditioning != null && request.Conditioning.LoRAs != null && request.Conditioning.LoRAs.Any())
            {
                return true;
            }
            if (request.Conditioning != null && request.Conditioning.ControlNets != null && request.Conditioning.ControlNets.Any())
            {
                return true;
            }
            if (request.Model != null && !string.IsNullOrEmpty(request.Model.Refiner))
            {
                return true;
            }
            if (request.Model != null && !string.IsNullOrEmpty(request.Model.Vae))
            {
                return true;
            }
            if (request.PostProcessing != null && request.PostProcessing.Any())
            {
                return true;
            }
            if (request.Hyperparameters != null && request.Hyperparameters.BatchSize > 1)
            {
                return true;
            }
            return false;
        }
    }

    public class EnhancedRequestTransformer : IEnhancedRequestTransformer
    {
        public const string DefaultModel = "cyberrealisticPony_v125";
        public const int MinDimension = 256;
        public const int MaxDimension = 2048;

        private readonly WorkerTypeResolver _workerTypeResolver;

        public EnhancedRequestTransformer()
            : this(null)
        {
        }

        public EnhancedRequestTransformer(WorkerTypeResolver workerTypeResolver)
        {
            _workerTypeResolver = workerTypeResolver ?? new WorkerTypeResolver();
        }

        /// <summary>Throws InvalidOperationException for what JSON cannot carry (NaN, infinity:
        /// ValidateRequest reports them first); nothing is written as null to mean a default.</summary>
        public string TransformEnhancedSDXLRequest(EnhancedSDXLRequest request, string requestId)
        {
            var envelope = BuildEnvelope(request, requestId);
            try
            {
                return envelope.ToString();
            }
            catch (ArgumentException ex)
            {
                throw new InvalidOperationException("Request transformation failed: " + ex.Message, ex);
            }
        }

        internal JsonObject BuildEnvelope(EnhancedSDXLRequest request, string requestId)
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            try
            {
                var conditioning = request.Conditioning;
                var model = request.Model;
                var scheduler = request.Scheduler;
                var hyper = request.Hyperparameters;
                var output = request.Output;
                var baseModel = (model == null ? null : model.Base) ?? DefaultModel;
                var negativePrompt = conditioning == null ? null : conditioning.NegativePrompt;

                var data = new JsonObject()
                    .Add("worker_type", _workerTypeResolver.DetermineWorkerType(request))
                    .Add("prompt", (conditioning == null ? null : conditioning.Prompt) ?? string.Empty)
                    .Add("negative_prompt", negativePrompt ?? string.Empty)
                    .Add("model_name", baseModel)
                    .Add("hyperparameters", new JsonObject()
                        .Add("num_inference_steps", (scheduler == null ? null : scheduler.Steps) ?? 25)
                        .Add("guidance_scale", (scheduler == null ? null : scheduler.GuidanceScale) ?? 7.5)
                        .Add("seed", (hyper == null ? null : hyper.Seed) ?? -1L)
                        .Add("strength", (hyper == null ? null : hyper.Strength) ?? 0.8))
                    .Add("dimensions", new JsonObject()
                        .Add("width", ValidateAndClampDimension((hyper == null ? null : hyper.Width) ?? 1024))
                        .Add("height", ValidateAndClampDimension((hyper == null ? null : hyper.Height) ?? 1024)))
                    .Add("scheduler", MapSchedulerType(scheduler == null ? null : scheduler.Type))
                    .Add("models", new JsonObject()
                        .Add("base", baseModel)
                        .Add("refiner", model == null || string.IsNullOrEmpty(model.Refiner) ? null : model.Refiner)
                        .Add("vae", model == null || string.IsNullOrEmpty(model.Vae) ? null : model.Vae))
                    .Add("refiner", TransformRefiner(request.Refiner))
                    .Add("lora", TransformLoRAConfiguration(conditioning == null ? null : conditioning.LoRAs))
                    .Add("controlnet", TransformControlNetConfiguration(conditioning == null ? null : conditioning.ControlNets))
                    .Add("output", new JsonObject()
                        .Add("format", output != null && output.Format != null ? output.Format.ToLowerInvariant() : "png")
                        .Add("quality", Clamp.Value((output == null ? null : output.Quality) ?? 95, 1, 100))
                        .Add("save_path", (output == null ? null : output.SavePath) ?? "outputs/")
                        .Add("return_images", output == null ? null : output.ReturnImages)
                        .Add("upscale", TransformUpscaleConfiguration(request.PostProcessing)))
                    .Add("batch", new JsonObject()
                        .Add("size", Clamp.Value((hyper == null ? null : hyper.BatchSize) ?? 1, 1, 9))
                        .Add("parallel", false))
                    .Add("precision", TransformPrecision(request.Precision))
                    .Add("metadata", new JsonObject()
                        .Add("request_id", requestId)
                        .Add("priority", "normal")
                        .Add("timeout", request.TimeoutSeconds)
                        .Add("tags", GenerateRequestTags(request)));

                return new JsonObject()
                    .Add("message_type", "inference_request")
                    .Add("request_id", requestId)
                    .Add("data", data);
            }
            catch (Exception ex)
            {
                throw new InvalidOperationException("Request transformation failed: " + ex.Message, ex);
            }
        }

        /// <summary>The seed's checks and messages (the seed's signature; see ValidateRequestFields
        /// for the JSON paths).</summary>
        public bool ValidateRequest(EnhancedSDXLRequest request, out List<string> errors)
        {
            var fieldErrors = ValidateRequestFields(request);
            errors = fieldErrors.Select(e => e.Message).ToList();
            return fieldErrors.Count == 0;
        }

        /// <summary>The seed's checks and messages, each with the JSON path the engine would
        /// name, plus what the seed let through to a silent default: NaN or infinite numbers (and
        /// a RefinerMode or VaeTilingMode cast from an undefined number, an upscale factor other
        /// than 2 or 4), ControlNet numbers
        /// included (`controlnet.&lt;field&gt;`, or `controlnet[i].&lt;field&gt;` when several are sent).
        /// Empty when the request is valid.</summary>
        public List<SdxlFieldError> ValidateRequestFields(EnhancedSDXLRequest request)
        {
            var errors = new List<SdxlFieldError>();
            var conditioning = request == null ? null : request.Conditioning;
            var model = request == null ? null : request.Model;
            var scheduler = request == null ? null : request.Scheduler;
            var hyper = request == null ? null : request.Hyperparameters;

            if (conditioning == null || string.IsNullOrWhiteSpace(conditioning.Prompt))
            {
                errors.Add(new SdxlFieldError("prompt", "Prompt is required and cannot be empty"));
            }
            if (model == null || string.IsNullOrWhiteSpace(model.Base))
            {
                errors.Add(new SdxlFieldError("models.base", "Base model is required"));
            }
            if (hyper != null && hyper.Width != null && !IsValidDimension(hyper.Width.Value))
            {
                errors.Add(new SdxlFieldError("dimensions.width", "Width must be between 256 and 2048 and divisible by 8"));
            }
            if (hyper != null && hyper.Height != null && !IsValidDimension(hyper.Height.Value))
            {
                errors.Add(new SdxlFieldError("dimensions.height", "Height must be between 256 and 2048 and divisible by 8"));
            }
            if (scheduler != null && scheduler.GuidanceScale != null && !IsFinite(scheduler.GuidanceScale.Value))
            {
                errors.Add(new SdxlFieldError("hyperparameters.guidance_scale", "Guidance scale " + Show(scheduler.GuidanceScale.Value) + " must be a finite number"));
            }
            if (hyper != null && hyper.Strength != null && !IsFinite(hyper.Strength.Value))
            {
                errors.Add(new SdxlFieldError("hyperparameters.strength", "Strength " + Show(hyper.Strength.Value) + " must be a finite number"));
            }
            if (conditioning != null && conditioning.LoRAs != null)
            {
                for (var index = 0; index < conditioning.LoRAs.Count; index++)
                {
                    var lora = conditioning.LoRAs[index];
                    var path = "lora.models[" + index.ToString(CultureInfo.InvariantCulture) + "]";
                    if (lora == null || string.IsNullOrWhiteSpace(lora.ModelPath))
                    {
                        errors.Add(new SdxlFieldError(path + ".name", "LoRA ModelPath cannot be empty"));
                    }
                    // Written so that NaN fails too.
                    if (lora != null && !(lora.Weight >= -2.0 && lora.Weight <= 2.0))
                    {
                        errors.Add(new SdxlFieldError(path + ".weight",
                            "LoRA weight " + Show(lora.Weight) + " must be between -2.0 and 2.0"));
                    }
                }
            }
            var controlnets = SentControlNets(conditioning == null ? null : conditioning.ControlNets);
            for (var index = 0; index < controlnets.Count; index++)
            {
                var controlnet = controlnets[index];
                var path = ControlNetField(index, controlnets.Count);
                CheckFinite(errors, path + ".conditioning_scale", "ControlNet weight", controlnet.Weight);
                CheckFinite(errors, path + ".guidance_start", "ControlNet guidance start", controlnet.GuidanceStart);
                CheckFinite(errors, path + ".guidance_end", "ControlNet guidance end", controlnet.GuidanceEnd);
                if (controlnet.Preprocessor != null)
                {
                    CheckFinite(errors, path + ".preprocessor.low_threshold", "Canny low threshold", controlnet.Preprocessor.LowThreshold);
                    CheckFinite(errors, path + ".preprocessor.high_threshold", "Canny high threshold", controlnet.Preprocessor.HighThreshold);
                }
            }
            var upscale = FindUpscaleStep(request == null ? null : request.PostProcessing);
            if (upscale != null && !IsFinite(upscale.Factor))
            {
                errors.Add(new SdxlFieldError("output.upscale.factor", "Upscale factor " + Show(upscale.Factor) + " must be a finite number"));
            }
            else if (upscale != null && upscale.Factor != 2.0 && upscale.Factor != 4.0)
            {
                errors.Add(new SdxlFieldError("output.upscale.factor", "Upscale factor " + Show(upscale.Factor) + " must be 2 or 4"));
            }
            var refiner = request == null ? null : request.Refiner;
            if (refiner != null)
            {
                if (refiner.Mode.HasValue && RefinerModeName(refiner.Mode.Value) == null)
                {
                    errors.Add(new SdxlFieldError("refiner.mode", "Refiner mode " + ((int)refiner.Mode.Value).ToString(CultureInfo.InvariantCulture) + " is not Ensemble or Img2Img"));
                }
                CheckFinite(errors, "refiner.denoising_start", "Refiner denoising start", refiner.DenoisingStart);
                CheckFinite(errors, "refiner.strength", "Refiner strength", refiner.Strength);
                CheckFinite(errors, "refiner.aesthetic_score", "Aesthetic score", refiner.AestheticScore);
                CheckFinite(errors, "refiner.negative_aesthetic_score", "Negative aesthetic score", refiner.NegativeAestheticScore);
            }
            var precision = request == null ? null : request.Precision;
            if (precision != null)
            {
                if (precision.VaeTiling.HasValue && VaeTilingValue(precision.VaeTiling.Value) == null)
                {
                    errors.Add(new SdxlFieldError("precision.vae_tiling", "VAE tiling " + ((int)precision.VaeTiling.Value).ToString(CultureInfo.InvariantCulture) + " is not On, Off or Auto"));
                }
                CheckFinite(errors, "precision.vae_tile_overlap", "VAE tile overlap", precision.VaeTileOverlap);
            }
            return errors;
        }

        private static void CheckFinite(List<SdxlFieldError> errors, string field, string what, double? value)
        {
            if (value.HasValue && !IsFinite(value.Value))
            {
                errors.Add(new SdxlFieldError(field, what + " " + Show(value.Value) + " must be a finite number"));
            }
        }

        /// <summary>The one validation step of SdxlEngine/SdxlEnginePool.GenerateAsync and
        /// SdxlNativeService: null when the request is valid, otherwise the failure the caller
        /// gets back (Success=false, VALIDATION_ERROR, the seed's "Request validation failed: ..."
        /// text, FieldErrors). Nothing is sent to the engine then.</summary>
        public EnhancedSDXLResponse ValidationFailure(EnhancedSDXLRequest request, string requestId)
        {
            var errors = ValidateRequestFields(request);
            if (errors.Count == 0)
            {
                return null;
            }
            return EnhancedResponseHandler.Failure(requestId, SdxlErrorCode.Validation,
                "Request validation failed: " + string.Join(", ", errors.Select(e => e.Message)), errors);
        }

        private static bool IsFinite(double value)
        {
            return !double.IsNaN(value) && !double.IsInfinity(value);
        }

        private static string Show(double value)
        {
            return value.ToString(CultureInfo.InvariantCulture);
        }

        /// <summary>Only what the caller set: an absent member leaves the engine's config in charge.</summary>
        private static JsonObject TransformPrecision(PrecisionConfiguration precision)
        {
            if (precision == null)
            {
                return null;
            }
            var result = new JsonObject()
                .Add("dtype", precision.Dtype)
                .Add("vae_dtype", precision.VaeDtype)
                .Add("cpu_offload", precision.CpuOffload)
                .Add("attention_slicing", precision.AttentionSlicing)
                .Add("vae_slicing", precision.VaeSlicing)
                .Add("vae_tiling", precision.VaeTiling.HasValue ? RequireDefined(VaeTilingValue(precision.VaeTiling.Value), "PrecisionConfiguration.VaeTiling", (int)precision.VaeTiling.Value) : null)
                .Add("vae_tile_size", precision.VaeTileSize)
                .Add("vae_tile_overlap", precision.VaeTileOverlap);
            return result.Any() ? result : null;
        }

        /// <summary>The request's `refiner` object: only what the caller set (the engine's
        /// defaults are diffusers': ensemble, 0.8, 0.3, 6.0, 2.5).</summary>
        private static JsonObject TransformRefiner(RefinerConfiguration refiner)
        {
            if (refiner == null)
            {
                return null;
            }
            var result = new JsonObject()
                .Add("mode", refiner.Mode.HasValue ? RequireDefined(RefinerModeName(refiner.Mode.Value), "RefinerConfiguration.Mode", (int)refiner.Mode.Value) : null)
                .Add("denoising_start", refiner.DenoisingStart)
                .Add("strength", refiner.Strength)
                .Add("aesthetic_score", refiner.AestheticScore)
                .Add("negative_aesthetic_score", refiner.NegativeAestheticScore);
            return result.Any() ? result : null;
        }

        /// <summary>"ensemble" / "img2img"; null for a value outside the enum.</summary>
        private static string RefinerModeName(RefinerMode mode)
        {
            switch (mode)
            {
                case RefinerMode.Ensemble: return "ensemble";
                case RefinerMode.Img2Img: return "img2img";
                default: return null;
            }
        }

        /// <summary>precision.vae_tiling as JSON reads it: true, false or "auto"; null for a
        /// value outside the enum.</summary>
        private static object VaeTilingValue(VaeTilingMode tiling)
        {
            switch (tiling)
            {
                case VaeTilingMode.On: return true;
                case VaeTilingMode.Off: return false;
                case VaeTilingMode.Auto: return "auto";
                default: return null;
            }
        }

        /// <summary>An enum value cast from an undefined number is refused, never omitted (which
        /// would mean the engine's default); ValidateRequestFields reports it first.</summary>
        private static object RequireDefined(object value, string member, int raw)
        {
            if (value == null)
            {
                throw new ArgumentException(member + " " + raw.ToString(CultureInfo.InvariantCulture) + " is not a defined value");
            }
            return value;
        }

        private static PostProcessingStep FindUpscaleStep(List<PostProcessingStep> postProcessing)
        {
            return postProcessing == null
                ? null
                : postProcessing.FirstOrDefault(p => p != null && string.Equals(p.Type, "Upscale", StringComparison.OrdinalIgnoreCase));
        }

        private static JsonObject TransformLoRAConfiguration(List<LoRAConfiguration> loras)
        {
            if (loras == null || !loras.Any())
            {
                return new JsonObject().Add("enabled", false).Add("models", new object[0]);
            }
            return new JsonObject()
                .Add("enabled", true)
                .Add("models", loras.Where(l => l != null).Select(lora => new JsonObject()
                    .Add("name", ExtractModelName(lora.ModelPath))
                    .Add("weight", Clamp.Value(lora.Weight, -2.0, 2.0))).ToList());
        }

        /// <summary>The ControlNets that go out, null entries skipped: their positions are the
        /// `controlnet[i]` of the request and of its field errors.</summary>
        private static List<ControlNetConfiguration> SentControlNets(List<ControlNetConfiguration> controlnets)
        {
            return controlnets == null ? new List<ControlNetConfiguration>() : controlnets.Where(c => c != null).ToList();
        }

        /// <summary>`controlnet` when one ControlNet is sent, `controlnet[i]` when several: the
        /// engine's own paths for the shape written.</summary>
        private static string ControlNetField(int index, int count)
        {
            return count == 1 ? "controlnet" : "controlnet[" + index.ToString(CultureInfo.InvariantCulture) + "]";
        }

        /// <summary>None: {"enabled": false}. One: the seed's single object. Several: an array of
        /// those objects in order (the seed sent only the first).</summary>
        private static object TransformControlNetConfiguration(List<ControlNetConfiguration> controlnets)
        {
            var sent = SentControlNets(controlnets);
            if (sent.Count == 0)
            {
                return new JsonObject().Add("enabled", false);
            }
            if (sent.Count == 1)
            {
                return TransformControlNet(sent[0]);
            }
            return sent.Select(TransformControlNet).ToList();
        }

        private static JsonObject TransformControlNet(ControlNetConfiguration controlnet)
        {
            var type = ControlNetType(controlnet);
            return new JsonObject()
                .Add("enabled", true)
                .Add("model", string.IsNullOrEmpty(controlnet.ModelPath) ? null : controlnet.ModelPath)
                .Add("type", type)
                .Add("conditioning_scale", Clamp.Value(controlnet.Weight, 0.0, 2.0))
                .Add("control_image", controlnet.ConditioningImage)
                .Add("guidance_start", controlnet.GuidanceStart)
                .Add("guidance_end", controlnet.GuidanceEnd)
                .Add("preprocessor", TransformPreprocessor(controlnet.Preprocessor, type));
        }

        /// <summary>Type when set (lowercased: the engine's names are), else the seed's inference
        /// from the file name.</summary>
        public static string ControlNetType(ControlNetConfiguration controlnet)
        {
            if (controlnet == null)
            {
                return null;
            }
            return string.IsNullOrWhiteSpace(controlnet.Type)
                ? InferControlNetType(controlnet.ModelPath)
                : controlnet.Type.Trim().ToLowerInvariant();
        }

        /// <summary>The seed always sent {enabled: true, resolution: 512}, which its worker ran
        /// with a preprocessor model per type. The engine has only the canny preprocessor and
        /// answers UNSUPPORTED to any other enabled one, so a non-canny ControlNet whose caller
        /// did not choose gets {enabled: false}: its control image is used as given (an
        /// already-processed depth map, pose skeleton, ...).</summary>
        private static JsonObject TransformPreprocessor(ControlNetPreprocessorConfiguration preprocessor, string type)
        {
            var enabled = preprocessor != null && preprocessor.Enabled.HasValue
                ? preprocessor.Enabled.Value
                : type == "canny";
            var resolution = preprocessor == null ? null : preprocessor.Resolution;
            return new JsonObject()
                .Add("enabled", enabled)
                .Add("resolution", resolution ?? (enabled ? 512 : (int?)null))
                .Add("low_threshold", preprocessor == null ? null : preprocessor.LowThreshold)
                .Add("high_threshold", preprocessor == null ? null : preprocessor.HighThreshold);
        }

        /// <summary>The first "Upscale" step as `output.upscale`. Model picks the method (the seed
        /// sent Model lowercased as `method`, which the engine refuses for anything but its two
        /// method names): null, empty or "realesrgan" (any case) → realesrgan with the engine's
        /// default weights; "lanczos" (any case) → lanczos; anything else → realesrgan with
        /// `model` = Model as given (a path keeps its case). Factor goes out as a JSON integer
        /// (the engine reads an integer); tile and tile_pad only when set.</summary>
        private static JsonObject TransformUpscaleConfiguration(List<PostProcessingStep> postProcessing)
        {
            var upscaleStep = FindUpscaleStep(postProcessing);
            if (upscaleStep == null)
            {
                return new JsonObject().Add("enabled", false);
            }
            var model = string.IsNullOrWhiteSpace(upscaleStep.Model) ? null : upscaleStep.Model;
            var method = "realesrgan";
            if (model != null && string.Equals(model.Trim(), "realesrgan", StringComparison.OrdinalIgnoreCase))
            {
                model = null;
            }
            else if (model != null && string.Equals(model.Trim(), "lanczos", StringComparison.OrdinalIgnoreCase))
            {
                method = "lanczos";
                model = null;
            }
            return new JsonObject()
                .Add("enabled", true)
                .Add("factor", UpscaleFactor(upscaleStep.Factor))
                .Add("method", method)
                .Add("model", model)
                .Add("tile", upscaleStep.Tile)
                .Add("tile_pad", upscaleStep.TilePad);
        }

        /// <summary>Factor as the integer the engine reads. A factor no integer equals (2.5, NaN,
        /// infinity, past int's range) is refused, never rounded: ValidateRequestFields reports
        /// it first. An integral factor other than 2 or 4 is sent as it is, for the engine to
        /// refuse on the same field.</summary>
        private static int UpscaleFactor(double factor)
        {
            if (!IsFinite(factor) || Math.Floor(factor) != factor || factor < int.MinValue || factor > int.MaxValue)
            {
                throw new ArgumentException("Upscale factor " + Show(factor) + " must be 2 or 4");
            }
            return (int)factor;
        }

        /// <summary>The seed's C# enum name → diffusers class name table; null or empty gives the
        /// seed's default (DPMSolverMultistep). Any other name is returned as given, for the engine
        /// to accept (a diffusers class name, an alias such as "euler a") or refuse with the field
        /// "scheduler": an unknown name is never replaced by the default.</summary>
        public static string MapSchedulerType(string schedulerType)
        {
            if (string.IsNullOrEmpty(schedulerType))
            {
                return "DPMSolverMultistepScheduler";
            }
            switch (schedulerType)
            {
                case "DPMSolverMultistep": return "DPMSolverMultistepScheduler";
                case "DDIM": return "DDIMScheduler";
                case "EulerDiscrete": return "EulerDiscreteScheduler";
                case "EulerAncestral": return "EulerAncestralDiscreteScheduler";
                case "DPMSolverSinglestep": return "DPMSolverSinglestepScheduler";
                case "KDPM2Discrete": return "KDPM2DiscreteScheduler";
                case "KDPM2Ancestral": return "KDPM2AncestralDiscreteScheduler";
                case "HeunDiscrete": return "HeunDiscreteScheduler";
                case "LMSDiscrete": return "LMSDiscreteScheduler";
                case "UniPCMultistep": return "UniPCMultistepScheduler";
                default: return schedulerType;
            }
        }

        /// <summary>Clamps to [256, 2048], then rounds down to a multiple of 8.</summary>
        public static int ValidateAndClampDimension(int dimension)
        {
            var clamped = Clamp.Value(dimension, MinDimension, MaxDimension);
            return (clamped / 8) * 8;
        }

        public static bool IsValidDimension(int dimension)
        {
            return dimension >= MinDimension && dimension <= MaxDimension && dimension % 8 == 0;
        }

        /// <summary>"path/to/model.safetensors" → "model". Both separators count: the seed
        /// ran on Windows, the engine may run on Linux.</summary>
        public static string ExtractModelName(string modelPath)
        {
            if (modelPath == null)
            {
                return null;
            }
            var start = Math.Max(modelPath.LastIndexOf('/'), modelPath.LastIndexOf('\\')) + 1;
            var fileName = modelPath.Substring(start);
            var dot = fileName.LastIndexOf('.');
            return dot > 0 ? fileName.Substring(0, dot) : fileName;
        }

        public static string InferControlNetType(string modelPath)
        {
            var fileName = (ExtractModelName(modelPath) ?? string.Empty).ToLowerInvariant();
            var known = new[] { "canny", "depth", "pose", "scribble", "normal", "seg", "lineart" };
            foreach (var type in known)
            {
                if (fileName.Contains(type))
                {
                    return type;
                }
            }
            return "canny";
        }

        public static string[] GenerateRequestTags(EnhancedSDXLRequest request)
        {
            var tags = new List<string> { "enhanced_sdxl", "c_sharp_service" };
            var conditioning = request.Conditioning;
            if (conditioning != null && conditioning.LoRAs != null && conditioning.LoRAs.Any())
            {
                tags.Add("lora_enhanced");
            }
            if (conditioning != null && conditioning.ControlNets != null && conditioning.ControlNets.Any())
            {
                tags.Add("controlnet_guided");
            }
            if (request.Model != null && !string.IsNullOrEmpty(request.Model.Refiner))
            {
                tags.Add("refiner_enhanced");
            }
            if (request.PostProcessing != null && request.PostProcessing.Any())
            {
                tags.Add("post_processed");
            }
            return tags.ToArray();
        }
    }
}
