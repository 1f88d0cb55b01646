// Hardening (issue 16): a throwing progress or log handler costs its own report or line and
// nothing else, and a soak through SdxlEnginePool loses no request and makes, under load, the
// same pixels as one engine running the same requests one by one. Against the real libsdxl on
// CPU at 64x64, raw request JSON (the transformer's 256 minimum does not apply to it), images
// returned in the response (output.return_images). The soak runs the mix of tests/soak.rs:
// schedulers on builtin:tiny, LoRA on and off and img2img on the tiny-sdxl fixture (the LoRA
// fixtures fit it only), cancels and invalid requests.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.IO.Compression;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl.Tests
{
    /// <summary>A progress handler that throws from every report, on the reporting thread
    /// (Progress&lt;T&gt; would throw on the thread pool, never into the engine's callback).</summary>
    internal sealed class ThrowingProgress : IProgress<SdxlProgress>
    {
        private int _reports;

        public int Reports
        {
            get { return Volatile.Read(ref _reports); }
        }

        public void Report(SdxlProgress value)
        {
            Interlocked.Increment(ref _reports);
            throw new InvalidOperationException("progress handler failure (" + value + ")");
        }
    }

    internal static class ReliabilityTests
    {
        /// <summary>One request's generation parameters.</summary>
        private sealed class Spec
        {
            public string Scheduler;
            public long Seed;
            public int Steps;

            /// <summary>A folder under tests/fixtures as the base model; null: builtin:tiny.</summary>
            public string Model;

            /// <summary>A LoRA under tests/fixtures/lora (file stem), or null for none.</summary>
            public string Lora;

            public double LoraWeight;

            /// <summary>img2img from tests/fixtures/esrgan/input_48x40.png at strength 0.6.</summary>
            public bool Img2Img;

            public Spec(string scheduler, long seed, int steps)
            {
                Scheduler = scheduler;
                Seed = seed;
                Steps = steps;
            }

            /// <summary>The same request with another step count.</summary>
            public Spec WithSteps(int steps)
            {
                var copy = (Spec)MemberwiseClone();
                copy.Steps = steps;
                return copy;
            }

            public override string ToString()
            {
                return (Model ?? "builtin:tiny") + " " + Scheduler + " seed " + Seed + " steps " + Steps
                    + (Lora != null ? " lora " + Lora + "@" + LoraWeight.ToString(CultureInfo.InvariantCulture) : "")
                    + (Img2Img ? " img2img" : "");
            }
        }

        /// <summary>What a soak request was meant to do.</summary>
        private enum Kind
        {
            Success,
            CancelledBefore,
            CancelledRunning,
            Invalid,
        }

        /// <summary>A soak request as sent and how it ended (Problem null when as expected).</summary>
        private sealed class Outcome
        {
            public string RequestId;
            public Kind Kind;
            public string Problem;
        }

        private const string TinySdxl = "tiny-sdxl";

        /// <summary>The soak's specs. Task t's successes take specs t, t+1, t+3 and t+5, its
        /// cancel t+2 and its invalid request t+4 (mod 12), so indices 4..7, the tiny-sdxl
        /// specs, are the most used: 15 of the 32 successes, the 4 invalid requests of tasks
        /// 0..3, and the cancels of tasks 2..5 (kohya LoRA and img2img cancelled while running).
        /// The three text-to-image tiny-sdxl specs share a seed: LoRA off, kohya and PEFT must
        /// make different images, and a LoRA must not stay fused into the next request.</summary>
        private static readonly Spec[] SoakSpecs =
        {
            new Spec("EulerDiscreteScheduler", 1, 1),
            new Spec("DPMSolverMultistepScheduler", 2, 2),
            new Spec("DDIMScheduler", 3, 3),
            new Spec("EulerAncestralDiscreteScheduler", 4, 2),
            new Spec("EulerDiscreteScheduler", 11, 2) { Model = TinySdxl },
            new Spec("EulerDiscreteScheduler", 11, 2) { Model = TinySdxl, Lora = "tiny_lora_kohya", LoraWeight = 0.8 },
            new Spec("EulerDiscreteScheduler", 11, 2) { Model = TinySdxl, Lora = "tiny_lora_peft", LoraWeight = 0.5 },
            // 4 steps at strength 0.6: 2 denoising steps.
            new Spec("EulerDiscreteScheduler", 12, 4) { Model = TinySdxl, Img2Img = true },
            new Spec("EulerDiscreteScheduler", 5, 3),
            new Spec("DPMSolverMultistepScheduler", 6, 1),
            new Spec("DDIMScheduler", 7, 2),
            new Spec("EulerAncestralDiscreteScheduler", 8, 3),
        };

        private const int SoakTasks = 8;
        private const int SoakRequestsPerTask = 6;

        private static string NewOutputDir(string what)
        {
            if (Environment.GetEnvironmentVariable("SDXL_SKIP_E2E") == "1")
            {
                throw new TestSkipped("SDXL_SKIP_E2E=1");
            }
            var outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-" + what + "-" + Guid.NewGuid().ToString("N").Substring(0, 8));
            Directory.CreateDirectory(outputDir);
            return outputDir;
        }

        private static SdxlEngineConfig CpuConfig(string outputDir)
        {
            return new SdxlEngineConfig { Device = "cpu", OutputDir = outputDir, Limits = new SdxlLimits { MinSize = 64 } };
        }

        private static string Fixture(params string[] parts)
        {
            return new[] { AbiTests.RepoRoot(), "tests", "fixtures" }.Concat(parts).Aggregate(Path.Combine);
        }

        /// <summary>An inference_request envelope at 64x64 whose image comes back in the
        /// response (builtin:tiny unless the spec names a fixture model). The id is the
        /// envelope's only: data (which the PNG's sdxl_request chunk records) is the same for
        /// the same spec.</summary>
        private static string RequestJson(string requestId, Spec spec)
        {
            var model = spec.Model == null ? "builtin:tiny" : Fixture(spec.Model);
            var json = "{\"message_type\":\"inference_request\",\"request_id\":\"" + requestId + "\",\"data\":{"
                + "\"prompt\":\"a red cube on a table\",\"negative_prompt\":\"blurry\",\"models\":{\"base\":" + Json.Write(model) + "},"
                + "\"dimensions\":{\"width\":64,\"height\":64},"
                + "\"hyperparameters\":{\"num_inference_steps\":" + spec.Steps.ToString(CultureInfo.InvariantCulture)
                + ",\"seed\":" + spec.Seed.ToString(CultureInfo.InvariantCulture) + ",\"guidance_scale\":5"
                + (spec.Img2Img ? ",\"strength\":0.6" : "") + "},";
            if (spec.Lora != null)
            {
                json += "\"lora\":{\"models\":[{\"name\":" + Json.Write(Fixture("lora", spec.Lora + ".safetensors"))
                    + ",\"weight\":" + spec.LoraWeight.ToString("R", CultureInfo.InvariantCulture) + "}]},";
            }
            if (spec.Img2Img)
            {
                json += "\"init_image\":" + Json.Write(Fixture("esrgan", "input_48x40.png")) + ",";
            }
            return json + "\"scheduler\":\"" + spec.Scheduler + "\",\"output\":{\"format\":\"png\",\"return_images\":true}}}";
        }

        private static EnhancedSDXLResponse Parse(string responseJson, string requestId)
        {
            return new EnhancedResponseHandler().HandleEnhancedResponse(responseJson, requestId);
        }

        /// <summary>The single image of a successful response, as decoded pixels; fails the
        /// test otherwise.</summary>
        private static byte[] ImagePixels(EnhancedSDXLResponse response, string what)
        {
            Assert.True(response.Success, what + ": " + response.ErrorCode + " " + response.Error);
            Assert.Equal(1, response.Images.Count, what + ": image count");
            var image = response.Images[0];
            Assert.True(image.Data != null && image.Data.Length > 0, what + ": no image data");
            int width, height;
            var pixels = PngPixels(image.Data, what, out width, out height);
            Assert.Equal(64, width, what + ": PNG width");
            Assert.Equal(64, height, what + ": PNG height");
            return pixels;
        }

        private static int BigEndian(byte[] bytes, int offset)
        {
            return (bytes[offset] << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3];
        }

        /// <summary>The pixels of an 8-bit RGB or RGBA, non-interlaced PNG, row after row,
        /// unfiltered: what two encodings of the same image agree on.</summary>
        private static byte[] PngPixels(byte[] png, string what, out int width, out int height)
        {
            Assert.True(png.Length >= 33, what + ": PNG too short (" + png.Length + " bytes)");
            Assert.SequenceEqual(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png.Take(8), what + ": PNG signature");
            width = 0;
            height = 0;
            var channels = 0;
            var idat = new MemoryStream();
            var offset = 8;
            while (offset + 8 <= png.Length)
            {
                var length = BigEndian(png, offset);
                var type = System.Text.Encoding.ASCII.GetString(png, offset + 4, 4);
                var body = offset + 8;
                Assert.True(length >= 0 && body + length + 4 <= png.Length, what + ": truncated " + type + " chunk");
                if (type == "IHDR")
                {
                    width = BigEndian(png, body);
                    height = BigEndian(png, body + 4);
                    Assert.Equal(8, (int)png[body + 8], what + ": bit depth");
                    Assert.True(png[body + 9] == 2 || png[body + 9] == 6, what + ": color type " + png[body + 9]);
                    Assert.Equal(0, (int)png[body + 12], what + ": interlace");
                    channels = png[body + 9] == 2 ? 3 : 4;
                }
                else if (type == "IDAT")
                {
                    idat.Write(png, body, length);
                }
                else if (type == "IEND")
                {
                    break;
                }
                offset = body + length + 4;
            }
            Assert.True(channels > 0 && width > 0 && height > 0, what + ": no IHDR");
            var zlib = idat.ToArray();
            Assert.True(zlib.Length > 6, what + ": no image data");
            var filtered = new MemoryStream();
            // zlib: a 2-byte header, the deflate stream, an Adler-32 DeflateStream leaves alone.
            using (var inflate = new DeflateStream(new MemoryStream(zlib, 2, zlib.Length - 2), CompressionMode.Decompress))
            {
                inflate.CopyTo(filtered);
            }
            var data = filtered.ToArray();
            var stride = width * channels;
            Assert.Equal((stride + 1) * height, data.Length, what + ": inflated image data");
            var pixels = new byte[stride * height];
            for (var row = 0; row < height; row++)
            {
                var filter = data[row * (stride + 1)];
                var src = row * (stride + 1) + 1;
                var dst = row * stride;
                for (var i = 0; i < stride; i++)
                {
                    int a = i >= channels ? pixels[dst + i - channels] : 0;
                    int b = row > 0 ? pixels[dst - stride + i] : 0;
                    int c = row > 0 && i >= channels ? pixels[dst - stride + i - channels] : 0;
                    int predictor;
                    switch (filter)
                    {
                        case 0:
                            predictor = 0;
                            break;
                        case 1:
                            predictor = a;
                            break;
                        case 2:
                            predictor = b;
                            break;
                        case 3:
                            predictor = (a + b) / 2;
                            break;
                        case 4:
                            var p = a + b - c;
                            var pa = Math.Abs(p - a);
                            var pb = Math.Abs(p - b);
                            var pc = Math.Abs(p - c);
                            predictor = pa <= pb && pa <= pc ? a : (pb <= pc ? b : c);
                            break;
                        default:
                            throw new TestFailure(what + ": PNG filter type " + filter + " in row " + row);
                    }
                    pixels[dst + i] = (byte)(data[src + i] + predictor);
                }
            }
            return pixels;
        }

        /// <summary>Runs one soak request through the pool and says how it ended; never throws.</summary>
        private static async Task<Outcome> RunSoakRequest(SdxlEnginePool pool, string requestId, Kind kind, Spec spec, Dictionary<Spec, byte[]> reference)
        {
            var outcome = new Outcome { RequestId = requestId, Kind = kind };
            var what = requestId + " (" + kind + ", " + spec + ")";
            var json = RequestJson(requestId, kind == Kind.Invalid ? spec.WithSteps(0) : spec);
            try
            {
                using (var cts = new CancellationTokenSource())
                {
                    IProgress<SdxlProgress> progress = null;
                    if (kind == Kind.CancelledBefore)
                    {
                        cts.Cancel();
                    }
                    else if (kind == Kind.CancelledRunning)
                    {
                        // Cancelled from its own first denoise report: it has reached the engine.
                        progress = new InlineProgress(p =>
                        {
                            if (p.Stage == SdxlStage.Denoise)
                            {
                                cts.Cancel();
                            }
                        });
                    }
                    string responseJson;
                    try
                    {
                        responseJson = await pool.GenerateJsonAsync(json, progress, cts.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException ex)
                    {
                        if (kind == Kind.CancelledBefore && ex.InnerException != null)
                        {
                            outcome.Problem = what + ": cancelled before submission, yet a native error: " + ex.InnerException.Message;
                        }
                        else if (kind == Kind.CancelledRunning && !(ex.InnerException is SdxlException && ((SdxlException)ex.InnerException).Code == SdxlErrorCode.Cancelled))
                        {
                            outcome.Problem = what + ": cancelled while running, inner exception " + ex.InnerException;
                        }
                        else if (kind != Kind.CancelledBefore && kind != Kind.CancelledRunning)
                        {
                            outcome.Problem = what + ": cancelled: " + ex.Message;
                        }
                        return outcome;
                    }
                    if (kind == Kind.CancelledBefore || kind == Kind.CancelledRunning)
                    {
                        outcome.Problem = what + ": not cancelled: " + responseJson;
                        return outcome;
                    }
                    var response = Parse(responseJson, requestId);
                    if (response.RequestId != requestId)
                    {
                        outcome.Problem = what + ": the response names " + response.RequestId;
                    }
                    else if (kind == Kind.Invalid)
                    {
                        // 0 steps; at img2img's strength it also leaves no denoising step.
                        var expected = spec.Img2Img ? "hyperparameters.num_inference_steps,hyperparameters.strength" : "hyperparameters.num_inference_steps";
                        var fields = string.Join(",", response.FieldErrors.Select(f => f.Field));
                        if (response.Success || response.ErrorCode != "VALIDATION_ERROR" || fields != expected)
                        {
                            outcome.Problem = what + ": expected VALIDATION_ERROR on " + expected + ", got " + responseJson;
                        }
                    }
                    else
                    {
                        var pixels = ImagePixels(response, what);
                        Assert.Equal(spec.Seed, response.Images[0].Seed, what + ": seed");
                        Assert.True(pixels.SequenceEqual(reference[spec]), what + ": pixels differ from the same request run alone on one engine");
                    }
                }
            }
            catch (Exception ex)
            {
                // A TestFailure names the request already.
                outcome.Problem = ex is TestFailure ? ex.Message : what + ": " + ex;
            }
            return outcome;
        }

        public static void Register(TestRunner runner)
        {
            runner.AddAsync("e2e_a_progress_handler_that_throws_does_not_unwind_into_native_code", async () =>
            {
                var outputDir = NewOutputDir("throwing-progress");
                try
                {
                    using (var engine = SdxlEngine.Create(CpuConfig(outputDir)))
                    {
                        await engine.LoadModelAsync("builtin:tiny");
                        var spec = new Spec("EulerDiscreteScheduler", 42, 2);
                        var counted = 0;
                        var reference = Parse(await engine.GenerateJsonAsync(RequestJson("counted", spec), new InlineProgress(p => Interlocked.Increment(ref counted)), CancellationToken.None), "counted");
                        var referencePixels = ImagePixels(reference, "the request with a handler that counts");
                        Assert.True(counted >= 4, "reports of a 2-step request (encode, denoise, decode, save): " + counted);

                        var throwing = new ThrowingProgress();
                        var response = Parse(await engine.GenerateJsonAsync(RequestJson("throwing", spec), throwing, CancellationToken.None), "throwing");
                        var pixels = ImagePixels(response, "the request whose handler throws");
                        Assert.Equal("throwing", response.RequestId, "request id");
                        Assert.Equal(counted, throwing.Reports, "reports offered to the throwing handler (each throw loses its own report only)");
                        Assert.True(pixels.SequenceEqual(referencePixels), "the throwing handler changed the image");
                        Assert.Equal(0, engine.PendingRequests, "pending requests afterwards");

                        // The engine serves the next request normally.
                        var next = Parse(await engine.GenerateJsonAsync(RequestJson("next", new Spec("DDIMScheduler", 7, 2)), null, CancellationToken.None), "next");
                        ImagePixels(next, "the request after the throwing handler");
                        Assert.Equal(3L, (await engine.GetStatusAsync()).RequestsServed, "requests served");
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });

            runner.AddAsync("e2e_a_log_handler_that_throws_loses_its_line_and_nothing_else", async () =>
            {
                var outputDir = NewOutputDir("throwing-log");
                try
                {
                    var calls = 0;
                    var spec = new Spec("DPMSolverMultistepScheduler", 9, 2);
                    var pixels = new List<byte[]>();
                    var callsAfter = new List<int>();
                    SdxlLog.SetHandler((level, target, message) =>
                    {
                        Interlocked.Increment(ref calls);
                        throw new InvalidOperationException("log handler failure: " + message);
                    }, SdxlLogLevel.Debug);
                    try
                    {
                        // Two fresh engines: each request loads the model itself and logs it.
                        for (var run = 0; run < 2; run++)
                        {
                            using (var engine = SdxlEngine.Create(CpuConfig(outputDir)))
                            {
                                var id = "logged-" + run.ToString(CultureInfo.InvariantCulture);
                                var response = Parse(await engine.GenerateJsonAsync(RequestJson(id, spec), null, CancellationToken.None), id);
                                pixels.Add(ImagePixels(response, "request " + run + " logged to a throwing handler"));
                                Assert.Equal(1L, (await engine.GetStatusAsync()).RequestsServed, "requests served by engine " + run);
                            }
                            callsAfter.Add(Volatile.Read(ref calls));
                        }
                    }
                    finally
                    {
                        SdxlLog.SetHandler(null);
                    }
                    Assert.True(callsAfter[0] >= 1, "no log line reached the throwing handler");
                    Assert.True(callsAfter[1] > callsAfter[0], "the handler got no line after its first throw: " + string.Join(", ", callsAfter));
                    Assert.True(pixels[0].SequenceEqual(pixels[1]), "the two requests logged to the throwing handler made different images");

                    // The same request logged to a handler that does not throw: the same image, and its lines arrive.
                    var lines = new List<string>();
                    SdxlLog.SetHandler((level, target, message) => { lock (lines) { lines.Add(message); } }, SdxlLogLevel.Debug);
                    byte[] quietPixels;
                    try
                    {
                        using (var engine = SdxlEngine.Create(CpuConfig(outputDir)))
                        {
                            quietPixels = ImagePixels(Parse(await engine.GenerateJsonAsync(RequestJson("quiet", spec), null, CancellationToken.None), "quiet"), "the request logged normally");
                        }
                    }
                    finally
                    {
                        SdxlLog.SetHandler(null);
                    }
                    Assert.True(pixels[0].SequenceEqual(quietPixels), "the throwing log handler changed the image");
                    lock (lines)
                    {
                        Assert.True(lines.Any(l => l.Contains("loading model")), "log lines after the throwing handler: " + string.Join(" | ", lines));
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });

            runner.AddAsync("e2e_soak_of_mixed_requests_through_an_engine_pool_loses_no_request_and_matches_one_engine", async () =>
            {
                var outputDir = NewOutputDir("soak");
                try
                {
                    // The reference: every spec once, one at a time, on one engine.
                    var reference = new Dictionary<Spec, byte[]>();
                    using (var single = SdxlEngine.Create(CpuConfig(outputDir)))
                    {
                        await single.LoadModelAsync("builtin:tiny");
                        await single.LoadModelAsync(Fixture(TinySdxl));
                        for (var i = 0; i < SoakSpecs.Length; i++)
                        {
                            var id = "reference-" + i.ToString(CultureInfo.InvariantCulture);
                            var response = Parse(await single.GenerateJsonAsync(RequestJson(id, SoakSpecs[i]), null, CancellationToken.None), id);
                            reference[SoakSpecs[i]] = ImagePixels(response, "reference " + SoakSpecs[i]);
                        }
                    }
                    Assert.True(reference.Values.Select(p => Convert.ToBase64String(p)).Distinct().Count() > 1, "the specs all made the same image");
                    // LoRA off, kohya and PEFT (one seed) and img2img: four different images.
                    var tinySdxlSpecs = SoakSpecs.Where(spec => spec.Model == TinySdxl).ToList();
                    Assert.Equal(4, tinySdxlSpecs.Count, "tiny-sdxl specs");
                    Assert.Equal(4, tinySdxlSpecs.Select(spec => Convert.ToBase64String(reference[spec])).Distinct().Count(),
                        "distinct images among " + string.Join(", ", tinySdxlSpecs));

                    var config = CpuConfig(outputDir);
                    using (var pool = new SdxlEnginePool(new[] { SdxlEngine.Create(config), SdxlEngine.Create(config) }))
                    {
                        // Both models resident (max_loaded_models 2): requests switch between them.
                        await pool.LoadModelAsync("builtin:tiny");
                        await pool.LoadModelAsync(Fixture(TinySdxl));
                        var sent = new List<string>();
                        var outcomes = new List<Outcome>();
                        var tasks = new List<Task>();
                        for (var t = 0; t < SoakTasks; t++)
                        {
                            var task = t;
                            tasks.Add(Task.Run(async () =>
                            {
                                for (var i = 0; i < SoakRequestsPerTask; i++)
                                {
                                    // Per task: 4 successes, a cancel (before submission in even
                                    // tasks, while running in odd ones), an invalid request.
                                    var kind = i == 2 ? (task % 2 == 0 ? Kind.CancelledBefore : Kind.CancelledRunning) : i == 4 ? Kind.Invalid : Kind.Success;
                                    var spec = SoakSpecs[(task + i) % SoakSpecs.Length];
                                    var id = "soak-" + task.ToString(CultureInfo.InvariantCulture) + "-" + i.ToString(CultureInfo.InvariantCulture);
                                    lock (sent)
                                    {
                                        sent.Add(id);
                                    }
                                    var outcome = await RunSoakRequest(pool, id, kind, spec, reference).ConfigureAwait(false);
                                    lock (outcomes)
                                    {
                                        outcomes.Add(outcome);
                                    }
                                }
                            }));
                        }
                        var all = Task.WhenAll(tasks);
                        var finished = await Task.WhenAny(all, Task.Delay(TimeSpan.FromSeconds(300)));
                        Assert.True(finished == all, "the soak did not finish in 300 s: " + outcomes.Count + " of " + sent.Count + " requests ended");
                        await all;

                        var total = SoakTasks * SoakRequestsPerTask;
                        Assert.Equal(total, sent.Count, "requests sent");
                        Assert.Equal(total, outcomes.Count, "requests that ended");
                        Assert.SequenceEqual(sent.OrderBy(s => s, StringComparer.Ordinal), outcomes.Select(o => o.RequestId).OrderBy(s => s, StringComparer.Ordinal), "every request ended exactly once");
                        var problems = outcomes.Where(o => o.Problem != null).Select(o => o.Problem).ToList();
                        Assert.True(problems.Count == 0, problems.Count + " of " + total + " requests ended unexpectedly: " + string.Join(" | ", problems.Take(5)));
                        Assert.Equal(SoakTasks * 4, outcomes.Count(o => o.Kind == Kind.Success), "successes");
                        Assert.Equal(SoakTasks / 2, outcomes.Count(o => o.Kind == Kind.CancelledBefore), "cancelled before submission");
                        Assert.Equal(SoakTasks / 2, outcomes.Count(o => o.Kind == Kind.CancelledRunning), "cancelled while running");
                        Assert.Equal(SoakTasks, outcomes.Count(o => o.Kind == Kind.Invalid), "validation errors");

                        // Only successes count as served; both engines took a share.
                        var statuses = await pool.GetStatusAsync();
                        Assert.Equal((long)SoakTasks * 4, statuses.Sum(s => s.RequestsServed), "requests served by the pool (" + string.Join(", ", statuses.Select(s => s.RequestsServed)) + ")");
                        Assert.True(statuses.All(s => s.RequestsServed > 0), "an engine served nothing: " + string.Join(", ", statuses.Select(s => s.RequestsServed)));
                        Assert.SequenceEqual(new[] { 0, 0 }, pool.Engines.Select(e => e.PendingRequests), "pending requests afterwards");
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });
        }
    }
}
