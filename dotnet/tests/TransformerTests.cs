// The seed's EnhancedRequestTransformer mapping, read back from the JSON it writes.

using System;
using System.Collections.Generic;
using System.Linq;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class TransformerTests
    {
        internal static EnhancedSDXLRequest Minimal()
        {
            return new EnhancedSDXLRequest
            {
                Conditioning = new ConditioningConfiguration { Prompt = "a lighthouse at dusk" },
                Model = new ModelConfiguration { Base = "builtin:tiny" },
            };
        }

        /// <summary>The envelope's `data` object, parsed back.</summary>
        internal static Dictionary<string, object> Data(EnhancedSDXLRequest request)
        {
            var json = new EnhancedRequestTransformer().TransformEnhancedSDXLRequest(request, "req-1");
            return Json.GetObject(Json.ParseObject(json), "data");
        }

        private static Dictionary<string, object> Obj(Dictionary<string, object> parent, string path)
        {
            var current = parent;
            foreach (var part in path.Split('.'))
            {
                current = Json.GetObject(current, part);
            }
            return current;
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("transformer_scheduler_enum_names_map_to_diffusers_classes_and_other_names_pass_through", () =>
            {
                var table = new Dictionary<string, string>
                {
                    { "DPMSolverMultistep", "DPMSolverMultistepScheduler" },
                    { "DDIM", "DDIMScheduler" },
                    { "EulerDiscrete", "EulerDiscreteScheduler" },
                    { "EulerAncestral", "EulerAncestralDiscreteScheduler" },
                    { "DPMSolverSinglestep", "DPMSolverSinglestepScheduler" },
                    { "KDPM2Discrete", "KDPM2DiscreteScheduler" },
                    { "KDPM2Ancestral", "KDPM2AncestralDiscreteScheduler" },
                    { "HeunDiscrete", "HeunDiscreteScheduler" },
                    { "LMSDiscrete", "LMSDiscreteScheduler" },
                    { "UniPCMultistep", "UniPCMultistepScheduler" },
                    // Never replaced by the default: the engine accepts its aliases and refuses the rest.
                    { "NotAScheduler", "NotAScheduler" },
                    { "ddim", "ddim" },
                    { "euler a", "euler a" },
                    { "EulerDiscreteScheduler", "EulerDiscreteScheduler" },
                    { "", "DPMSolverMultistepScheduler" },
                };
                foreach (var pair in table)
                {
                    var request = Minimal();
                    request.Scheduler = new SchedulerConfiguration { Type = pair.Key };
                    Assert.Equal(pair.Value, Json.GetString(Data(request), "scheduler"), "scheduler for " + pair.Key);
                }
                Assert.Equal("DPMSolverMultistepScheduler", Json.GetString(Data(Minimal()), "scheduler"), "scheduler when unset");
            });

            runner.Add("transformer_dimensions_clamp_to_256_2048_and_round_down_to_multiple_of_8", () =>
            {
                var cases = new[] { new[] { 100, 256 }, new[] { 3000, 2048 }, new[] { 1023, 1016 }, new[] { 513, 512 }, new[] { 256, 256 }, new[] { -8, 256 } };
                foreach (var c in cases)
                {
                    var request = Minimal();
                    request.Hyperparameters = new HyperparametersConfiguration { Width = c[0], Height = c[0] };
                    var dims = Json.GetObject(Data(request), "dimensions");
                    Assert.Equal((long)c[1], Json.GetLong(dims, "width").Value, "width for " + c[0]);
                    Assert.Equal((long)c[1], Json.GetLong(dims, "height").Value, "height for " + c[0]);
                }
                var defaults = Json.GetObject(Data(Minimal()), "dimensions");
                Assert.Equal(1024L, Json.GetLong(defaults, "width").Value, "default width");
                Assert.Equal(1024L, Json.GetLong(defaults, "height").Value, "default height");
            });

            runner.Add("transformer_quality_batch_lora_weight_and_conditioning_scale_are_clamped", () =>
            {
                var request = Minimal();
                request.Output = new OutputConfiguration { Quality = 0 };
                request.Hyperparameters = new HyperparametersConfiguration { BatchSize = 0 };
                Assert.Equal(1L, Json.GetLong(Obj(Data(request), "output"), "quality").Value, "quality 0");
                Assert.Equal(1L, Json.GetLong(Obj(Data(request), "batch"), "size").Value, "batch 0");
                request.Output.Quality = 150;
                request.Hyperparameters.BatchSize = 20;
                Assert.Equal(100L, Json.GetLong(Obj(Data(request), "output"), "quality").Value, "quality 150");
                Assert.Equal(9L, Json.GetLong(Obj(Data(request), "batch"), "size").Value, "batch 20");
                Assert.Equal(95L, Json.GetLong(Obj(Data(Minimal()), "output"), "quality").Value, "default quality");

                request.Conditioning.LoRAs = new List<LoRAConfiguration>
                {
                    new LoRAConfiguration { ModelPath = "a.safetensors", Weight = 3.5 },
                    new LoRAConfiguration { ModelPath = "b.safetensors", Weight = -5 },
                    new LoRAConfiguration { ModelPath = "c.safetensors", Weight = 0.75 },
                };
                var weights = Json.GetArray(Obj(Data(request), "lora"), "models")
                    .Select(m => Json.GetDouble((Dictionary<string, object>)m, "weight").Value).ToList();
                Assert.SequenceEqual(new[] { 2.0, -2.0, 0.75 }, weights, "LoRA weights");

                foreach (var c in new[] { new[] { -1.0, 0.0 }, new[] { 5.0, 2.0 }, new[] { 0.6, 0.6 } })
                {
                    request.Conditioning.ControlNets = new List<ControlNetConfiguration> { new ControlNetConfiguration { ModelPath = "cn.safetensors", Weight = c[0] } };
                    Assert.Equal(c[1], Json.GetDouble(Obj(Data(request), "controlnet"), "conditioning_scale").Value, "conditioning_scale for " + c[0]);
                }
            });

            runner.Add("transformer_lora_names_are_file_names_without_extension", () =>
            {
                Assert.Equal("model", EnhancedRequestTransformer.ExtractModelName("path/to/model.safetensors"), "unix path");
                Assert.Equal("detail_v2", EnhancedRequestTransformer.ExtractModelName("C:\\loras\\detail_v2.safetensors"), "windows path");
                Assert.Equal("style.v1", EnhancedRequestTransformer.ExtractModelName("style.v1.pt"), "dotted name");
                Assert.Equal("plain", EnhancedRequestTransformer.ExtractModelName("plain"), "no extension");

                var request = Minimal();
                request.Conditioning.LoRAs = new List<LoRAConfiguration>
                {
                    new LoRAConfiguration { ModelPath = "loras/pixel-art-xl.safetensors", Weight = 0.8 },
                    new LoRAConfiguration { ModelPath = "D:\\models\\lora\\offset_noise.safetensors", Weight = 1.0 },
                };
                var lora = Obj(Data(request), "lora");
                Assert.Equal(true, Json.GetBool(lora, "enabled", false), "lora.enabled");
                var names = Json.GetArray(lora, "models").Select(m => Json.GetString((Dictionary<string, object>)m, "name"));
                Assert.SequenceEqual(new[] { "pixel-art-xl", "offset_noise" }, names, "LoRA names");

                var none = Obj(Data(Minimal()), "lora");
                Assert.Equal(false, Json.GetBool(none, "enabled", true), "lora.enabled without LoRAs");
                Assert.Equal(0, Json.GetArray(none, "models").Count, "lora.models without LoRAs");
            });

            runner.Add("transformer_controlnet_type_is_inferred_from_the_file_name", () =>
            {
                var cases = new Dictionary<string, string>
                {
                    { "controlnet-canny-sdxl-1.0.safetensors", "canny" },
                    { "models/controlnet-depth-sdxl.safetensors", "depth" },
                    { "thibaud_xl_openpose.safetensors", "pose" },
                    { "t2i-adapter-scribble.bin", "scribble" },
                    { "NormalBae.safetensors", "normal" },
                    { "controlnet_seg.safetensors", "seg" },
                    { "sdxl_lineart.safetensors", "lineart" },
                    { "mystery.safetensors", "canny" },
                };
                foreach (var pair in cases)
                {
                    Assert.Equal(pair.Value, EnhancedRequestTransformer.InferControlNetType(pair.Key), "type of " + pair.Key);
                }

                var request = Minimal();
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = "cn/controlnet-depth.safetensors", Weight = 0.7, ConditioningImage = "depth.png" },
                };
                Assert.Equal("depth", Json.GetString(Obj(Data(request), "controlnet"), "type"), "type inferred from the file name");
                request.Conditioning.ControlNets[0].Type = "Pose";
                Assert.Equal("pose", Json.GetString(Obj(Data(request), "controlnet"), "type"), "Type overrides the file name (lowercased)");
                request.Conditioning.ControlNets[0].Type = " ";
                Assert.Equal("depth", Json.GetString(Obj(Data(request), "controlnet"), "type"), "a blank Type falls back to the file name");

                var disabled = Obj(Data(Minimal()), "controlnet");
                Assert.SequenceEqual(new[] { "enabled" }, disabled.Keys, "a disabled controlnet's members");
                request.Conditioning.ControlNets = new List<ControlNetConfiguration> { null };
                Assert.SequenceEqual(new[] { "enabled" }, Obj(Data(request), "controlnet").Keys, "a list of nulls is no ControlNet");
            });

            runner.Add("transformer_one_controlnet_is_the_seeds_object_with_the_model_path_as_model", () =>
            {
                var request = Minimal();
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = "/models/controlnet-canny-sdxl-1.0", Weight = 0.7, ConditioningImage = "edges.png" },
                };
                var controlnet = Obj(Data(request), "controlnet");
                Assert.SequenceEqual(new[] { "enabled", "model", "type", "conditioning_scale", "control_image", "preprocessor" }, controlnet.Keys, "members of a seed-shaped ControlNet");
                Assert.Equal(true, Json.GetBool(controlnet, "enabled", false), "enabled");
                Assert.Equal("/models/controlnet-canny-sdxl-1.0", Json.GetString(controlnet, "model"), "model is the path as given");
                Assert.Equal("canny", Json.GetString(controlnet, "type"), "type");
                Assert.Equal(0.7, Json.GetDouble(controlnet, "conditioning_scale").Value, "conditioning_scale");
                Assert.Equal("edges.png", Json.GetString(controlnet, "control_image"), "control_image");
                var preprocessor = Json.GetObject(controlnet, "preprocessor");
                Assert.SequenceEqual(new[] { "enabled", "resolution" }, preprocessor.Keys, "the seed's preprocessor members");
                Assert.Equal(true, Json.GetBool(preprocessor, "enabled", false), "preprocessor.enabled (the seed's)");
                Assert.Equal(512L, Json.GetLong(preprocessor, "resolution").Value, "preprocessor.resolution (the seed's)");

                request.Conditioning.ControlNets[0].ModelPath = null;
                Assert.Missing(Obj(Data(request), "controlnet"), "model", "no ModelPath: the engine's <models_dir>/controlnet/<type>");
                request.Conditioning.ControlNets[0].ModelPath = "";
                Assert.Missing(Obj(Data(request), "controlnet"), "model", "an empty ModelPath");

                request.Conditioning.ControlNets[0].GuidanceStart = 0.1;
                request.Conditioning.ControlNets[0].GuidanceEnd = 0.6;
                controlnet = Obj(Data(request), "controlnet");
                Assert.Equal(0.1, Json.GetDouble(controlnet, "guidance_start").Value, "guidance_start");
                Assert.Equal(0.6, Json.GetDouble(controlnet, "guidance_end").Value, "guidance_end");
            });

            runner.Add("transformer_two_controlnets_go_out_as_an_array_in_order_with_their_scales_and_images", () =>
            {
                var request = Minimal();
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = "cn/controlnet-depth.safetensors", Weight = 0.4, ConditioningImage = "depth.png", GuidanceEnd = 0.5 },
                    null,
                    new ControlNetConfiguration { ModelPath = "cn/controlnet-canny.safetensors", Weight = 1.3, ConditioningImage = "data:image/png;base64,iVBORw0KGgo=" },
                };
                var entries = Json.GetArray(Data(request), "controlnet");
                Assert.True(entries != null, "controlnet is an array with two ControlNets");
                Assert.Equal(2, entries.Count, "entries (null skipped)");
                var depth = (Dictionary<string, object>)entries[0];
                var canny = (Dictionary<string, object>)entries[1];
                Assert.SequenceEqual(new object[] { "depth", "canny" }, entries.Select(e => Json.Get((Dictionary<string, object>)e, "type")), "types in order");
                Assert.SequenceEqual(new[] { 0.4, 1.3 }, entries.Select(e => Json.GetDouble((Dictionary<string, object>)e, "conditioning_scale").Value), "scales in order");
                Assert.SequenceEqual(new object[] { "depth.png", "data:image/png;base64,iVBORw0KGgo=" }, entries.Select(e => Json.Get((Dictionary<string, object>)e, "control_image")), "images in order");
                Assert.SequenceEqual(new object[] { "cn/controlnet-depth.safetensors", "cn/controlnet-canny.safetensors" }, entries.Select(e => Json.Get((Dictionary<string, object>)e, "model")), "models in order");
                Assert.Equal(true, Json.GetBool(depth, "enabled", false), "[0].enabled");
                Assert.Equal(0.5, Json.GetDouble(depth, "guidance_end").Value, "[0].guidance_end");
                Assert.Missing(canny, "guidance_end", "[1].guidance_end unset");
                Assert.SequenceEqual(new[] { "enabled" }, Json.GetObject(depth, "preprocessor").Keys, "[0] (depth): preprocessor off");
                Assert.Equal(false, Json.GetBool(Json.GetObject(depth, "preprocessor"), "enabled", true), "[0].preprocessor.enabled");
                Assert.Equal(true, Json.GetBool(Json.GetObject(canny, "preprocessor"), "enabled", false), "[1].preprocessor.enabled (canny)");

                // The weights clamp per entry, as the seed clamped its one.
                request.Conditioning.ControlNets[0].Weight = 5.0;
                request.Conditioning.ControlNets[2].Weight = -1.0;
                entries = Json.GetArray(Data(request), "controlnet");
                Assert.SequenceEqual(new[] { 2.0, 0.0 }, entries.Select(e => Json.GetDouble((Dictionary<string, object>)e, "conditioning_scale").Value), "clamped scales");

                // Tags and worker type stay the seed's.
                var data = Data(request);
                Assert.Equal("enhanced_sdxl_worker", Json.GetString(data, "worker_type"), "worker_type");
                Assert.SequenceEqual(new object[] { "enhanced_sdxl", "c_sharp_service", "controlnet_guided" }, Json.GetArray(Obj(data, "metadata"), "tags"), "tags");
            });

            runner.Add("transformer_controlnet_preprocessor_is_the_seeds_for_canny_off_for_other_types_and_as_set_when_set", () =>
            {
                var request = Minimal();
                var controlnet = new ControlNetConfiguration { ModelPath = "controlnet-depth-sdxl.safetensors", ConditioningImage = "depth.png" };
                request.Conditioning.ControlNets = new List<ControlNetConfiguration> { controlnet };
                var preprocessor = Json.GetObject(Obj(Data(request), "controlnet"), "preprocessor");
                Assert.SequenceEqual(new[] { "enabled" }, preprocessor.Keys, "depth without Preprocessor: members");
                Assert.Equal(false, Json.GetBool(preprocessor, "enabled", true), "depth without Preprocessor: the image is used as given");
                foreach (var type in new[] { "depth", "pose", "scribble", "normal", "seg", "lineart" })
                {
                    controlnet.Type = type;
                    Assert.Equal(false, Json.GetBool(Json.GetObject(Obj(Data(request), "controlnet"), "preprocessor"), "enabled", true), type + ": preprocessor.enabled");
                }

                // Set explicitly, it goes out as set, even where the engine will answer UNSUPPORTED.
                controlnet.Type = null;
                controlnet.Preprocessor = new ControlNetPreprocessorConfiguration { Enabled = true };
                preprocessor = Json.GetObject(Obj(Data(request), "controlnet"), "preprocessor");
                Assert.Equal(true, Json.GetBool(preprocessor, "enabled", false), "depth with Enabled = true");
                Assert.Equal(512L, Json.GetLong(preprocessor, "resolution").Value, "the seed's resolution when enabled");

                controlnet.ModelPath = "controlnet-canny.safetensors";
                controlnet.Preprocessor = new ControlNetPreprocessorConfiguration { Resolution = 1024, LowThreshold = 50, HighThreshold = 150.5 };
                preprocessor = Json.GetObject(Obj(Data(request), "controlnet"), "preprocessor");
                Assert.SequenceEqual(new[] { "enabled", "resolution", "low_threshold", "high_threshold" }, preprocessor.Keys, "canny with settings: members");
                Assert.Equal(true, Json.GetBool(preprocessor, "enabled", false), "Enabled unset on canny is true");
                Assert.Equal(1024L, Json.GetLong(preprocessor, "resolution").Value, "resolution");
                Assert.Equal(50.0, Json.GetDouble(preprocessor, "low_threshold").Value, "low_threshold");
                Assert.Equal(150.5, Json.GetDouble(preprocessor, "high_threshold").Value, "high_threshold");

                controlnet.Preprocessor = new ControlNetPreprocessorConfiguration { Enabled = false };
                preprocessor = Json.GetObject(Obj(Data(request), "controlnet"), "preprocessor");
                Assert.SequenceEqual(new[] { "enabled" }, preprocessor.Keys, "canny switched off: members");
                Assert.Equal(false, Json.GetBool(preprocessor, "enabled", true), "canny switched off (an edge map given)");
            });

            runner.Add("transformer_refuses_nan_controlnet_numbers_with_the_sent_path", () =>
            {
                var transformer = new EnhancedRequestTransformer();
                var request = Minimal();
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration
                    {
                        ModelPath = "controlnet-canny.safetensors",
                        ConditioningImage = "edges.png",
                        Weight = double.NaN,
                        GuidanceStart = double.PositiveInfinity,
                        GuidanceEnd = double.NaN,
                        Preprocessor = new ControlNetPreprocessorConfiguration { LowThreshold = double.NegativeInfinity, HighThreshold = double.NaN },
                    },
                };
                var errors = transformer.ValidateRequestFields(request);
                Assert.SequenceEqual(new[]
                {
                    "controlnet.conditioning_scale", "controlnet.guidance_start", "controlnet.guidance_end",
                    "controlnet.preprocessor.low_threshold", "controlnet.preprocessor.high_threshold",
                }, errors.Select(e => e.Field), "fields of one ControlNet (" + string.Join("; ", errors) + ")");
                Assert.Equal("ControlNet weight NaN must be a finite number", errors[0].Message, "weight message");
                Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(request, "r"), "Transform of a NaN ControlNet");

                // With two, the path is the array entry's.
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = "a-canny", ConditioningImage = "a.png" },
                    new ControlNetConfiguration { ModelPath = "b-depth", ConditioningImage = "b.png", GuidanceEnd = double.NaN },
                };
                var failure = transformer.ValidationFailure(request, "r");
                Assert.True(failure != null, "ValidationFailure returned null");
                Assert.Equal("VALIDATION_ERROR", failure.ErrorCode, "ErrorCode");
                Assert.SequenceEqual(new[] { "controlnet[1].guidance_end" }, failure.FieldErrors.Select(e => e.Field), "fields of two ControlNets");
                Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(request, "r"), "Transform of a NaN second ControlNet");

                request.Conditioning.ControlNets[1].GuidanceEnd = 0.9;
                Assert.True(transformer.ValidationFailure(request, "r") == null, "finite numbers pass");
            });

            runner.Add("transformer_tags_and_worker_type_follow_the_features_used", () =>
            {
                var basic = Data(Minimal());
                Assert.Equal("sdxl_worker", Json.GetString(basic, "worker_type"), "worker_type of a plain request");
                Assert.SequenceEqual(new object[] { "enhanced_sdxl", "c_sharp_service" }, Json.GetArray(Obj(basic, "metadata"), "tags"), "plain tags");

                var full = Minimal();
                full.Conditioning.LoRAs = new List<LoRAConfiguration> { new LoRAConfiguration { ModelPath = "l.safetensors" } };
                full.Conditioning.ControlNets = new List<ControlNetConfiguration> { new ControlNetConfiguration { ModelPath = "c.safetensors" } };
                full.Model.Refiner = "refiner";
                full.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale" } };
                var data = Data(full);
                Assert.Equal("enhanced_sdxl_worker", Json.GetString(data, "worker_type"), "worker_type with features");
                Assert.SequenceEqual(new object[] { "enhanced_sdxl", "c_sharp_service", "lora_enhanced", "controlnet_guided", "refiner_enhanced", "post_processed" },
                    Json.GetArray(Obj(data, "metadata"), "tags"), "tags with every feature");

                var resolver = new WorkerTypeResolver();
                var batch = Minimal();
                batch.Hyperparameters = new HyperparametersConfiguration { BatchSize = 2 };
                Assert.Equal("enhanced_sdxl_worker", resolver.DetermineWorkerType(batch), "batch of 2");
                var vae = Minimal();
                vae.Model.Vae = "sdxl-vae-fp16-fix";
                Assert.Equal("enhanced_sdxl_worker", resolver.DetermineWorkerType(vae), "custom VAE");
                Assert.SequenceEqual(new[] { "enhanced_sdxl", "c_sharp_service" }, EnhancedRequestTransformer.GenerateRequestTags(vae), "a VAE adds no tag (as the seed)");
            });

            runner.Add("transformer_fills_the_seed_defaults_into_the_envelope", () =>
            {
                var json = new EnhancedRequestTransformer().TransformEnhancedSDXLRequest(new EnhancedSDXLRequest(), "req-9");
                var root = Json.ParseObject(json);
                Assert.Equal("inference_request", Json.GetString(root, "message_type"), "message_type");
                Assert.Equal("req-9", Json.GetString(root, "request_id"), "request_id");
                var data = Json.GetObject(root, "data");
                Assert.Equal("", Json.GetString(data, "prompt"), "prompt");
                Assert.Equal("cyberrealisticPony_v125", Json.GetString(data, "model_name"), "model_name");
                Assert.Equal("cyberrealisticPony_v125", Json.GetString(Obj(data, "models"), "base"), "models.base");
                var hyper = Obj(data, "hyperparameters");
                Assert.Equal(25L, Json.GetLong(hyper, "num_inference_steps").Value, "steps");
                Assert.Equal(7.5, Json.GetDouble(hyper, "guidance_scale").Value, "guidance_scale");
                Assert.Equal(-1L, Json.GetLong(hyper, "seed").Value, "seed");
                Assert.Equal(0.8, Json.GetDouble(hyper, "strength").Value, "strength");
                var output = Obj(data, "output");
                Assert.Equal("png", Json.GetString(output, "format"), "format");
                Assert.Equal("outputs/", Json.GetString(output, "save_path"), "save_path");
                Assert.Missing(output, "return_images", "return_images unless the caller sets ReturnImages");
                Assert.SequenceEqual(new[] { "enabled" }, Json.GetObject(output, "upscale").Keys, "disabled upscale members");
                var batch = Obj(data, "batch");
                Assert.Equal(1L, Json.GetLong(batch, "size").Value, "batch.size");
                Assert.Equal(false, Json.GetBool(batch, "parallel", true), "batch.parallel");
                Assert.Missing(data, "precision", "precision without request.Precision (the engine's config decides)");
                var metadata = Obj(data, "metadata");
                Assert.Equal("req-9", Json.GetString(metadata, "request_id"), "metadata.request_id");
                Assert.Equal("normal", Json.GetString(metadata, "priority"), "priority");
                Assert.Missing(metadata, "timeout", "no timeout unless the caller sets TimeoutSeconds");
                var timed = Minimal();
                timed.TimeoutSeconds = 42.5;
                Assert.Equal(42.5, Json.GetDouble(Obj(Data(timed), "metadata"), "timeout").Value, "metadata.timeout from TimeoutSeconds");
                Assert.SequenceEqual(new[] { "worker_type", "prompt", "negative_prompt", "model_name", "hyperparameters", "dimensions", "scheduler", "models", "lora", "controlnet", "output", "batch", "metadata" },
                    data.Keys, "data members (negative_prompt always, as the seed sends it)");
            });

            runner.Add("transformer_sends_precision_members_only_when_the_caller_set_them", () =>
            {
                // The seed always sent cpu_offload false (and float16, slicing on), which overrode
                // SdxlEngineConfig.CpuOffload and made the engine reload the model.
                Assert.Missing(Data(Minimal()), "precision", "no Precision");
                var request = Minimal();
                request.Precision = new PrecisionConfiguration();
                Assert.Missing(Data(request), "precision", "an empty Precision");
                request.Precision.CpuOffload = true;
                var precision = Obj(Data(request), "precision");
                Assert.SequenceEqual(new[] { "cpu_offload" }, precision.Keys, "members with only CpuOffload set");
                Assert.Equal(true, Json.GetBool(precision, "cpu_offload", false), "cpu_offload");
                request.Precision = new PrecisionConfiguration { Dtype = "bfloat16", VaeDtype = "float32", CpuOffload = false, AttentionSlicing = true, VaeSlicing = false };
                precision = Obj(Data(request), "precision");
                Assert.SequenceEqual(new[] { "dtype", "vae_dtype", "cpu_offload", "attention_slicing", "vae_slicing" }, precision.Keys, "every member set");
                Assert.Equal("bfloat16", Json.GetString(precision, "dtype"), "dtype");
                Assert.Equal(false, Json.GetBool(precision, "cpu_offload", true), "an explicit false is sent");
                Assert.Equal(false, Json.GetBool(precision, "vae_slicing", true), "vae_slicing");
            });

            runner.Add("transformer_sends_refiner_options_only_when_the_caller_set_them", () =>
            {
                Assert.Missing(Data(Minimal()), "refiner", "no Refiner");
                var request = Minimal();
                request.Model.Refiner = "sdxl-refiner";
                request.Refiner = new RefinerConfiguration();
                Assert.Missing(Data(request), "refiner", "an empty Refiner (the engine's defaults)");

                request.Refiner.Mode = RefinerMode.Ensemble;
                var refiner = Obj(Data(request), "refiner");
                Assert.SequenceEqual(new[] { "mode" }, refiner.Keys, "members with only Mode set");
                Assert.Equal("ensemble", Json.GetString(refiner, "mode"), "Ensemble");

                request.Refiner = new RefinerConfiguration
                {
                    Mode = RefinerMode.Img2Img,
                    DenoisingStart = 0.75,
                    Strength = 0.3,
                    AestheticScore = 7.0,
                    NegativeAestheticScore = 2.0,
                };
                var data = Data(request);
                refiner = Obj(data, "refiner");
                Assert.SequenceEqual(new[] { "mode", "denoising_start", "strength", "aesthetic_score", "negative_aesthetic_score" }, refiner.Keys, "every member set");
                Assert.Equal("img2img", Json.GetString(refiner, "mode"), "Img2Img");
                Assert.Equal(0.75, Json.GetDouble(refiner, "denoising_start").Value, "denoising_start");
                Assert.Equal(0.3, Json.GetDouble(refiner, "strength").Value, "strength");
                Assert.Equal(7.0, Json.GetDouble(refiner, "aesthetic_score").Value, "aesthetic_score");
                Assert.Equal(2.0, Json.GetDouble(refiner, "negative_aesthetic_score").Value, "negative_aesthetic_score");
                Assert.Equal("sdxl-refiner", Json.GetString(Obj(data, "models"), "refiner"), "models.refiner beside it");

                // Without models.refiner the options still go out as given: the engine ignores
                // them with a warning, which the caller sees in Warnings.
                var orphan = Minimal();
                orphan.Refiner = new RefinerConfiguration { DenoisingStart = 0.7 };
                Assert.Equal(0.7, Json.GetDouble(Obj(Data(orphan), "refiner"), "denoising_start").Value, "denoising_start without a refiner model");
                Assert.Missing(Obj(Data(orphan), "models"), "refiner", "no models.refiner invented");
            });

            runner.Add("transformer_maps_vae_tiling_on_off_auto_tile_size_and_overlap", () =>
            {
                var request = Minimal();
                request.Precision = new PrecisionConfiguration { VaeTiling = VaeTilingMode.On };
                var precision = Obj(Data(request), "precision");
                Assert.SequenceEqual(new[] { "vae_tiling" }, precision.Keys, "members with only VaeTiling set");
                Assert.Equal((object)true, Json.Get(precision, "vae_tiling"), "On is true");
                request.Precision.VaeTiling = VaeTilingMode.Off;
                Assert.Equal((object)false, Json.Get(Obj(Data(request), "precision"), "vae_tiling"), "Off is false");
                request.Precision.VaeTiling = VaeTilingMode.Auto;
                Assert.Equal((object)"auto", Json.Get(Obj(Data(request), "precision"), "vae_tiling"), "Auto is \"auto\"");

                request.Precision = new PrecisionConfiguration { VaeTileSize = 512 };
                precision = Obj(Data(request), "precision");
                Assert.SequenceEqual(new[] { "vae_tile_size" }, precision.Keys, "members with only VaeTileSize set");
                Assert.Equal(512L, Json.GetLong(precision, "vae_tile_size").Value, "vae_tile_size");

                request.Precision = new PrecisionConfiguration { VaeDtype = "float16", VaeTiling = VaeTilingMode.On, VaeTileSize = 1024, VaeTileOverlap = 0.125 };
                precision = Obj(Data(request), "precision");
                Assert.SequenceEqual(new[] { "vae_dtype", "vae_tiling", "vae_tile_size", "vae_tile_overlap" }, precision.Keys, "VAE members set");
                Assert.Equal(1024L, Json.GetLong(precision, "vae_tile_size").Value, "vae_tile_size");
                Assert.Equal(0.125, Json.GetDouble(precision, "vae_tile_overlap").Value, "vae_tile_overlap");
                Assert.Equal("float16", Json.GetString(precision, "vae_dtype"), "vae_dtype");

                // The wire text itself: a JSON boolean, not the string "true".
                var json = new EnhancedRequestTransformer().TransformEnhancedSDXLRequest(request, "r");
                Assert.Contains("\"vae_tiling\":true", json, "vae_tiling written as a JSON boolean");
            });

            runner.Add("transformer_refuses_nan_refiner_numbers_tile_overlap_and_undefined_enums", () =>
            {
                var request = Minimal();
                request.Model.Refiner = "sdxl-refiner";
                request.Refiner = new RefinerConfiguration
                {
                    Mode = (RefinerMode)7,
                    DenoisingStart = double.NaN,
                    Strength = double.PositiveInfinity,
                    AestheticScore = double.NegativeInfinity,
                    NegativeAestheticScore = double.NaN,
                };
                request.Precision = new PrecisionConfiguration { VaeTiling = (VaeTilingMode)9, VaeTileOverlap = double.NaN };
                var transformer = new EnhancedRequestTransformer();
                var errors = transformer.ValidateRequestFields(request);
                Assert.SequenceEqual(new[]
                {
                    "refiner.mode", "refiner.denoising_start", "refiner.strength", "refiner.aesthetic_score", "refiner.negative_aesthetic_score",
                    "precision.vae_tiling", "precision.vae_tile_overlap",
                }, errors.Select(e => e.Field), "fields (" + string.Join("; ", errors) + ")");
                Assert.Equal("Refiner denoising start NaN must be a finite number", errors[1].Message, "denoising_start message");
                Assert.Equal("VAE tile overlap NaN must be a finite number", errors[6].Message, "overlap message");

                // Each alone: refused by validation and by the transformer, never sent as null
                // (which the engine would read as its default).
                var cases = new List<KeyValuePair<string, EnhancedSDXLRequest>>();
                var start = Minimal();
                start.Refiner = new RefinerConfiguration { DenoisingStart = double.NaN };
                cases.Add(new KeyValuePair<string, EnhancedSDXLRequest>("refiner.denoising_start", start));
                var score = Minimal();
                score.Refiner = new RefinerConfiguration { AestheticScore = double.PositiveInfinity };
                cases.Add(new KeyValuePair<string, EnhancedSDXLRequest>("refiner.aesthetic_score", score));
                var mode = Minimal();
                mode.Refiner = new RefinerConfiguration { Mode = (RefinerMode)7 };
                cases.Add(new KeyValuePair<string, EnhancedSDXLRequest>("refiner.mode", mode));
                var overlap = Minimal();
                overlap.Precision = new PrecisionConfiguration { VaeTileOverlap = double.NegativeInfinity };
                cases.Add(new KeyValuePair<string, EnhancedSDXLRequest>("precision.vae_tile_overlap", overlap));
                var tiling = Minimal();
                tiling.Precision = new PrecisionConfiguration { VaeTiling = (VaeTilingMode)9 };
                cases.Add(new KeyValuePair<string, EnhancedSDXLRequest>("precision.vae_tiling", tiling));
                foreach (var pair in cases)
                {
                    var failure = transformer.ValidationFailure(pair.Value, "r");
                    Assert.True(failure != null, pair.Key + ": ValidationFailure returned null");
                    Assert.Equal("VALIDATION_ERROR", failure.ErrorCode, pair.Key + ": ErrorCode");
                    Assert.SequenceEqual(new[] { pair.Key }, failure.FieldErrors.Select(e => e.Field), pair.Key + ": fields");
                    Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(pair.Value, "r"), pair.Key + ": Transform");
                }
            });

            runner.Add("transformer_sends_the_seeds_empty_negative_prompt_and_refiner_vae_only_when_set", () =>
            {
                var request = Minimal();
                request.Conditioning.NegativePrompt = null;
                request.Model.Refiner = "";
                var data = Data(request);
                Assert.Equal("", Json.GetString(data, "negative_prompt"), "no negative prompt is sent as the seed's \"\" (encoded as text)");
                Assert.SequenceEqual(new[] { "base" }, Obj(data, "models").Keys, "models without refiner/vae");

                request.Conditioning.NegativePrompt = "blurry";
                request.Model.Refiner = "sdxl-refiner";
                request.Model.Vae = "vae-fix";
                data = Data(request);
                Assert.Equal("blurry", Json.GetString(data, "negative_prompt"), "negative_prompt");
                Assert.Equal("sdxl-refiner", Json.GetString(Obj(data, "models"), "refiner"), "refiner");
                Assert.Equal("vae-fix", Json.GetString(Obj(data, "models"), "vae"), "vae");
            });

            runner.Add("transformer_maps_the_first_upscale_step_and_lowercases_format", () =>
            {
                var request = Minimal();
                request.Output = new OutputConfiguration { Format = "JPEG", SavePath = "runs/a" };
                request.PostProcessing = new List<PostProcessingStep>
                {
                    new PostProcessingStep { Type = "FaceRestore" },
                    new PostProcessingStep { Type = "upscale", Factor = 4, Model = "lanczos" },
                    new PostProcessingStep { Type = "Upscale", Factor = 2, Model = "second-step-is-not-sent" },
                };
                var output = Obj(Data(request), "output");
                Assert.Equal("jpeg", Json.GetString(output, "format"), "format");
                Assert.Equal("runs/a", Json.GetString(output, "save_path"), "save_path");
                var upscale = Json.GetObject(output, "upscale");
                Assert.SequenceEqual(new[] { "enabled", "factor", "method" }, upscale.Keys, "members of the first Upscale step");
                Assert.Equal(true, Json.GetBool(upscale, "enabled", false), "upscale.enabled");
                Assert.Equal(4L, Json.GetLong(upscale, "factor").Value, "upscale.factor");
                Assert.Equal("lanczos", Json.GetString(upscale, "method"), "upscale.method");
            });

            runner.Add("transformer_sends_return_images_only_when_set", () =>
            {
                var request = Minimal();
                request.Output = new OutputConfiguration { Format = "PNG", ReturnImages = true };
                var output = Obj(Data(request), "output");
                Assert.True(Json.Get(output, "return_images") is bool, "return_images is a JSON boolean: " + Json.Get(output, "return_images"));
                Assert.Equal(true, Json.GetBool(output, "return_images", false), "return_images true");
                Assert.Equal("outputs/", Json.GetString(output, "save_path"), "save_path still sent");
                request.Output.ReturnImages = false;
                Assert.Equal(false, Json.GetBool(Obj(Data(request), "output"), "return_images", true), "return_images false");
                request.Output.ReturnImages = null;
                Assert.Missing(Obj(Data(request), "output"), "return_images", "ReturnImages null");
                request.Output = null;
                Assert.Missing(Obj(Data(request), "output"), "return_images", "Output null");
            });

            runner.Add("transformer_upscale_model_picks_realesrgan_lanczos_or_names_the_weights", () =>
            {
                // Model → (method, model): the seed sent Model lowercased as the method, which
                // the engine refuses for anything but "realesrgan" and "lanczos".
                var modelPath = "/models/Upscalers/4x-Anime.pth";
                var cases = new[]
                {
                    new[] { null, "realesrgan", null },
                    new[] { "", "realesrgan", null },
                    new[] { "  ", "realesrgan", null },
                    new[] { "realesrgan", "realesrgan", null },
                    new[] { "RealESRGAN", "realesrgan", null },
                    new[] { "lanczos", "lanczos", null },
                    new[] { "LANCZOS", "lanczos", null },
                    new[] { "Lanczos", "lanczos", null },
                    new[] { "RealESRGAN_x4plus", "realesrgan", "RealESRGAN_x4plus" },
                    new[] { modelPath, "realesrgan", modelPath },
                    new[] { @"C:\models\RealESRGAN_x2plus.safetensors", "realesrgan", @"C:\models\RealESRGAN_x2plus.safetensors" },
                };
                foreach (var c in cases)
                {
                    var request = Minimal();
                    request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 4, Model = c[0] } };
                    var upscale = Obj(Data(request), "output.upscale");
                    var what = "Model " + Assert.Show(c[0]);
                    Assert.Equal(c[1], Json.GetString(upscale, "method"), what + ": method");
                    Assert.Equal(c[2], Json.GetString(upscale, "model"), what + ": model");
                    if (c[2] == null)
                    {
                        Assert.Missing(upscale, "model", what);
                    }
                    Assert.Missing(upscale, "tile", what);
                    Assert.Missing(upscale, "tile_pad", what);
                }

                // Tile and TilePad only when set, as JSON integers.
                var tiled = Minimal();
                tiled.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 2, Tile = 0, TilePad = 8 } };
                var tiledUpscale = Obj(Data(tiled), "output.upscale");
                Assert.SequenceEqual(new[] { "enabled", "factor", "method", "tile", "tile_pad" }, tiledUpscale.Keys, "members with Tile and TilePad");
                Assert.Equal(0L, Json.GetLong(tiledUpscale, "tile").Value, "tile 0 (whole image) is sent");
                Assert.Equal(8L, Json.GetLong(tiledUpscale, "tile_pad").Value, "tile_pad");
                var json = new EnhancedRequestTransformer().TransformEnhancedSDXLRequest(tiled, "r");
                Assert.Contains("\"upscale\":{\"enabled\":true,\"factor\":2,\"method\":\"realesrgan\",\"tile\":0,\"tile_pad\":8}", json, "wire text");
            });

            runner.Add("transformer_upscale_factor_is_a_json_integer_and_only_2_or_4_pass_validation", () =>
            {
                var transformer = new EnhancedRequestTransformer();
                foreach (var factor in new[] { 2.0, 4.0 })
                {
                    var request = Minimal();
                    request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = factor } };
                    Assert.True(transformer.ValidationFailure(request, "r") == null, "factor " + Assert.Show(factor) + " is valid");
                    var json = transformer.TransformEnhancedSDXLRequest(request, "r");
                    var text = "\"factor\":" + ((int)factor).ToString(System.Globalization.CultureInfo.InvariantCulture) + ",";
                    Assert.Contains(text, json, "factor " + Assert.Show(factor) + " on the wire");
                    Assert.True(!json.Contains("\"factor\":" + ((int)factor).ToString(System.Globalization.CultureInfo.InvariantCulture) + ".0"), "no 4.0 on the wire: " + json);
                    var upscale = Obj(Json.GetObject(Json.ParseObject(json), "data"), "output.upscale");
                    Assert.True(Json.Get(upscale, "factor") is long, "factor parses back as an integer, got " + Json.Get(upscale, "factor").GetType().Name);
                }
                // The default (the seed's 2.0) is valid too.
                var defaults = Minimal();
                defaults.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale" } };
                Assert.Equal(2L, Json.GetLong(Obj(Data(defaults), "output.upscale"), "factor").Value, "the seed's default factor");

                var refused = new[] { 2.5, 3.0, 1.0, 0.0, -4.0, 8.0, 4.000001, 1e12 };
                foreach (var factor in refused)
                {
                    var request = Minimal();
                    request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = factor } };
                    var failure = transformer.ValidationFailure(request, "r");
                    var what = "factor " + Assert.Show(factor);
                    Assert.True(failure != null, what + ": ValidationFailure returned null");
                    Assert.Equal("VALIDATION_ERROR", failure.ErrorCode, what + ": ErrorCode");
                    Assert.SequenceEqual(new[] { "output.upscale.factor" }, failure.FieldErrors.Select(e => e.Field), what + ": fields");
                    Assert.Equal("Upscale factor " + factor.ToString(System.Globalization.CultureInfo.InvariantCulture) + " must be 2 or 4", failure.FieldErrors[0].Message, what + ": message");
                    List<string> messages;
                    Assert.Equal(false, transformer.ValidateRequest(request, out messages), what + ": the seed's ValidateRequest");
                }
                // What no integer equals is refused by the transformer itself, never rounded;
                // an integral factor the engine refuses on the same field goes out as it is.
                var half = Minimal();
                half.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 2.5 } };
                var ex = Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(half, "r"), "Transform of factor 2.5");
                Assert.Contains("2.5", ex.Message, "message");
                var huge = Minimal();
                huge.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 1e12 } };
                Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(huge, "r"), "Transform of factor 1e12 (past int)");
                var three = Minimal();
                three.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 3 } };
                Assert.Equal(3L, Json.GetLong(Obj(Data(three), "output.upscale"), "factor").Value, "factor 3 sent for the engine to refuse");

                // Only the step that is sent is checked.
                var other = Minimal();
                other.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "FaceRestore", Factor = 2.5 } };
                Assert.True(transformer.ValidationFailure(other, "r") == null, "a non-upscale step's factor is not checked");
            });

            runner.Add("json_writer_escapes_strings_so_they_round_trip", () =>
            {
                var prompt = "say \"hi\" \\ back\nslash\t\u0001 caf\u00e9 \u2028 \U0001F600 </script>";
                var request = Minimal();
                request.Conditioning.Prompt = prompt;
                var json = new EnhancedRequestTransformer().TransformEnhancedSDXLRequest(request, "id\"1");
                Assert.Contains("say \\\"hi\\\" \\\\ back\\nslash\\t\\u0001", json, "escaped prompt");
                Assert.Contains("\\u2028", json, "escaped line separator");
                var root = Json.ParseObject(json);
                Assert.Equal(prompt, Json.GetString(Json.GetObject(root, "data"), "prompt"), "prompt after a round trip");
                Assert.Equal("id\"1", Json.GetString(root, "request_id"), "request id after a round trip");
                Assert.Throws<System.FormatException>(() => Json.Parse("{\"a\":1,}"), "trailing comma");
                Assert.Throws<System.FormatException>(() => Json.Parse("{\"a\":1} x"), "trailing text");
            });

            runner.Add("engine_config_json_omits_unset_members", () =>
            {
                var config = new SdxlEngineConfig { Device = "cpu", OutputDir = "/tmp/o", Limits = new SdxlLimits { MinSize = 64 } };
                Assert.Equal("{\"device\":\"cpu\",\"output_dir\":\"/tmp/o\",\"limits\":{\"min_size\":64}}", config.ToJson(), "config JSON");
                Assert.Equal("{}", new SdxlEngineConfig().ToJson(), "empty config JSON");
                var memory = new SdxlEngineConfig { MaxLoadedModels = 3, MaxMemoryGb = 12.5, CpuOffload = true };
                Assert.Equal("{\"max_loaded_models\":3,\"max_memory_gb\":12.5,\"cpu_offload\":true}", memory.ToJson(), "memory config JSON");
            });

            runner.Add("pool_picks_the_least_busy_engine_and_rotates_ties", () =>
            {
                Assert.Equal(1, SdxlEnginePool.SelectIndex(new[] { 2, 0, 1 }, 0), "least busy");
                Assert.Equal(2, SdxlEnginePool.SelectIndex(new[] { 0, 0, 0 }, 2), "tie from start");
                Assert.Equal(0, SdxlEnginePool.SelectIndex(new[] { 0, 1, 1 }, 1), "wraps around");
                Assert.Equal(1, SdxlEnginePool.SelectIndex(new[] { 1, 0, 0 }, 1), "first of the tied from start");
            });
        }
    }
}
