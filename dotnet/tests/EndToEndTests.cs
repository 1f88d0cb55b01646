// Against the real libsdxl (target/debug/libsdxl.so) with the built-in tiny model on CPU.

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;
using DeviceOperations.Sdxl.Native;

namespace DeviceOperations.Sdxl.Tests
{
    /// <summary>Reports synchronously on the reporting thread (Progress&lt;T&gt; would post to
    /// the thread pool, so a cancel from a handler could arrive after the request ended).</summary>
    internal sealed class InlineProgress : IProgress<SdxlProgress>
    {
        private readonly Action<SdxlProgress> _handler;

        public InlineProgress(Action<SdxlProgress> handler)
        {
            _handler = handler;
        }

        public void Report(SdxlProgress value)
        {
            _handler(value);
        }
    }

    internal static class EndToEndTests
    {
        private static SdxlEngine _engine;
        private static string _outputDir;

        private static SdxlEngineConfig CpuConfig()
        {
            return new SdxlEngineConfig { Device = "cpu", OutputDir = _outputDir, Limits = new SdxlLimits { MinSize = 64 } };
        }

        private static SdxlEngine Engine()
        {
            if (Environment.GetEnvironmentVariable("SDXL_SKIP_E2E") == "1")
            {
                throw new TestSkipped("SDXL_SKIP_E2E=1");
            }
            if (_engine == null)
            {
                _outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                Directory.CreateDirectory(_outputDir);
                _engine = SdxlEngine.Create(CpuConfig());
            }
            return _engine;
        }

        /// <summary>256×256 (the transformer's minimum), 2 steps: quick on CPU.</summary>
        private static EnhancedSDXLRequest TinyRequest(int steps)
        {
            return new EnhancedSDXLRequest
            {
                Conditioning = new ConditioningConfiguration { Prompt = "a red cube on a table", NegativePrompt = "blurry" },
                Model = new ModelConfiguration { Base = "builtin:tiny" },
                Scheduler = new SchedulerConfiguration { Type = "EulerDiscrete", Steps = steps, GuidanceScale = 5.0 },
                Hyperparameters = new HyperparametersConfiguration { Seed = 42, Width = 256, Height = 256 },
                Output = new OutputConfiguration { Format = "PNG", SavePath = "e2e" },
            };
        }

        public static void Cleanup()
        {
            if (_engine != null)
            {
                _engine.Dispose();
                _engine = null;
            }
            if (_outputDir != null && Directory.Exists(_outputDir) && Environment.GetEnvironmentVariable("SDXL_KEEP_OUTPUT") != "1")
            {
                Directory.Delete(_outputDir, true);
            }
        }

