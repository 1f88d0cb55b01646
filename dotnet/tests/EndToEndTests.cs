// Against the real libsdxl (target/debug/libsdxl.so) with the built-in tiny model on CPU.

using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.CompilerServices;
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

        /// <summary>(width, height) from a PNG's IHDR chunk.</summary>
        private static KeyValuePair<int, int> PngSize(string path)
        {
            return PngSize(File.ReadAllBytes(path), path);
        }

        /// <summary>(width, height) from the IHDR chunk of an encoded PNG, after checking the
        /// signature and that IHDR is the first chunk.</summary>
        private static KeyValuePair<int, int> PngSize(byte[] bytes, string what)
        {
            Assert.True(bytes.Length >= 24, "PNG too short (" + bytes.Length + " bytes): " + what);
            Assert.SequenceEqual(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, bytes.Take(8), "PNG signature of " + what);
            Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4), "first chunk of " + what);
            return new KeyValuePair<int, int>(BigEndian(bytes, 16), BigEndian(bytes, 20));
        }

        private static int BigEndian(byte[] bytes, int offset)
        {
            return (bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3];
        }

        /// <summary>Keywords of a PNG's tEXt / zTXt / iTXt chunks, in file order.</summary>
        private static List<string> PngTextKeys(byte[] bytes)
        {
            var keys = new List<string>();
            var offset = 8;
            while (offset + 8 <= bytes.Length)
            {
                var length = BigEndian(bytes, offset);
                var type = System.Text.Encoding.ASCII.GetString(bytes, offset + 4, 4);
                var body = offset + 8;
                if (length < 0 || body + length > bytes.Length)
                {
                    break;
                }
                if (type == "tEXt" || type == "zTXt" || type == "iTXt")
                {
                    var end = Array.IndexOf(bytes, (byte)0, body, length);
                    keys.Add(System.Text.Encoding.ASCII.GetString(bytes, body, (end < 0 ? body + length : end) - body));
                }
                offset = body + length + 4;
            }
            return keys;
        }

        /// <summary>Awaits a task that must end cancelled; returns its exception.</summary>
        private static async Task<OperationCanceledException> ThrowsCanceledAsync(Task task, string what)
        {
            try
            {
                await task;
            }
            catch (OperationCanceledException ex)
            {
                return ex;
            }
            catch (Exception ex)
            {
                throw new TestFailure(what + ": expected OperationCanceledException, got " + ex.GetType().Name + ": " + ex.Message);
            }
            throw new TestFailure(what + ": expected OperationCanceledException, the task completed");
        }

        /// <summary>Engines nobody disposes: one that ran a request with a progress callback,
        /// the rest bare. Not inlined, so no reference stays in the caller's frame.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void CreateAndAbandonEngines(int count)
        {
            for (var i = 0; i < count; i++)
            {
                var engine = SdxlEngine.Create(CpuConfig());
                if (i == 0)
                {
                    var response = engine.GenerateAsync(TinyRequest(1), new InlineProgress(p => { })).GetAwaiter().GetResult();
                    Assert.True(response.Success, "abandoned engine's request: " + response.Error);
                }
            }
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

            runner.Add("e2e_memory_budget_and_offload_config_is_accepted_by_the_library", () =>
            {
                var config = CpuConfig();
                config.MaxMemoryGb = 4.0;
                config.CpuOffload = true;
                using (var engine = SdxlEngine.Create(config))
                {
                    var status = engine.GetStatusAsync().GetAwaiter().GetResult();
                    Assert.Contains("\"budget_bytes\":4294967296", status.RawJson, "status reports the budget");
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
                var keys = PngTextKeys(bytes);
                Assert.True(keys.Contains("parameters") && keys.Contains("sdxl_request"), "PNG text chunks of the file: [" + string.Join(", ", keys) + "]");
                Assert.True(image.Data == null, "Data without ReturnImages");
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

            runner.AddAsync("e2e_return_images_gives_png_bytes_of_the_requested_size_and_writes_no_file", async () =>
            {
                var engine = Engine();
                await engine.LoadModelAsync("builtin:tiny");
                var request = TinyRequest(2);
                request.Hyperparameters.Width = 320;
                request.Hyperparameters.Height = 256;
                var saveDir = "e2e-return-images";
                request.Output.SavePath = saveDir;
                request.Output.ReturnImages = true;
                var response = await engine.GenerateAsync(request);
                Assert.True(response.Success, "generation failed: " + response.ErrorCode + " " + response.Error);
                Assert.Equal(1, response.Images.Count, "image count");
                var image = response.Images[0];
                Assert.Equal(null, image.Path, "Path with ReturnImages");
                Assert.True(image.Data != null && image.Data.Length > 0, "no Data with ReturnImages");
                var size = PngSize(image.Data, "the returned image");
                Assert.Equal(320, size.Key, "IHDR width");
                Assert.Equal(256, size.Value, "IHDR height");
                Assert.Equal(320, image.Width, "Width");
                Assert.Equal(256, image.Height, "Height");
                Assert.Equal(42L, image.Seed, "Seed");
                Assert.Equal("png", image.Format, "Format");
                var keys = PngTextKeys(image.Data);
                Assert.True(keys.Contains("parameters") && keys.Contains("sdxl_request"), "PNG text chunks: [" + string.Join(", ", keys) + "]");
                Assert.True(!Directory.Exists(Path.Combine(_outputDir, saveDir)), "the save_path folder was created: " + Path.Combine(_outputDir, saveDir));
                var written = Directory.GetFiles(_outputDir, "*", SearchOption.AllDirectories)
                    .Where(f => Path.GetFileName(f).StartsWith(response.RequestId, StringComparison.Ordinal)).ToList();
                Assert.True(written.Count == 0, "files written for " + response.RequestId + ": " + string.Join(", ", written));
            });

            runner.AddAsync("e2e_cancelling_mid_run_throws_operation_canceled_and_the_engine_still_generates", async () =>
            {
                var engine = Engine();
                await engine.LoadModelAsync("builtin:tiny");
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
                    var run = engine.GenerateAsync(TinyRequest(6), progress, cts.Token);
                    var ex = await ThrowsCanceledAsync(run, "cancelled at the first progress report");
                    Assert.Equal(cts.Token, ex.CancellationToken, "the exception carries the caller's token");
                    var inner = ex.InnerException as SdxlException;
                    Assert.True(inner != null, "inner exception: " + ex.InnerException);
                    Assert.Equal(SdxlErrorCode.Cancelled, inner.Code, "inner code (" + inner.Message + ")");
                    Assert.Equal("CANCELLED", inner.CodeName, "inner code name");
                    Assert.Equal(TaskStatus.Canceled, run.Status, "task status");
                    Assert.Equal(1, reports, "reports after cancelling");
                    Assert.Equal(0, engine.PendingRequests, "pending after the cancel");
                }
                // The engine serves the next request normally.
                var next = await engine.GenerateAsync(TinyRequest(2));
                Assert.True(next.Success, "generation after a cancel: " + next.ErrorCode + " " + next.Error);
                Assert.True(File.Exists(next.Images[0].Path), "image after a cancel");

                using (var cancelled = new CancellationTokenSource())
                {
                    cancelled.Cancel();
                    var before = (await engine.GetStatusAsync()).RequestsServed;
                    var run = engine.GenerateAsync(TinyRequest(2), null, cancelled.Token);
                    var ex = await ThrowsCanceledAsync(run, "an already-cancelled token");
                    Assert.True(ex.InnerException == null, "nothing reached the engine, so no native error: " + ex.InnerException);
                    Assert.Equal(before, (await engine.GetStatusAsync()).RequestsServed, "an already-cancelled request is not submitted");
                    await ThrowsCanceledAsync(engine.GenerateJsonAsync("{\"message_type\":\"status_request\"}", cancelled.Token), "GenerateJsonAsync with a cancelled token");
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
                    var ex = await ThrowsCanceledAsync(run, "cancelled from another thread");
                    await canceller;
                    Assert.Equal(SdxlErrorCode.Cancelled, ((SdxlException)ex.InnerException).Code, "inner code");
                    lock (denoiseSteps)
                    {
                        Assert.True(denoiseSteps.Count > 0 && denoiseSteps.Max() <= 2, "denoise steps reported: " + string.Join(",", denoiseSteps));
                    }
                }
            });

            runner.AddAsync("e2e_service_reports_cancellation_as_a_cancelled_response_without_throwing", async () =>
            {
                var engine = Engine();
                var service = new SdxlNativeService(engine);
                using (var cts = new CancellationTokenSource())
                {
                    var progress = new InlineProgress(p =>
                    {
                        if (p.Stage == SdxlStage.Denoise)
                        {
                            cts.Cancel();
                        }
                    });
                    var response = await service.SendEnhancedCommandAsync(TinyRequest(4), progress, cts.Token);
                    Assert.Equal(false, response.Success, "Success");
                    Assert.Equal("CANCELLED", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                    Assert.Equal(SdxlErrorCode.Cancelled, response.ErrorNumber.Value, "ErrorNumber");
                    Assert.Equal("Processing failed: cancelled", response.Error, "Error");
                    response = await service.SendEnhancedCommandAsync(TinyRequest(4), null, cts.Token);
                    Assert.Equal("CANCELLED", response.ErrorCode, "ErrorCode for an already-cancelled token (" + response.Error + ")");
                }
                var next = await service.SendEnhancedCommandAsync(TinyRequest(1));
                Assert.True(next.Success, "the service's next request: " + next.Error);
            });

            runner.AddAsync("e2e_progress_reports_arrive_in_pipeline_order", async () =>
            {
                var engine = Engine();
                var reports = new List<SdxlProgress>();
                var request = TinyRequest(3);
                request.Hyperparameters.BatchSize = 2;
                var response = await engine.GenerateAsync(request, new InlineProgress(p => { lock (reports) { reports.Add(p); } }));
                Assert.True(response.Success, "generation failed: " + response.Error);
                Assert.Equal(2, response.Images.Count, "images");
                Func<SdxlProgress, string> show = p => p.Stage.ToString().ToLowerInvariant() + "#" + p.ImageIndex + ":" + p.Step;
                // src/pipeline/generate.rs: encode, a report before each of the 3 steps and one
                // after the last, one decode per image, then src/engine: one save per image.
                var expected = new[] { "encode#0:0", "denoise#0:0", "denoise#0:1", "denoise#0:2", "denoise#0:3", "decode#0:3", "decode#1:3", "save#0:3", "save#1:3" };
                lock (reports)
                {
                    Assert.SequenceEqual(expected, reports.Select(show), "stage#image:step sequence");
                    Assert.True(reports.All(r => r.TotalSteps == 3), "total steps: " + string.Join(",", reports.Select(r => r.TotalSteps)));
                    for (var i = 1; i < reports.Count; i++)
                    {
                        Assert.True(reports[i].Elapsed >= reports[i - 1].Elapsed, "elapsed went back at report " + i + ": " + reports[i - 1].Elapsed + " then " + reports[i].Elapsed);
                        Assert.True(reports[i].ModelCalls >= reports[i - 1].ModelCalls, "model calls went back at report " + i);
                    }
                    Assert.Equal(3, reports.Last().ModelCalls, "UNet calls (Euler: one per step)");
                }
            });

            runner.AddAsync("e2e_four_threads_by_five_requests_on_one_engine_all_succeed_with_their_seeds", async () =>
            {
                var engine = Engine();
                await engine.LoadModelAsync("builtin:tiny");
                var servedBefore = (await engine.GetStatusAsync()).RequestsServed;
                const int threads = 4, perThread = 5;
                var results = new List<KeyValuePair<long, EnhancedSDXLResponse>>();
                var errors = new List<Exception>();
                var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
                {
                    try
                    {
                        for (var i = 0; i < perThread; i++)
                        {
                            long seed = 1000 + 10 * t + i;
                            var request = TinyRequest(1);
                            request.Hyperparameters.Seed = seed;
                            request.Scheduler.GuidanceScale = 1.0;
                            var response = engine.GenerateAsync(request).GetAwaiter().GetResult();
                            lock (results)
                            {
                                results.Add(new KeyValuePair<long, EnhancedSDXLResponse>(seed, response));
                            }
                        }
                    }
                    catch (Exception ex)
                    {
                        lock (errors)
                        {
                            errors.Add(ex);
                        }
                    }
                })).ToList();
                workers.ForEach(w => w.Start());
                foreach (var worker in workers)
                {
                    Assert.True(worker.Join(TimeSpan.FromMinutes(10)), "a worker thread did not finish in 10 minutes");
                }
                Assert.True(errors.Count == 0, "exceptions: " + string.Join(" | ", errors.Select(e => e.GetType().Name + ": " + e.Message)));
                Assert.Equal(threads * perThread, results.Count, "responses");
                var failed = results.Where(r => !r.Value.Success).Select(r => r.Key + ": " + r.Value.ErrorCode + " " + r.Value.Error).ToList();
                Assert.True(failed.Count == 0, "failed requests: " + string.Join("; ", failed));
                var wrongSeeds = results.Where(r => r.Value.Images.Count != 1 || r.Value.Images[0].Seed != r.Key)
                    .Select(r => "asked " + r.Key + ", got [" + string.Join(",", r.Value.Images.Select(i => i.Seed)) + "]").ToList();
                Assert.True(wrongSeeds.Count == 0, "seeds: " + string.Join("; ", wrongSeeds));
                Assert.SequenceEqual(Enumerable.Range(0, threads).SelectMany(t => Enumerable.Range(0, perThread).Select(i => 1000L + 10 * t + i)).OrderBy(x => x),
                    results.Select(r => r.Value.Images[0].Seed).OrderBy(x => x), "every seed reported once");
                Assert.Equal(threads * perThread, results.Select(r => r.Value.Images[0].Path).Distinct().Count(), "distinct image files");
                Assert.Equal(threads * perThread, results.Select(r => r.Value.RequestId).Distinct().Count(), "distinct request ids");
                Assert.True(results.All(r => File.Exists(r.Value.Images[0].Path)), "every image file exists");
                Assert.Equal(servedBefore + threads * perThread, (await engine.GetStatusAsync()).RequestsServed, "requests served");
                Assert.Equal(0, engine.PendingRequests, "pending requests afterwards");
            });

            runner.AddAsync("e2e_validation_errors_come_back_as_field_errors", async () =>
            {
                var engine = Engine();
                // The engine's own checks (limits of this engine), past the seed's.
                var request = TinyRequest(0);
                var response = await engine.GenerateAsync(request);
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode");
                Assert.Equal(SdxlErrorCode.Validation, response.ErrorNumber.Value, "ErrorNumber");
                Assert.SequenceEqual(new[] { "hyperparameters.num_inference_steps" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");

                // The seed's checks come first, as in the service.
                request.Conditioning.Prompt = " ";
                response = await engine.GenerateAsync(request);
                Assert.Equal("Request validation failed: Prompt is required and cannot be empty", response.Error, "GenerateAsync validation");
                Assert.SequenceEqual(new[] { "prompt" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");

                request = TinyRequest(2);
                request.Model.Refiner = "sdxl-refiner-that-does-not-exist";
                response = await engine.GenerateAsync(request);
                Assert.SequenceEqual(new[] { "models.refiner" }, response.FieldErrors.Select(f => f.Field), "a refiner that does not exist (" + response.Error + ")");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "a missing refiner is a validation error");
                request.Model.Refiner = "builtin:tiny";
                response = await engine.GenerateAsync(request);
                Assert.Equal("MODEL_LOAD_ERROR", response.ErrorCode, "a base model named as the refiner (" + response.Error + ")");
                Assert.Contains("not a refiner", response.Error, "the message says why");

                var service = new SdxlNativeService(engine);
                request = TinyRequest(2);
                request.Conditioning.Prompt = "";
                response = await service.SendEnhancedCommandAsync(request);
                Assert.Equal("Request validation failed: Prompt is required and cannot be empty", response.Error, "service validation");
                Assert.SequenceEqual(new[] { "prompt" }, response.FieldErrors.Select(f => f.Field), "service FieldErrors");
            });

            runner.AddAsync("e2e_tiny_refiner_finishes_the_builtin_base_in_ensemble_and_reports_refine_progress", async () =>
            {
                var engine = Engine();
                var refinerPath = Path.Combine(Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures"), "tiny-sdxl-refiner");
                Assert.True(Directory.Exists(refinerPath), "refiner fixture missing: " + refinerPath);
                var request = TinyRequest(4);
                request.Model.Refiner = refinerPath;
                // 0.5: the base runs the first half of the schedule whatever its timestep spacing,
                // so both models get steps.
                request.Refiner = new RefinerConfiguration { Mode = RefinerMode.Ensemble, DenoisingStart = 0.5 };
                var reports = new List<SdxlProgress>();
                var response = await engine.GenerateAsync(request, new InlineProgress(p => { lock (reports) { reports.Add(p); } }));
                Assert.True(response.Success, "generation with the refiner failed: " + response.ErrorCode + " " + response.Error);
                Assert.Equal(1, response.Images.Count, "image count");
                Assert.True(File.Exists(response.Images[0].Path), "no file at " + response.Images[0].Path);
                Assert.Equal(256, response.Images[0].Width, "width");
                var metrics = response.Metrics;
                Assert.Equal(refinerPath, metrics.RefinerModel, "RefinerModel");
                Assert.Equal(refinerPath, metrics.ModelInfo["refiner_model"] as string, "model_info.refiner_model");
                Assert.Equal("ensemble", metrics.RefinerMode, "RefinerMode");
                Assert.True(!string.IsNullOrEmpty(metrics.RefinerDescription), "RefinerDescription is empty");
                Assert.True(metrics.RefinerSteps > 0 && metrics.RefinerSteps < 4, "RefinerSteps " + metrics.RefinerSteps + " (of 4, handing over at 0.5)");
                Assert.True(metrics.StageTimes != null && metrics.StageTimes.Refine > 0.0, "StageTimes.Refine " + (metrics.StageTimes == null ? "missing" : metrics.StageTimes.Refine.ToString("R")));
                Assert.True(!string.IsNullOrEmpty(metrics.VaeDtype), "VaeDtype is empty");

                List<SdxlProgress> refine;
                lock (reports)
                {
                    refine = reports.Where(r => r.Stage == SdxlStage.Refine).ToList();
                    Assert.True(refine.Count > 0, "no Refine progress report: " + string.Join("; ", reports));
                    var lastDenoise = reports.FindLastIndex(r => r.Stage == SdxlStage.Denoise);
                    var firstRefine = reports.FindIndex(r => r.Stage == SdxlStage.Refine);
                    var firstDecode = reports.FindIndex(r => r.Stage == SdxlStage.Decode);
                    Assert.True(lastDenoise < firstRefine && (firstDecode < 0 || firstRefine < firstDecode),
                        "Refine between Denoise and Decode: " + string.Join("; ", reports));
                }
                Assert.Equal(0, refine[0].Step, "the refiner's step counter restarts at 0");
                Assert.Equal(metrics.RefinerSteps, refine.Last().TotalSteps, "Refine TotalSteps is the refiner's own step count");
                Assert.Equal(metrics.RefinerSteps, refine.Last().Step, "the last Refine report is after the refiner's last step");
                Assert.True(refine.All(r => r.RequestId == response.RequestId), "Refine reports carry the request id");
            });

            runner.AddAsync("e2e_tiny_canny_controlnet_guides_the_builtin_base_and_is_reported_in_model_info", async () =>
            {
                var engine = Engine();
                var fixtures = Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures");
                var controlnetPath = Path.Combine(fixtures, "tiny-controlnet-canny");
                var controlImage = Path.Combine(Path.Combine(fixtures, "reference"), "control_canny_128.png");
                Assert.True(Directory.Exists(controlnetPath), "ControlNet fixture missing: " + controlnetPath);
                Assert.True(File.Exists(controlImage), "control image fixture missing: " + controlImage);
                var request = TinyRequest(2);
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = controlnetPath, Weight = 0.7, ConditioningImage = controlImage },
                };
                var response = await engine.GenerateAsync(request);
                Assert.True(response.Success, "generation with the ControlNet failed: " + response.ErrorCode + " " + response.Error
                    + " [" + string.Join("; ", response.FieldErrors) + "]");
                Assert.Equal(1, response.Images.Count, "image count");
                Assert.True(File.Exists(response.Images[0].Path), "no file at " + response.Images[0].Path);
                Assert.Equal(256, response.Images[0].Width, "width");
                Assert.True(response.Warnings.Any(w => w.Contains("controlnet.control_image") && w.Contains("resized")),
                    "a warning says the 128² control image was resized: " + string.Join("; ", response.Warnings));
                var controlnets = response.Metrics.ControlNets;
                Assert.Equal(1, controlnets.Count, "model_info.controlnets entries");
                Assert.Equal("canny", controlnets[0].Type, "Type (inferred from the folder name)");
                Assert.Equal(controlnetPath, controlnets[0].Model, "Model");
                Assert.Equal(0.7, controlnets[0].ConditioningScale, "ConditioningScale");
                Assert.Equal(0.0, controlnets[0].GuidanceStart, "GuidanceStart (default)");
                Assert.Equal(1.0, controlnets[0].GuidanceEnd, "GuidanceEnd (default)");
                Assert.True(controlnets[0].Canny != null, "Canny: the seed's preprocessor ran");
                Assert.Equal((int?)512, controlnets[0].Canny.Resolution, "Canny.Resolution (the seed's 512)");
            });

            runner.AddAsync("e2e_a_depth_controlnet_runs_with_the_preprocessor_off_by_default_and_an_enabled_one_is_unsupported", async () =>
            {
                var engine = Engine();
                var fixtures = Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures");
                var controlnetPath = Path.Combine(fixtures, "tiny-controlnet-depth");
                var depthImage = Path.Combine(Path.Combine(fixtures, "reference"), "control_depth_128.png");
                Assert.True(Directory.Exists(controlnetPath), "ControlNet fixture missing: " + controlnetPath);
                var request = TinyRequest(2);
                var controlnet = new ControlNetConfiguration { ModelPath = controlnetPath, Weight = 1.2, ConditioningImage = depthImage };
                request.Conditioning.ControlNets = new List<ControlNetConfiguration> { controlnet };
                var response = await engine.GenerateAsync(request);
                Assert.True(response.Success, "depth ControlNet with the default preprocessor failed: " + response.ErrorCode + " " + response.Error);
                Assert.Equal(1, response.Metrics.ControlNets.Count, "model_info.controlnets entries");
                Assert.Equal("depth", response.Metrics.ControlNets[0].Type, "Type (inferred from the folder name)");
                Assert.Equal(1.2, response.Metrics.ControlNets[0].ConditioningScale, "ConditioningScale");
                Assert.True(response.Metrics.ControlNets[0].Canny == null, "no preprocessor ran on the depth map");

                controlnet.Preprocessor = new ControlNetPreprocessorConfiguration { Enabled = true };
                response = await engine.GenerateAsync(request);
                Assert.Equal(false, response.Success, "Success with a depth preprocessor");
                Assert.Equal("UNSUPPORTED", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                Assert.SequenceEqual(new[] { "controlnet.preprocessor" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");
            });

            runner.AddAsync("e2e_canny_and_depth_controlnets_together_are_sent_as_an_array_and_reported_in_order", async () =>
            {
                var engine = Engine();
                var fixtures = Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures");
                var reference = Path.Combine(fixtures, "reference");
                var request = TinyRequest(2);
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = Path.Combine(fixtures, "tiny-controlnet-canny"), Weight = 0.5, ConditioningImage = Path.Combine(reference, "control_canny_128.png"), GuidanceEnd = 0.5 },
                    new ControlNetConfiguration { ModelPath = Path.Combine(fixtures, "tiny-controlnet-depth"), Weight = 0.8, ConditioningImage = Path.Combine(reference, "control_depth_128.png") },
                };
                var response = await engine.GenerateAsync(request);
                Assert.True(response.Success, "two ControlNets failed: " + response.ErrorCode + " " + response.Error + " [" + string.Join("; ", response.FieldErrors) + "]");
                var controlnets = response.Metrics.ControlNets;
                Assert.SequenceEqual(new[] { "canny", "depth" }, controlnets.Select(c => c.Type), "types in request order");
                Assert.SequenceEqual(new[] { 0.5, 0.8 }, controlnets.Select(c => c.ConditioningScale), "scales in request order");
                Assert.SequenceEqual(new[] { 0.5, 1.0 }, controlnets.Select(c => c.GuidanceEnd), "guidance ends");
                Assert.True(response.Warnings.Any(w => w.Contains("controlnet[1].control_image")), "warnings name the array entry: " + string.Join("; ", response.Warnings));
            });

            runner.AddAsync("e2e_a_control_image_that_does_not_exist_is_a_validation_error_on_controlnet_control_image", async () =>
            {
                var engine = Engine();
                var controlnetPath = Path.Combine(Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures"), "tiny-controlnet-canny");
                var request = TinyRequest(2);
                request.Conditioning.ControlNets = new List<ControlNetConfiguration>
                {
                    new ControlNetConfiguration { ModelPath = controlnetPath, ConditioningImage = Path.Combine(_outputDir, "no-such-control-image.png") },
                };
                var response = await engine.GenerateAsync(request);
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                Assert.SequenceEqual(new[] { "controlnet.control_image" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");
            });

            runner.AddAsync("e2e_lanczos_upscale_quadruples_the_image_and_reports_its_time_and_progress", async () =>
            {
                var engine = Engine();
                var request = TinyRequest(2);
                request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 4, Model = "Lanczos" } };
                var width = request.Hyperparameters.Width.Value;
                var height = request.Hyperparameters.Height.Value;
                var reports = new List<SdxlProgress>();
                var response = await engine.GenerateAsync(request, new InlineProgress(p => { lock (reports) { reports.Add(p); } }));
                Assert.True(response.Success, "Lanczos upscale failed: " + response.ErrorCode + " " + response.Error + " [" + string.Join("; ", response.FieldErrors) + "]");
                Assert.Equal(1, response.Images.Count, "image count");
                var image = response.Images[0];
                Assert.Equal(4 * width, image.Width, "width (4 × the request's)");
                Assert.Equal(4 * height, image.Height, "height (4 × the request's)");
                Assert.True(File.Exists(image.Path), "no file at " + image.Path);
                var size = PngSize(image.Path);
                Assert.Equal(4 * width, size.Key, "PNG width");
                Assert.Equal(4 * height, size.Value, "PNG height");
                var metrics = response.Metrics;
                Assert.True(metrics.StageTimes != null && metrics.StageTimes.Upscale > 0.0, "StageTimes.Upscale " + (metrics.StageTimes == null ? "missing" : metrics.StageTimes.Upscale.ToString("R")));
                Assert.True(metrics.Upscale != null, "model_info.upscale missing");
                Assert.Equal("lanczos", metrics.Upscale.Method, "Upscale.Method");
                Assert.Equal(4, metrics.Upscale.Factor, "Upscale.Factor");
                Assert.Equal(null, metrics.Upscale.Model, "Upscale.Model");
                lock (reports)
                {
                    var upscale = reports.Where(r => r.Stage == SdxlStage.Upscale).ToList();
                    Assert.Equal(1, upscale.Count, "Upscale reports (one per image): " + string.Join("; ", reports));
                    Assert.Equal(0, upscale[0].Step, "Upscale Step (the image's index)");
                    Assert.Equal(1, upscale[0].TotalSteps, "Upscale TotalSteps (the image count)");
                    Assert.Equal(response.RequestId, upscale[0].RequestId, "Upscale report's request id");
                    var lastDecode = reports.FindLastIndex(r => r.Stage == SdxlStage.Decode);
                    var firstUpscale = reports.FindIndex(r => r.Stage == SdxlStage.Upscale);
                    var firstSave = reports.FindIndex(r => r.Stage == SdxlStage.Save);
                    Assert.True(lastDecode < firstUpscale && (firstSave < 0 || firstUpscale < firstSave), "Upscale between Decode and Save: " + string.Join("; ", reports));
                }
            });

            runner.AddAsync("e2e_realesrgan_upscale_with_a_model_path_doubles_the_image", async () =>
            {
                var engine = Engine();
                var modelPath = Path.Combine(Path.Combine(Path.Combine(Path.Combine(AbiTests.RepoRoot(), "tests"), "fixtures"), "esrgan"), "tiny_x2plus.pth");
                Assert.True(File.Exists(modelPath), "Real-ESRGAN fixture missing: " + modelPath);
                var request = TinyRequest(2);
                request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 2, Model = modelPath } };
                var response = await engine.GenerateAsync(request);
                Assert.True(response.Success, "Real-ESRGAN upscale failed: " + response.ErrorCode + " " + response.Error + " [" + string.Join("; ", response.FieldErrors) + "]");
                var image = response.Images[0];
                Assert.Equal(2 * request.Hyperparameters.Width.Value, image.Width, "width (2 × the request's)");
                Assert.Equal(2 * request.Hyperparameters.Height.Value, image.Height, "height (2 × the request's)");
                var size = PngSize(image.Path);
                Assert.Equal(image.Width, size.Key, "PNG width");
                Assert.Equal(image.Height, size.Value, "PNG height");
                var metrics = response.Metrics;
                Assert.Equal("realesrgan", metrics.Upscale.Method, "Upscale.Method");
                Assert.Equal(2, metrics.Upscale.Factor, "Upscale.Factor");
                Assert.Equal(modelPath, metrics.Upscale.Model, "Upscale.Model");
                Assert.Equal(512, metrics.Upscale.Tile, "Upscale.Tile (the engine's default)");
                Assert.Equal(16, metrics.Upscale.TilePad, "Upscale.TilePad (the engine's default)");
                Assert.True(metrics.StageTimes.Upscale > 0.0, "StageTimes.Upscale " + metrics.StageTimes.Upscale.ToString("R"));
                var status = await engine.GetStatusAsync();
                Assert.True(status.LoadedUpscalers.Contains(modelPath), "LoadedUpscalers " + Assert.Show(status.LoadedUpscalers) + " holds " + modelPath);
            });

            runner.AddAsync("e2e_a_missing_upscaler_model_is_a_validation_error_on_output_upscale_model", async () =>
            {
                var engine = Engine();
                var missing = Path.Combine(_outputDir, "no-such-upscaler.pth");
                var request = TinyRequest(2);
                request.PostProcessing = new List<PostProcessingStep> { new PostProcessingStep { Type = "Upscale", Factor = 4, Model = missing } };
                var response = await engine.GenerateAsync(request);
                Assert.Equal(false, response.Success, "Success");
                Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "ErrorCode (" + response.Error + ")");
                Assert.SequenceEqual(new[] { "output.upscale.model" }, response.FieldErrors.Select(f => f.Field), "fields (" + response.Error + ")");
                Assert.Contains(missing, response.FieldErrors[0].Message, "the message lists the path tried");
            });

            runner.AddAsync("e2e_generate_and_the_service_validate_alike_and_never_replace_a_scheduler", async () =>
            {
                var engine = Engine();
                var service = new SdxlNativeService(engine);
                var servedBefore = (await engine.GetStatusAsync()).RequestsServed;
                var invalid = new List<KeyValuePair<string, EnhancedSDXLRequest>>();
                var width = TinyRequest(1);
                width.Hyperparameters.Width = 100;
                invalid.Add(new KeyValuePair<string, EnhancedSDXLRequest>("dimensions.width", width));
                var guidance = TinyRequest(1);
                guidance.Scheduler.GuidanceScale = double.NaN;
                invalid.Add(new KeyValuePair<string, EnhancedSDXLRequest>("hyperparameters.guidance_scale", guidance));
                var lora = TinyRequest(1);
                lora.Conditioning.LoRAs = new List<LoRAConfiguration> { new LoRAConfiguration { ModelPath = "x.safetensors", Weight = double.NaN } };
                invalid.Add(new KeyValuePair<string, EnhancedSDXLRequest>("lora.models[0].weight", lora));
                foreach (var pair in invalid)
                {
                    // GenerateAsync used to clamp a width of 100 to 256 and send NaN as null (7.5).
                    var direct = await engine.GenerateAsync(pair.Value);
                    var viaService = await service.SendEnhancedCommandAsync(pair.Value);
                    foreach (var response in new[] { direct, viaService })
                    {
                        Assert.Equal(false, response.Success, pair.Key + ": Success (" + response.Error + ")");
                        Assert.Equal("VALIDATION_ERROR", response.ErrorCode, pair.Key + ": ErrorCode");
                        Assert.SequenceEqual(new[] { pair.Key }, response.FieldErrors.Select(f => f.Field), pair.Key + ": fields");
                    }
                    Assert.Equal(viaService.Error, direct.Error, pair.Key + ": the same message both ways");
                }
                Assert.Equal(servedBefore, (await engine.GetStatusAsync()).RequestsServed, "invalid requests never reach the engine");

                // A scheduler name outside the seed's table goes to the engine as given: refused
                // with its field, or honoured when the engine knows it; never DPMSolverMultistep.
                var unknown = TinyRequest(1);
                unknown.Scheduler.Type = "NotAScheduler";
                foreach (var response in new[] { await engine.GenerateAsync(unknown), await service.SendEnhancedCommandAsync(unknown) })
                {
                    Assert.Equal("VALIDATION_ERROR", response.ErrorCode, "unknown scheduler (" + response.Error + ")");
                    Assert.SequenceEqual(new[] { "scheduler" }, response.FieldErrors.Select(f => f.Field), "unknown scheduler fields");
                    Assert.Contains("NotAScheduler", response.Error, "the message names it");
                }
                var alias = TinyRequest(1);
                alias.Scheduler.Type = "euler a";
                var aliased = await engine.GenerateAsync(alias);
                Assert.True(aliased.Success, "an alias the engine knows: " + aliased.Error);
                Assert.Equal("EulerAncestralDiscreteScheduler", aliased.Metrics.ModelInfo["scheduler"] as string, "scheduler used for 'euler a'");
            });

            runner.AddAsync("e2e_cpu_offload_engine_generates_with_the_model_it_loaded_without_a_reload", async () =>
            {
                Engine();
                var config = CpuConfig();
                config.CpuOffload = true;
                var lines = new List<string>();
                SdxlLog.SetHandler((level, target, message) => { lock (lines) { lines.Add(message); } }, SdxlLogLevel.Info);
                string statusJson;
                EnhancedSDXLResponse response;
                try
                {
                    using (var engine = SdxlEngine.Create(config))
                    {
                        await engine.LoadModelAsync("builtin:tiny");
                        // No Precision: the request must not override the engine's cpu_offload.
                        response = await engine.GenerateAsync(TinyRequest(1));
                        statusJson = (await engine.GetStatusAsync()).RawJson;
                    }
                }
                finally
                {
                    SdxlLog.SetHandler(null);
                }
                Assert.True(response.Success, "generation: " + response.Error);
                Assert.Equal((object)true, response.Metrics.ModelInfo["cpu_offload"], "the request ran on the offloaded model");
                var models = Json.GetArray(Json.ParseObject(statusJson), "loaded_models");
                Assert.Equal(1, models.Count, "loaded models (" + statusJson + ")");
                Assert.Equal(true, Json.GetBool((Dictionary<string, object>)models[0], "cpu_offload", false), "the resident model keeps cpu_offload (" + statusJson + ")");
                lock (lines)
                {
                    var loads = lines.Where(l => l.Contains("loading model") || l.Contains("reloading")).ToList();
                    Assert.Equal(1, loads.Count, "model loads, one by LoadModelAsync and none by the request: " + string.Join(" | ", loads));
                }
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
                Engine();
                var before = SdxlEngineHandle.OpenCount;
                var engine = SdxlEngine.Create(CpuConfig());
                Assert.Equal(before + 1, SdxlEngineHandle.OpenCount, "open engines after Create");
                engine.Dispose();
                Assert.True(engine.Handle.IsClosed, "handle closed");
                Assert.Equal(before, SdxlEngineHandle.OpenCount, "sdxl_free ran on Dispose");
                engine.Dispose();
                Assert.Equal(before, SdxlEngineHandle.OpenCount, "a second Dispose frees nothing more");
                try
                {
                    await engine.GenerateJsonAsync("{}");
                }
                catch (ObjectDisposedException)
                {
                    try
                    {
                        await engine.GetStatusAsync();
                    }
                    catch (ObjectDisposedException)
                    {
                        return;
                    }
                    throw new TestFailure("a disposed engine answered GetStatusAsync");
                }
                throw new TestFailure("a disposed engine accepted a request");
            });

            runner.AddAsync("e2e_dispose_during_a_request_frees_the_engine_when_the_request_ends", async () =>
            {
                Engine();
                var before = SdxlEngineHandle.OpenCount;
                var engine = SdxlEngine.Create(CpuConfig());
                using (var inDenoise = new ManualResetEventSlim(false))
                using (var release = new ManualResetEventSlim(false))
                {
                    var progress = new InlineProgress(p =>
                    {
                        if (p.Stage == SdxlStage.Denoise && !inDenoise.IsSet)
                        {
                            inDenoise.Set();
                            release.Wait(TimeSpan.FromSeconds(60));
                        }
                    });
                    var run = engine.GenerateAsync(TinyRequest(2), progress);
                    Assert.True(inDenoise.Wait(TimeSpan.FromSeconds(120)), "the request never reached denoising");
                    engine.Dispose();
                    Assert.True(engine.Handle.IsDisposeRequested, "dispose requested");
                    Assert.Equal(before + 1, SdxlEngineHandle.OpenCount, "sdxl_free waits for the running request");
                    try
                    {
                        await engine.GetStatusAsync();
                        throw new TestFailure("a new call was accepted while the disposed engine finished its request");
                    }
                    catch (ObjectDisposedException)
                    {
                    }
                    release.Set();
                    var response = await run;
                    Assert.True(response.Success, "the running request completes: " + response.Error);
                    Assert.Equal(before, SdxlEngineHandle.OpenCount, "sdxl_free ran once the request released the handle");
                    Assert.True(engine.Handle.IsClosed, "handle closed after the release");
                }
            });

            runner.Add("e2e_an_engine_never_disposed_is_freed_by_the_finalizer", () =>
            {
                Engine();
                var before = SdxlEngineHandle.OpenCount;
                CreateAndAbandonEngines(3);
                Assert.Equal(before + 3, SdxlEngineHandle.OpenCount, "open engines while abandoned");
                for (var attempt = 0; attempt < 20 && SdxlEngineHandle.OpenCount > before; attempt++)
                {
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                    Thread.Sleep(50);
                }
                Assert.Equal(before, SdxlEngineHandle.OpenCount, "open engines after GC.Collect + WaitForPendingFinalizers");
                // The process is still healthy: the shared engine generates.
                var response = Engine().GenerateAsync(TinyRequest(1)).GetAwaiter().GetResult();
                Assert.True(response.Success, "generation after finalizing engines: " + response.Error);
            });
        }
    }
}
