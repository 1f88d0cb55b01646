// The seed's ValidateRequest messages and SendEnhancedCommandAsync's failure shapes.

using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl.Tests
{
    /// <summary>Stands in for an engine: records what it was sent, answers or throws.</summary>
    internal sealed class FakeGenerator : ISdxlGenerator
    {
        public readonly List<string> Sent = new List<string>();
        public Func<string, string> Answer = json => null;

        public Task<string> GenerateJsonAsync(string requestJson, IProgress<SdxlProgress> progress, CancellationToken cancellationToken)
        {
            Sent.Add(requestJson);
            return Task.FromResult(Answer(requestJson));
        }
    }

    internal static class ValidationTests
    {
        private static List<string> Errors(EnhancedSDXLRequest request)
        {
            List<string> errors;
            new EnhancedRequestTransformer().ValidateRequest(request, out errors);
            return errors;
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("validate_accepts_a_complete_request", () =>
            {
                var request = TransformerTests.Minimal();
                request.Hyperparameters = new HyperparametersConfiguration { Width = 1024, Height = 768 };
                request.Conditioning.LoRAs = new List<LoRAConfiguration> { new LoRAConfiguration { ModelPath = "x.safetensors", Weight = -2.0 } };
                List<string> errors;
                Assert.True(new EnhancedRequestTransformer().ValidateRequest(request, out errors), "valid request rejected: " + string.Join("; ", errors));
                Assert.Equal(0, errors.Count, "error count");
            });

            runner.Add("validate_reports_the_seed_messages", () =>
            {
                Assert.SequenceEqual(new[] { "Prompt is required and cannot be empty", "Base model is required" }, Errors(null), "null request");
                Assert.SequenceEqual(new[] { "Prompt is required and cannot be empty", "Base model is required" }, Errors(new EnhancedSDXLRequest()), "empty request");

                var request = TransformerTests.Minimal();
                request.Conditioning.Prompt = "   ";
                request.Model.Base = "";
                request.Hyperparameters = new HyperparametersConfiguration { Width = 100, Height = 1001 };
                request.Conditioning.LoRAs = new List<LoRAConfiguration>
                {
                    new LoRAConfiguration { ModelPath = " ", Weight = 1 },
                    new LoRAConfiguration { ModelPath = "ok.safetensors", Weight = 2.5 },
                    new LoRAConfiguration { ModelPath = "ok.safetensors", Weight = -3 },
                };
                Assert.SequenceEqual(new[]
                {
                    "Prompt is required and cannot be empty",
                    "Base model is required",
                    "Width must be between 256 and 2048 and divisible by 8",
                    "Height must be between 256 and 2048 and divisible by 8",
                    "LoRA ModelPath cannot be empty",
                    "LoRA weight 2.5 must be between -2.0 and 2.0",
                    "LoRA weight -3 must be between -2.0 and 2.0",
                }, Errors(request), "messages");

                var fieldErrors = new EnhancedRequestTransformer().ValidateRequestFields(request);
                Assert.SequenceEqual(new[] { "prompt", "models.base", "dimensions.width", "dimensions.height", "lora.models[0].name", "lora.models[1].weight", "lora.models[2].weight" },
                    fieldErrors.Select(e => e.Field), "field paths (the engine's names)");

                var edges = TransformerTests.Minimal();
                edges.Hyperparameters = new HyperparametersConfiguration { Width = 2048, Height = 256 };
                Assert.Equal(0, Errors(edges).Count, "256 and 2048 are valid");
                edges.Hyperparameters.Width = 2056;
                Assert.SequenceEqual(new[] { "Width must be between 256 and 2048 and divisible by 8" }, Errors(edges), "2056");
            });

            runner.Add("validate_the_seeds_out_var_call_compiles_and_gives_its_messages", () =>
            {
                var transformer = new EnhancedRequestTransformer();
                var request = TransformerTests.Minimal();
                request.Hyperparameters = new HyperparametersConfiguration { Width = 100 };
                // The seed's own line (PyTorchWorkerService); it did not compile while a second
                // overload took an out List<SdxlFieldError>.
                var isValid = transformer.ValidateRequest(request, out var errors);
                Assert.Equal(false, isValid, "a width of 100 is invalid");
                Assert.SequenceEqual(new[] { "Width must be between 256 and 2048 and divisible by 8" }, errors, "the seed's List<string>");
                IEnhancedRequestTransformer seedInterface = transformer;
                Assert.Equal(true, seedInterface.ValidateRequest(TransformerTests.Minimal(), out var none), "through the seed's interface");
                Assert.Equal(0, none.Count, "no errors");
            });

            runner.AddAsync("validate_refuses_nan_and_infinity_instead_of_defaults_or_clamps", async () =>
            {
                var request = TransformerTests.Minimal();
                request.Scheduler = new SchedulerConfiguration { GuidanceScale = double.NaN };
                request.Hyperparameters = new HyperparametersConfiguration { Strength = double.NegativeInfinity };
                request.Conditioning.LoRAs = new List<LoRAConfiguration>
                {
                    new LoRAConfiguration { ModelPath = "a.safetensors", Weight = double.NaN },
                    new LoRAConfiguration { ModelPath = "b.safetensors", Weight = double.PositiveInfinity },
                };
                request.Conditioning.ControlNets = new List<ControlNetConfiguration> { new ControlNetConfiguration { ModelPath = "cn.safetensors", Weight = double.NaN } };
                request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = double.PositiveInfinity } };
                var transformer = new EnhancedRequestTransformer();
                var errors = transformer.ValidateRequestFields(request);
                Assert.SequenceEqual(new[]
                {
                    "hyperparameters.guidance_scale", "hyperparameters.strength", "lora.models[0].weight", "lora.models[1].weight",
                    "controlnet.conditioning_scale", "output.upscale.factor",
                }, errors.Select(e => e.Field), "fields (" + string.Join("; ", errors) + ")");
                Assert.Equal("Guidance scale NaN must be a finite number", errors[0].Message, "guidance message");
                Assert.Equal("LoRA weight NaN must be between -2.0 and 2.0", errors[2].Message, "LoRA message (was clamped to -2)");

                // The transformer alone writes neither null (the engine's 7.5) nor a clamped -2.
                var guidance = TransformerTests.Minimal();
                guidance.Scheduler = new SchedulerConfiguration { GuidanceScale = double.NaN };
                var ex = Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(guidance, "r"), "Transform with NaN guidance");
                Assert.Contains("finite", ex.Message, "message");
                var lora = TransformerTests.Minimal();
                lora.Conditioning.LoRAs = new List<LoRAConfiguration> { new LoRAConfiguration { ModelPath = "a.safetensors", Weight = double.NaN } };
                Assert.Throws<InvalidOperationException>(() => transformer.TransformEnhancedSDXLRequest(lora, "r"), "Transform with a NaN LoRA weight");

                // The service answers them as the validation errors they are, sending nothing.
                var fake = new FakeGenerator();
                var response = await new SdxlNativeService(fake).SendEnhancedCommandAsync(guidance);
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                Assert.Equal("Request validation failed: Guidance scale NaN must be a finite number", response.Error, "Error");
                Assert.SequenceEqual(new[] { "hyperparameters.guidance_scale" }, response.FieldErrors.Select(e => e.Field), "FieldErrors");
                response = await new SdxlNativeService(fake).SendEnhancedCommandAsync(lora);
                Assert.SequenceEqual(new[] { "lora.models[0].weight" }, response.FieldErrors.Select(e => e.Field), "LoRA FieldErrors");
                Assert.Equal(0, fake.Sent.Count, "requests sent to the engine");
            });

            runner.AddAsync("service_sends_an_unknown_scheduler_name_as_given_for_the_engine_to_refuse", async () =>
            {
                var fake = new FakeGenerator();
                fake.Answer = json => null;
                var request = TransformerTests.Minimal();
                request.Scheduler = new SchedulerConfiguration { Type = "NotAScheduler" };
                await new SdxlNativeService(fake).SendEnhancedCommandAsync(request);
                Assert.Equal(1, fake.Sent.Count, "sent");
                Assert.Equal("NotAScheduler", Json.GetString(Json.GetObject(Json.ParseObject(fake.Sent[0]), "data"), "scheduler"), "scheduler sent (was DPMSolverMultistepScheduler)");
            });

            runner.AddAsync("service_returns_validation_failures_without_calling_the_engine", async () =>
            {
                var fake = new FakeGenerator();
                var service = new SdxlNativeService(fake);
                var response = await service.SendEnhancedCommandAsync(new EnhancedSDXLRequest { Model = new ModelConfiguration { Base = "m" } });
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("Request validation failed: Prompt is required and cannot be empty", response.Error, "Error");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode");
                Assert.Equal(-3, response.ErrorNumber.Value, "ErrorNumber");
                Assert.SequenceEqual(new[] { "prompt" }, response.FieldErrors.Select(e => e.Field), "FieldErrors");
                Assert.Equal(0, fake.Sent.Count, "requests sent to the engine");

                response = await service.SendEnhancedCommandAsync(null);
                Assert.Equal("Request validation failed: Prompt is required and cannot be empty, Base model is required", response.Error, "null request");
            });

            runner.AddAsync("service_reports_processing_failures_as_the_seed_did", async () =>
            {
                var fake = new FakeGenerator();
                fake.Answer = json => { throw new SdxlException(SdxlErrorCode.Device, "sdxl_generate_json failed: device error: CUDA gone"); };
                var service = new SdxlNativeService(fake);
                var response = await service.SendEnhancedCommandAsync(TransformerTests.Minimal());
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("Processing failed: sdxl_generate_json failed: device error: CUDA gone", response.Error, "Error");
                Assert.Equal("DEVICE_ERROR", response.ErrorCode, "ErrorCode");

                fake.Answer = json => "";
                response = await service.SendEnhancedCommandAsync(TransformerTests.Minimal());
                Assert.Equal("Processing failed: Empty response from the native engine", response.Error, "empty response");

                fake.Answer = json => ResponseTests.SuccessJson.Replace("\"r-1\"", "\"" + Json.GetString(Json.ParseObject(json), "request_id") + "\"");
                response = await service.SendEnhancedCommandAsync(TransformerTests.Minimal());
                Assert.True(response.Success, "success passes through: " + response.Error);
                Assert.Equal(Json.GetString(Json.ParseObject(fake.Sent.Last()), "request_id"), response.RequestId, "request id sent and received");
                Assert.Equal("inference_request", Json.GetString(Json.ParseObject(fake.Sent.Last()), "message_type"), "the service sends the envelope");
            });
        }
    }
}