        public static void Register(TestRunner runner)
        {
            runner.Add("e2e_native_version_matches_the_header", () =>
            {
                Engine();
                var version = SdxlEngine.NativeVersion;
                Assert.True(!string.IsNullOrEmpty(version), "sdxl_version() is empty");
                var header = Path.Combine(AbiTests.RepoRoot(), "include", "sdxl.h");
                if (File.Exists(header))
                {
                    Assert.Contains("#define SDXL_VERSION_STRING \"" + version + "\"", File.ReadAllText(header), "header version");
                }
            });

            runner.Add("e2e_bad_config_throws_sdxl_exception_with_the_native_code", () =>
            {
                Engine();
                var ex = Assert.Throws<SdxlException>(() => SdxlEngine.Create(new SdxlEngineConfig { Device = "tpu:0" }), "device tpu:0");
                Assert.Equal("VALIDATION_ERROR", ex.CodeName, "code name (" + ex.Message + ")");
                Assert.Contains("tpu:0", ex.Message, "message names the device");
                ex = Assert.Throws<SdxlException>(() => SdxlEngine.Create(new SdxlEngineConfig { Dtype = "float8" }), "dtype float8");
                Assert.Equal(SdxlErrorCode.Validation, ex.Code, "code (" + ex.Message + ")");
            });

            runner.AddAsync("e2e_missing_model_load_throws_model_not_found", async () =>
            {
                var engine = Engine();
                try
                {
                    await engine.LoadModelAsync("/nonexistent/sdxl-model.safetensors");
                }
                catch (SdxlException ex)
                {
                    Assert.Equal("MODEL_NOT_FOUND", ex.CodeName, "code name (" + ex.Message + ")");
                    Assert.Contains("sdxl-model", ex.Message, "message names the model");
                    return;
                }
                throw new TestFailure("LoadModelAsync of a missing file did not throw");
            });

            runner.AddAsync("e2e_generate_writes_a_png_and_reports_progress", async () =>
            {
                var engine = Engine();
                await engine.LoadModelAsync("builtin:tiny");
                var reports = new List<SdxlProgress>();
                var response = await engine.GenerateAsync(TinyRequest(2), new InlineProgress(p => { lock (reports) { reports.Add(p); } }));
                Assert.True(response.Success, "generation failed: " + response.ErrorCode + " " + response.Error);
                Assert.Equal(1, response.Images.Count, "image count");
                var image = response.Images[0];
                Assert.True(File.Exists(image.Path), "no file at " + image.Path);
                var bytes = File.ReadAllBytes(image.Path);
                Assert.SequenceEqual(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, bytes.Take(8), "PNG signature");
                Assert.Equal(256, image.Width, "width");
                Assert.Equal(256, image.Height, "height");
                Assert.Equal(42L, image.Seed, "seed");
                Assert.Equal("png", image.Format, "format");
                Assert.True(Path.GetFullPath(image.Path).StartsWith(Path.GetFullPath(Path.Combine(_outputDir, "e2e"))), "saved under output_dir/save_path: " + image.Path);
                Assert.True(response.Metrics != null && !string.IsNullOrEmpty(response.Metrics.DeviceName), "metrics with a device name");
                Assert.Equal("EulerDiscreteScheduler", response.Metrics.ModelInfo["scheduler"] as string, "scheduler used");
                Assert.True(reports.Count > 0, "no progress reports");
                Assert.True(reports.All(r => r.RequestId == response.RequestId), "progress request ids: " + string.Join(", ", reports.Select(r => r.RequestId).Distinct()) + " vs " + response.RequestId);
                var denoise = reports.Where(r => r.Stage == SdxlStage.Denoise).ToList();
                Assert.True(denoise.Count > 0, "no denoise reports: " + string.Join("; ", reports));
                Assert.Equal(2, denoise.Last().TotalSteps, "total steps");
                Assert.True(reports.Any(r => r.Stage == SdxlStage.Save), "no save report: " + string.Join("; ", reports));
            });

            runner.AddAsync("e2e_cancellation_token_cancels_from_the_first_progress_report", async () =>
            {
                var engine = Engine();
                using (var cts = new CancellationTokenSource())
                {
                    var reports = 0;
                    var progress = new InlineProgress(p =>
                    {
                        if (Interlocked.Increment(ref reports) == 1)
                        {
                            cts.Cancel();
                        }
                    });
                    var response = await engine.GenerateAsync(TinyRequest(6), progress, cts.Token);
                    Assert.Equal(false, response.Success, "Success");
                    Assert.Equal("CANCELLED", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                    Assert.Equal(SdxlErrorCode.Cancelled, response.ErrorNumber.Value, "ErrorNumber");
                    Assert.Equal(1, reports, "reports after cancelling");
                }
                // The engine serves the next request normally.
                var next = await engine.GenerateJsonAsync("{\"message_type\":\"status_request\",\"request_id\":\"s1\"}");
                Assert.Equal(true, Json.GetBool(Json.ParseObject(next), "success", false), "status after a cancel: " + next);

                using (var cancelled = new CancellationTokenSource())
                {
                    cancelled.Cancel();
                    var response = await engine.GenerateAsync(TinyRequest(2), null, cancelled.Token);
                    Assert.Equal("CANCELLED", response.ErrorCode, "already-cancelled token");
                }
            });

            runner.AddAsync("e2e_cancel_from_another_thread_mid_denoise_stops_within_a_step", async () =>
            {
                var engine = Engine();
                using (var cts = new CancellationTokenSource())
                using (var atStep = new ManualResetEventSlim(false))
                {
                    var denoiseSteps = new List<int>();
                    var progress = new InlineProgress(p =>
                    {
                        // The delegate must survive a collection while native code holds it.
                        GC.Collect();
                        GC.WaitForPendingFinalizers();
                        if (p.Stage != SdxlStage.Denoise)
                        {
                            return;
                        }
                        lock (denoiseSteps)
                        {
                            denoiseSteps.Add(p.Step);
                        }
                        if (p.Step >= 1 && !atStep.IsSet)
                        {
                            atStep.Set();
                            // Hold the request here until the other thread has cancelled.
                            cts.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(30));
                        }
                    });
                    var run = engine.GenerateAsync(TinyRequest(8), progress, cts.Token);
                    var canceller = Task.Run(() =>
                    {
                        atStep.Wait(TimeSpan.FromSeconds(60));
                        cts.Cancel();
                    });
                    var response = await run;
                    await canceller;
                    Assert.Equal("CANCELLED", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                    lock (denoiseSteps)
                    {
                        Assert.True(denoiseSteps.Count > 0 && denoiseSteps.Max() <= 2, "denoise steps reported: " + string.Join(",", denoiseSteps));
                    }
                }
            });

            runner.AddAsync("e2e_validation_errors_come_back_as_field_errors", async () =>
            {
                var engine = Engine();
                var request = TinyRequest(0);
                request.Conditioning.Prompt = " ";
                var response = await engine.GenerateAsync(request);
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode");
                Assert.Equal(SdxlErrorCode.Validation, response.ErrorNumber.Value, "ErrorNumber");
                Assert.SequenceEqual(new[] { "prompt", "hyperparameters.num_inference_steps" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");

                request = TinyRequest(2);
                request.Model.Refiner = "sdxl-refiner";
                response = await engine.GenerateAsync(request);
                Assert.SequenceEqual(new[] { "models.refiner" }, response.FieldErrors.Select(f => f.Field), "a refiner is refused as unsupported (" + response.Error + ")");

                var service = new SdxlNativeService(engine);
                request = TinyRequest(2);
                request.Conditioning.Prompt = "";
                response = await service.SendEnhancedCommandAsync(request);
                Assert.Equal("Request validation failed: Prompt is required and cannot be empty", response.Error, "service validation");
                Assert.SequenceEqual(new[] { "prompt" }, response.FieldErrors.Select(f => f.Field), "service FieldErrors");
            });

            runner.AddAsync("e2e_status_reports_the_loaded_model_and_requests_served", async () =>
            {
                var status = await Engine().GetStatusAsync();
                Assert.Contains("builtin:tiny", string.Join(",", status.LoadedModels), "loaded models (" + status.RawJson + ")");
                Assert.True(status.RequestsServed >= 1, "requests served: " + status.RequestsServed);
                Assert.Equal(SdxlEngine.NativeVersion, status.Version, "version");
                Assert.True(!string.IsNullOrEmpty(status.DeviceName), "device name");
            });

            runner.AddAsync("e2e_pool_spreads_requests_over_cpu_engines", async () =>
            {
                Engine();
                using (var pool = SdxlEnginePool.ForCpu(2, CpuConfig()))
                using (var service = new SdxlNativeService(pool))
                {
                    var first = pool.NextEngine();
                    var second = pool.NextEngine();
                    Assert.True(!ReferenceEquals(first, second), "idle engines are used in turn");
                    var tasks = new[] { service.SendEnhancedCommandAsync(TinyRequest(1)), service.SendEnhancedCommandAsync(TinyRequest(1)) };
                    var responses = await Task.WhenAll(tasks);
                    foreach (var response in responses)
                    {
                        Assert.True(response.Success, "pool request failed: " + response.Error);
                    }
                    var statuses = await pool.GetStatusAsync();
                    Assert.SequenceEqual(new[] { 1L, 1L }, statuses.Select(s => s.RequestsServed), "requests served per engine");
                }
            });

            runner.AddAsync("e2e_log_handler_receives_the_library_log_lines", async () =>
            {
                Engine();
                var lines = new List<string>();
                SdxlLog.SetHandler((level, target, message) => { lock (lines) { lines.Add(level + " " + target + ": " + message); } }, SdxlLogLevel.Debug);
                try
                {
                    using (var engine = SdxlEngine.Create(CpuConfig()))
                    {
                        await engine.LoadModelAsync("builtin:tiny");
                    }
                }
                finally
                {
                    SdxlLog.SetHandler(null);
                }
                lock (lines)
                {
                    Assert.True(lines.Any(l => l.Contains("loading model")), "log lines: " + string.Join(" | ", lines));
                }
            });

            runner.AddAsync("e2e_disposed_engine_refuses_calls", async () =>
            {
                var engine = SdxlEngine.Create(CpuConfig());
                engine.Dispose();
                engine.Dispose();
                try
                {
                    await engine.GenerateJsonAsync("{}");
                }
                catch (ObjectDisposedException)
                {
                    return;
                }
                throw new TestFailure("a disposed engine accepted a request");
            });
        }
    }
}
