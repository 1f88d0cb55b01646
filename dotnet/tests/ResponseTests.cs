// EnhancedResponseHandler against the engine's response shape (src/api/response.rs).

using System.Linq;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class ResponseTests
    {
        internal const string SuccessJson =
            "{\"request_id\":\"r-1\",\"success\":true,\"data\":{\"generated_images\":[" +
            "{\"path\":\"/out/outputs/r-1_0_42.png\",\"seed\":42,\"width\":1024,\"height\":768,\"format\":\"png\"}," +
            "{\"path\":\"/out/outputs/r-1_1_43.png\",\"seed\":43,\"width\":1024,\"height\":768,\"format\":\"png\"}]," +
            "\"processing_metrics\":{\"total_time\":12.5,\"inference_time\":11.25,\"device_name\":\"cuda:0 (NVIDIA H100)\",\"memory_used\":6938000000," +
            "\"model_info\":{\"base_model\":\"sdxl-base\",\"scheduler\":\"EulerDiscreteScheduler\",\"refiner_model\":null,\"loaded_loras\":[]}," +
            "\"stage_times\":{\"text_encode\":0.1,\"denoise\":10.0,\"decode\":1.15,\"save\":0.2},\"unet_calls\":50,\"iterations_per_second\":2.5}}," +
            "\"error\":null,\"error_code\":null,\"error_number\":null,\"field_errors\":[],\"warnings\":[\"precision.dtype float32 ignored\"]," +
            "\"execution_time\":12.6,\"timestamp\":1732700000.5}";

        internal const string ValidationJson =
            "{\"request_id\":\"r-2\",\"success\":false,\"data\":null," +
            "\"error\":\"validation failed: hyperparameters.num_inference_steps: Invalid steps: 0. Must be 1-150; scheduler: unknown scheduler 'x'\"," +
            "\"error_code\":\"VALIDATION_ERROR\",\"error_number\":-3,\"field_errors\":[" +
            "{\"field\":\"hyperparameters.num_inference_steps\",\"message\":\"Invalid steps: 0. Must be 1-150\"}," +
            "{\"field\":\"scheduler\",\"message\":\"unknown scheduler 'x'\"}],\"warnings\":[],\"execution_time\":0.001,\"timestamp\":1732700000.5}";

        public static void Register(TestRunner runner)
        {
            runner.Add("response_success_maps_images_metrics_and_warnings", () =>
            {
                var response = new EnhancedResponseHandler().HandleEnhancedResponse(SuccessJson, "fallback");
                Assert.Equal(true, response.Success, "Success");
                Assert.Equal("r-1", response.RequestId, "RequestId");
                Assert.Equal(null, response.Error, "Error");
                Assert.Equal(null, response.ErrorCode, "ErrorCode");
                Assert.Equal(2, response.Images.Count, "image count");
                var image = response.Images[1];
                Assert.Equal("/out/outputs/r-1_1_43.png", image.Path, "Path");
                Assert.Equal(43L, image.Seed, "Seed");
                Assert.Equal(1024, image.Width, "Width");
                Assert.Equal(768, image.Height, "Height");
                Assert.Equal("png", image.Format, "Format");
                Assert.Equal(12.5, response.Metrics.TotalTime, "TotalTime");
                Assert.Equal(11.25, response.Metrics.InferenceTime, "InferenceTime");
                Assert.Equal("cuda:0 (NVIDIA H100)", response.Metrics.DeviceName, "DeviceName");
                Assert.Equal(6938000000L, response.Metrics.MemoryUsed, "MemoryUsed");
                Assert.Equal(50L, response.Metrics.UnetCalls, "UnetCalls");
                Assert.Equal("EulerDiscreteScheduler", response.Metrics.ModelInfo["scheduler"] as string, "ModelInfo.scheduler");
                Assert.SequenceEqual(new[] { "precision.dtype float32 ignored" }, response.Warnings, "Warnings");
                Assert.Equal(12.6, response.ExecutionTime, "ExecutionTime");
                response.EnsureSuccess();
            });

            runner.Add("response_maps_refiner_vae_and_stage_times_of_model_info", () =>
            {
                const string refined =
                    "{\"request_id\":\"r-3\",\"success\":true,\"data\":{\"generated_images\":[]," +
                    "\"processing_metrics\":{\"total_time\":3.0,\"inference_time\":2.5,\"device_name\":\"cpu\",\"memory_used\":1," +
                    "\"model_info\":{\"base_model\":\"sdxl-base\",\"refiner_model\":\"sdxl-refiner\",\"refiner_description\":\"diffusers folder /m/refiner\"," +
                    "\"refiner_mode\":\"ensemble\",\"refiner_steps\":5,\"vae\":\"sdxl-vae-fp16-fix\",\"vae_tiling\":{\"tile_size\":512,\"overlap\":0.25}," +
                    "\"dtype\":\"float16\",\"vae_dtype\":\"float16\"}," +
                    "\"stage_times\":{\"text_encode\":0.1,\"denoise\":1.5,\"refine\":0.5,\"decode\":0.4,\"save\":0.05},\"unet_calls\":50,\"iterations_per_second\":12.5}}," +
                    "\"error\":null,\"error_code\":null,\"error_number\":null,\"field_errors\":[],\"warnings\":[],\"execution_time\":3.1,\"timestamp\":1.0}";
                var metrics = new EnhancedResponseHandler().HandleEnhancedResponse(refined, "fallback").EnsureSuccess().Metrics;
                Assert.Equal("sdxl-refiner", metrics.RefinerModel, "RefinerModel");
                Assert.Equal("ensemble", metrics.RefinerMode, "RefinerMode");
                Assert.Equal(5, metrics.RefinerSteps, "RefinerSteps");
                Assert.Equal("diffusers folder /m/refiner", metrics.RefinerDescription, "RefinerDescription");
                Assert.Equal("sdxl-vae-fp16-fix", metrics.Vae, "Vae");
                Assert.Equal("float16", metrics.VaeDtype, "VaeDtype");
                Assert.True(metrics.VaeTiling != null, "VaeTiling");
                Assert.Equal(512, metrics.VaeTiling.TileSize, "VaeTiling.TileSize");
                Assert.Equal(0.25, metrics.VaeTiling.Overlap, "VaeTiling.Overlap");
                Assert.Equal(0.1, metrics.StageTimes.TextEncode, "StageTimes.TextEncode");
                Assert.Equal(1.5, metrics.StageTimes.Denoise, "StageTimes.Denoise");
                Assert.Equal(0.5, metrics.StageTimes.Refine, "StageTimes.Refine");
                Assert.Equal(0.4, metrics.StageTimes.Decode, "StageTimes.Decode");
                Assert.Equal(0.05, metrics.StageTimes.Save, "StageTimes.Save");

                // Without a refiner (refiner_model null, no refine time from an older engine) and untiled.
                var plain = new EnhancedResponseHandler().HandleEnhancedResponse(SuccessJson, "fallback").Metrics;
                Assert.Equal(null, plain.RefinerModel, "RefinerModel without a refiner");
                Assert.Equal(0, plain.RefinerSteps, "RefinerSteps without a refiner");
                Assert.True(plain.VaeTiling == null, "VaeTiling untiled");
                Assert.Equal(0.0, plain.StageTimes.Refine, "StageTimes.Refine absent");
                Assert.Equal(10.0, plain.StageTimes.Denoise, "StageTimes.Denoise");
            });

            runner.Add("response_maps_model_info_controlnets_in_order_with_their_canny_settings", () =>
            {
                const string guided =
                    "{\"request_id\":\"r-6\",\"success\":true,\"data\":{\"generated_images\":[]," +
                    "\"processing_metrics\":{\"total_time\":1.0,\"inference_time\":0.9,\"device_name\":\"cpu\",\"memory_used\":1," +
                    "\"model_info\":{\"base_model\":\"sdxl-base\",\"controlnets\":[" +
                    "{\"type\":\"canny\",\"model\":\"/m/controlnet-canny\",\"conditioning_scale\":0.7,\"guidance_start\":0.0,\"guidance_end\":1.0," +
                    "\"canny\":{\"low_threshold\":100.0,\"high_threshold\":200.0,\"resolution\":512}}," +
                    "{\"type\":\"depth\",\"model\":null,\"conditioning_scale\":1.5,\"guidance_start\":0.25,\"guidance_end\":0.75,\"canny\":null}," +
                    "{\"type\":\"canny\",\"model\":\"cn\",\"conditioning_scale\":1,\"guidance_start\":0,\"guidance_end\":1," +
                    "\"canny\":{\"low_threshold\":50.5,\"high_threshold\":150,\"resolution\":null}}]}," +
                    "\"unet_calls\":2,\"iterations_per_second\":2.0}}," +
                    "\"error\":null,\"error_code\":null,\"error_number\":null,\"field_errors\":[],\"warnings\":[],\"execution_time\":1.1,\"timestamp\":1.0}";
                var metrics = new EnhancedResponseHandler().HandleEnhancedResponse(guided, "fallback").EnsureSuccess().Metrics;
                Assert.Equal(3, metrics.ControlNets.Count, "ControlNets");
                var canny = metrics.ControlNets[0];
                Assert.Equal("canny", canny.Type, "[0].Type");
                Assert.Equal("/m/controlnet-canny", canny.Model, "[0].Model");
                Assert.Equal(0.7, canny.ConditioningScale, "[0].ConditioningScale");
                Assert.Equal(0.0, canny.GuidanceStart, "[0].GuidanceStart");
                Assert.Equal(1.0, canny.GuidanceEnd, "[0].GuidanceEnd");
                Assert.True(canny.Canny != null, "[0].Canny");
                Assert.Equal(100.0, canny.Canny.LowThreshold, "[0].Canny.LowThreshold");
                Assert.Equal(200.0, canny.Canny.HighThreshold, "[0].Canny.HighThreshold");
                Assert.Equal((int?)512, canny.Canny.Resolution, "[0].Canny.Resolution");
                var depth = metrics.ControlNets[1];
                Assert.Equal("depth", depth.Type, "[1].Type");
                Assert.Equal(null, depth.Model, "[1].Model (the engine's default)");
                Assert.Equal(1.5, depth.ConditioningScale, "[1].ConditioningScale");
                Assert.Equal(0.25, depth.GuidanceStart, "[1].GuidanceStart");
                Assert.Equal(0.75, depth.GuidanceEnd, "[1].GuidanceEnd");
                Assert.True(depth.Canny == null, "[1].Canny (no preprocessor)");
                var integral = metrics.ControlNets[2];
                Assert.Equal(1.0, integral.ConditioningScale, "[2].ConditioningScale written as an integer");
                Assert.Equal(50.5, integral.Canny.LowThreshold, "[2].Canny.LowThreshold");
                Assert.Equal(150.0, integral.Canny.HighThreshold, "[2].Canny.HighThreshold");
                Assert.Equal((int?)null, integral.Canny.Resolution, "[2].Canny.Resolution (the request's size)");
                Assert.True(metrics.ModelInfo["controlnets"] is System.Collections.Generic.List<object>, "ModelInfo still holds the raw array");

                // An engine without ControlNet (or a request without one) gives an empty list, never null.
                var plain = new EnhancedResponseHandler().HandleEnhancedResponse(SuccessJson, "fallback").Metrics;
                Assert.Equal(0, plain.ControlNets.Count, "ControlNets without model_info.controlnets");
            });

            runner.Add("response_maps_model_info_upscale_and_the_upscale_stage_time", () =>
            {
                const string upscaled =
                    "{\"request_id\":\"r-7\",\"success\":true,\"data\":{\"generated_images\":[" +
                    "{\"path\":\"/out/r-7_0_42.png\",\"seed\":42,\"width\":4096,\"height\":3072,\"format\":\"png\"}]," +
                    "\"processing_metrics\":{\"total_time\":14.0,\"inference_time\":13.5,\"device_name\":\"cpu\",\"memory_used\":1," +
                    "\"model_info\":{\"base_model\":\"sdxl-base\",\"upscale\":{\"method\":\"realesrgan\",\"factor\":4," +
                    "\"model\":\"/m/upscalers/4x-anime.pth\",\"tile\":256,\"tile_pad\":10}}," +
                    "\"stage_times\":{\"text_encode\":0.1,\"denoise\":10.0,\"refine\":0.0,\"decode\":1.15,\"upscale\":2.25,\"save\":0.2}," +
                    "\"unet_calls\":50,\"iterations_per_second\":2.5}}," +
                    "\"error\":null,\"error_code\":null,\"error_number\":null,\"field_errors\":[],\"warnings\":[],\"execution_time\":14.1,\"timestamp\":1.0}";
                var response = new EnhancedResponseHandler().HandleEnhancedResponse(upscaled, "fallback").EnsureSuccess();
                Assert.Equal(4096, response.Images[0].Width, "Width (upscaled)");
                Assert.Equal(3072, response.Images[0].Height, "Height (upscaled)");
                var metrics = response.Metrics;
                Assert.Equal(2.25, metrics.StageTimes.Upscale, "StageTimes.Upscale");
                Assert.True(metrics.Upscale != null, "Upscale");
                Assert.Equal("realesrgan", metrics.Upscale.Method, "Upscale.Method");
                Assert.Equal(4, metrics.Upscale.Factor, "Upscale.Factor");
                Assert.Equal("/m/upscalers/4x-anime.pth", metrics.Upscale.Model, "Upscale.Model");
                Assert.Equal(256, metrics.Upscale.Tile, "Upscale.Tile");
                Assert.Equal(10, metrics.Upscale.TilePad, "Upscale.TilePad");

                // Lanczos: model null. Without upscaling: upscale null (or absent, from an
                // older engine) and no upscale time.
                var lanczos = upscaled.Replace("\"method\":\"realesrgan\"", "\"method\":\"lanczos\"").Replace("\"/m/upscalers/4x-anime.pth\"", "null");
                metrics = new EnhancedResponseHandler().HandleEnhancedResponse(lanczos, "fallback").EnsureSuccess().Metrics;
                Assert.Equal("lanczos", metrics.Upscale.Method, "Upscale.Method (lanczos)");
                Assert.Equal(null, metrics.Upscale.Model, "Upscale.Model (lanczos)");
                var none = upscaled.Replace("\"upscale\":{\"method\":\"realesrgan\",\"factor\":4,\"model\":\"/m/upscalers/4x-anime.pth\",\"tile\":256,\"tile_pad\":10}", "\"upscale\":null");
                Assert.True(none != upscaled, "the test's replacement found model_info.upscale");
                metrics = new EnhancedResponseHandler().HandleEnhancedResponse(none, "fallback").EnsureSuccess().Metrics;
                Assert.True(metrics.Upscale == null, "Upscale null without upscaling");
                var plain = new EnhancedResponseHandler().HandleEnhancedResponse(SuccessJson, "fallback").Metrics;
                Assert.True(plain.Upscale == null, "Upscale absent");
                Assert.Equal(0.0, plain.StageTimes.Upscale, "StageTimes.Upscale absent");
            });

            runner.Add("response_decodes_returned_image_data_once_and_parses_a_null_path", () =>
            {
                // output.return_images: path null, data = base64 of the encoded file. The bytes
                // here are a PNG signature and the start of an IHDR chunk.
                var encoded = new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0xFF };
                var returned =
                    "{\"request_id\":\"r-8\",\"success\":true,\"data\":{\"generated_images\":[" +
                    "{\"path\":null,\"seed\":42,\"width\":256,\"height\":256,\"format\":\"png\",\"data\":\"" + System.Convert.ToBase64String(encoded) + "\"}," +
                    "{\"path\":\"/out/r-8_1_43.webp\",\"seed\":43,\"width\":256,\"height\":256,\"format\":\"webp\"}]}," +
                    "\"error\":null,\"error_code\":null,\"error_number\":null,\"field_errors\":[],\"warnings\":[],\"execution_time\":1.0,\"timestamp\":1.0}";
                var response = new EnhancedResponseHandler().HandleEnhancedResponse(returned, "fallback").EnsureSuccess();
                Assert.Equal(2, response.Images.Count, "image count");
                var inMemory = response.Images[0];
                Assert.Equal(null, inMemory.Path, "Path of a returned image");
                Assert.True(inMemory.Data != null, "Data of a returned image");
                Assert.SequenceEqual(encoded, inMemory.Data, "Data decoded from base64");
                Assert.Equal(42L, inMemory.Seed, "Seed");
                Assert.Equal(256, inMemory.Width, "Width");
                Assert.Equal("png", inMemory.Format, "Format");
                var written = response.Images[1];
                Assert.Equal("/out/r-8_1_43.webp", written.Path, "Path of a written image");
                Assert.True(written.Data == null, "Data absent: " + (written.Data == null ? "" : written.Data.Length + " bytes"));
                Assert.Equal("webp", written.Format, "Format");
                Assert.True(new EnhancedResponseHandler().HandleEnhancedResponse(SuccessJson, "fallback").Images.All(i => i.Data == null), "no data in a files-only response");

                // Not base64: the handler's INVALID_JSON failure, naming the image.
                var broken = new EnhancedResponseHandler().HandleEnhancedResponse(returned.Replace(System.Convert.ToBase64String(encoded), "not*base64"), "fallback");
                Assert.Equal(false, broken.Success, "Success with bad data");
                Assert.Equal("INVALID_JSON", broken.ErrorCode, "ErrorCode with bad data");
                Assert.Contains("generated_images[0].data", broken.Error, "Error names the image");
            });

            runner.Add("response_error_maps_code_and_field_errors", () =>
            {
                var response = new EnhancedResponseHandler().HandleEnhancedResponse(ValidationJson, "fallback");
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("r-2", response.RequestId, "RequestId");
                Assert.Contains("Invalid steps: 0", response.Error, "Error");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode");
                Assert.Equal(-3, response.ErrorNumber.Value, "ErrorNumber");
                Assert.SequenceEqual(new[] { "hyperparameters.num_inference_steps", "scheduler" }, response.FieldErrors.Select(f => f.Field), "fields");
                Assert.Equal("unknown scheduler 'x'", response.FieldErrors[1].Message, "message");
                Assert.Equal(0, response.Images.Count, "no images");
                Assert.Equal(null, response.Metrics, "no metrics");
                var ex = Assert.Throws<SdxlException>(() => response.EnsureSuccess(), "EnsureSuccess");
                Assert.Equal(-3, ex.Code, "exception code");
                Assert.Equal("VALIDATION_ERROR", ex.CodeName, "exception code name");
                Assert.Equal(2, ex.FieldErrors.Count, "exception field errors");
            });

            runner.Add("response_without_error_number_or_from_the_seed_python_worker_still_maps", () =>
            {
                var cancelled = new EnhancedResponseHandler().HandleEnhancedResponse(
                    "{\"request_id\":\"r-3\",\"success\":false,\"error\":\"cancelled\",\"error_code\":\"CANCELLED\"}", "x");
                Assert.Equal(-9, cancelled.ErrorNumber.Value, "number from the name");
                var seedStyle = new EnhancedResponseHandler().HandleEnhancedResponse(
                    "{\"request_id\":\"r-4\",\"success\":false,\"error\":\"Processing failed: boom\",\"data\":null,\"warnings\":[],\"execution_time\":0.0,\"timestamp\":1.0}", "x");
                Assert.Equal("INTERNAL_ERROR", seedStyle.ErrorCode, "code of a seed-style error");
                Assert.Equal("Processing failed: boom", seedStyle.Error, "seed-style error text");
            });

            runner.Add("response_that_is_not_json_becomes_an_invalid_json_failure", () =>
            {
                var response = new EnhancedResponseHandler().HandleEnhancedResponse("not json", "r-5");
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("INVALID_JSON", response.ErrorCode, "ErrorCode");
                Assert.Equal("r-5", response.RequestId, "RequestId falls back to ours");
                Assert.Contains("Invalid response from the native engine", response.Error, "Error");
            });

            runner.Add("error_code_names_match_the_native_numbers", () =>
            {
                Assert.Equal("VALIDATION_ERROR", SdxlErrorCode.Name(-3), "-3");
                Assert.Equal("CANCELLED", SdxlErrorCode.Name(-9), "-9");
                Assert.Equal("INTERNAL_ERROR", SdxlErrorCode.Name(-13), "-13");
                Assert.Equal(-10, SdxlErrorCode.FromName("TIMEOUT"), "TIMEOUT");
                Assert.Equal(-3, SdxlErrorCode.FromMessage("validation failed: device: 'tpu' is not cpu"), "from a create message");
                Assert.Equal(-7, SdxlErrorCode.FromMessage("device error: no CUDA"), "device message");
            });
        }
    }
}
