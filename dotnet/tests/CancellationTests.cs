// A CancellationToken cancels its own request and nothing else (issue 12, item 14): against
// the real libsdxl with builtin:tiny at 32x32, one step, so thousands of races stay quick.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl.Tests
{
    internal static class CancellationTests
    {
        /// <summary>Races of "cancel A" against "B, the next request"; SDXL_DOTNET_RACES changes it.</summary>
        private const int DefaultRaces = 2000;

        private static SdxlEngine CreateEngine(string outputDir)
        {
            if (Environment.GetEnvironmentVariable("SDXL_SKIP_E2E") == "1")
            {
                throw new TestSkipped("SDXL_SKIP_E2E=1");
            }
            Directory.CreateDirectory(outputDir);
            return SdxlEngine.Create(new SdxlEngineConfig { Device = "cpu", OutputDir = outputDir, Limits = new SdxlLimits { MinSize = 32 } });
        }

        /// <summary>The cheapest real request (the transformer's 256 minimum does not apply to raw JSON).</summary>
        private static string TinyJson(string requestId, int steps)
        {
            return "{\"message_type\":\"inference_request\",\"request_id\":\"" + requestId + "\",\"data\":{"
                + "\"prompt\":\"a cat\",\"models\":{\"base\":\"builtin:tiny\"},\"dimensions\":{\"width\":32,\"height\":32},"
                + "\"hyperparameters\":{\"num_inference_steps\":" + steps.ToString(CultureInfo.InvariantCulture) + ",\"seed\":1,\"guidance_scale\":1},"
                + "\"scheduler\":\"EulerDiscreteScheduler\"}}";
        }

        private static bool IsSuccess(string responseJson)
        {
            return Json.GetBool(Json.ParseObject(responseJson), "success", false);
        }

        /// <summary>Waits for `ready` while polling the engine's status (60 s at most).</summary>
        private static void WaitForQueue(SdxlEngine engine, string what, Func<Dictionary<string, object>, bool> ready)
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (true)
            {
                var queue = Json.GetObject(Json.ParseObject(engine.GetStatusAsync().GetAwaiter().GetResult().RawJson), "queue");
                if (queue != null && ready(queue))
                {
                    return;
                }
                if (DateTime.UtcNow > deadline)
                {
                    throw new TestFailure("timed out waiting for " + what);
                }
                Thread.Sleep(1);
            }
        }

        public static void Register(TestRunner runner)
        {
            runner.AddAsync("e2e_a_cancelled_token_never_cancels_the_next_request", async () =>
            {
                var outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-race-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                var racesText = Environment.GetEnvironmentVariable("SDXL_DOTNET_RACES");
                var races = racesText != null ? int.Parse(racesText, CultureInfo.InvariantCulture) : DefaultRaces;
                try
                {
                    using (var engine = CreateEngine(outputDir))
                    {
                        await engine.LoadModelAsync("builtin:tiny");
                        var random = new Random(12);
                        var aCancelled = 0;
                        var strayCancels = new List<string>();
                        for (var race = 0; race < races; race++)
                        {
                            // 0: at once; 1: at A's first denoise step; 2: at A's save (A is about to
                            // end and B to start); 3: once B runs (a late cancel of a finished A).
                            var moment = race % 4;
                            using (var cts = new CancellationTokenSource())
                            using (var signal = new ManualResetEventSlim(moment == 0))
                            {
                                var progressA = new InlineProgress(p =>
                                {
                                    if ((moment == 1 && p.Stage == SdxlStage.Denoise) || (moment == 2 && p.Stage == SdxlStage.Save))
                                    {
                                        signal.Set();
                                    }
                                });
                                var progressB = new InlineProgress(p =>
                                {
                                    if (moment == 3)
                                    {
                                        signal.Set();
                                    }
                                });
                                var a = engine.GenerateJsonAsync(TinyJson("a-" + race, 1), progressA, cts.Token);
                                var b = engine.GenerateJsonAsync(TinyJson("b-" + race, 1), progressB, CancellationToken.None);
                                // Up to 2 ms after the moment: A's save (an fsync) ends and B starts in there.
                                var delayTicks = (long)(random.NextDouble() * 0.002 * Stopwatch.Frequency);
                                var canceller = Task.Run(() =>
                                {
                                    // A request cancelled before it signals never signals: don't wait forever.
                                    signal.Wait(TimeSpan.FromSeconds(30));
                                    var waited = Stopwatch.StartNew();
                                    while (waited.ElapsedTicks < delayTicks)
                                    {
                                        Thread.SpinWait(20);
                                    }
                                    cts.Cancel();
                                });
                                var bResponse = await b;
                                if (!IsSuccess(bResponse))
                                {
                                    strayCancels.Add("race " + race + " (moment " + moment + "): " + bResponse);
                                }
                                try
                                {
                                    var aResponse = await a;
                                    Assert.True(IsSuccess(aResponse), "race " + race + ": A neither succeeded nor was cancelled: " + aResponse);
                                }
                                catch (OperationCanceledException)
                                {
                                    aCancelled++;
                                }
                                await canceller;
                            }
                        }
                        Assert.True(strayCancels.Count == 0, strayCancels.Count + " of " + races + " next requests were cancelled by another's token: " + string.Join(" | ", strayCancels.Take(3)));
                        Assert.True(aCancelled > 0, "no cancel landed in " + races + " races: the race was not exercised");
                        Assert.Equal(0, engine.PendingRequests, "pending requests afterwards");
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });

            runner.AddAsync("e2e_cancelling_a_queued_request_ends_it_at_once_and_spares_the_running_one", async () =>
            {
                var outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-queued-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                try
                {
                    using (var engine = CreateEngine(outputDir))
                    using (var inDenoise = new ManualResetEventSlim(false))
                    using (var release = new ManualResetEventSlim(false))
                    using (var cts = new CancellationTokenSource())
                    {
                        var held = new InlineProgress(p =>
                        {
                            if (p.Stage == SdxlStage.Denoise && !inDenoise.IsSet)
                            {
                                inDenoise.Set();
                                release.Wait(TimeSpan.FromSeconds(60));
                            }
                        });
                        var queuedReports = 0;
                        var running = engine.GenerateJsonAsync(TinyJson("running", 2), held, CancellationToken.None);
                        Assert.True(inDenoise.Wait(TimeSpan.FromSeconds(60)), "the first request never reached denoising");
                        var queued = engine.GenerateJsonAsync(TinyJson("queued", 2), new InlineProgress(p => Interlocked.Increment(ref queuedReports)), cts.Token);
                        WaitForQueue(engine, "the second request to queue", q => (Json.GetArray(q, "waiting") ?? new List<object>()).Contains("queued"));

                        cts.Cancel();
                        var finished = await Task.WhenAny(queued, Task.Delay(TimeSpan.FromSeconds(30)));
                        Assert.True(finished == queued, "the queued request did not end while the other still ran");
                        try
                        {
                            await queued;
                            throw new TestFailure("the queued request was not cancelled");
                        }
                        catch (OperationCanceledException)
                        {
                        }
                        Assert.Equal(0, queuedReports, "progress reports of the cancelled queued request");
                        Assert.True(!running.IsCompleted, "the running request ended with the queued one");
                        release.Set();
                        Assert.True(IsSuccess(await running), "the running request was hit by the other's cancel");
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });

            runner.AddAsync("e2e_a_token_spares_a_request_that_names_the_same_id", async () =>
            {
                var outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-same-id-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                try
                {
                    using (var engine = CreateEngine(outputDir))
                    using (var inDenoise = new ManualResetEventSlim(false))
                    using (var cts = new CancellationTokenSource())
                    {
                        // The first request waits in its first denoise step until its token is cancelled.
                        var held = new InlineProgress(p =>
                        {
                            if (p.Stage == SdxlStage.Denoise && !inDenoise.IsSet)
                            {
                                inDenoise.Set();
                                cts.Token.WaitHandle.WaitOne(TimeSpan.FromSeconds(60));
                            }
                        });
                        var first = engine.GenerateJsonAsync(TinyJson("same-id", 2), held, cts.Token);
                        Assert.True(inDenoise.Wait(TimeSpan.FromSeconds(60)), "the first request never reached denoising");
                        var second = engine.GenerateJsonAsync(TinyJson("same-id", 2), null, CancellationToken.None);
                        WaitForQueue(engine, "the second request to queue", q => (Json.GetArray(q, "waiting") ?? new List<object>()).Contains("same-id"));
                        cts.Cancel();
                        try
                        {
                            await first;
                            throw new TestFailure("the first request was not cancelled");
                        }
                        catch (OperationCanceledException)
                        {
                        }
                        var secondResponse = await second;
                        Assert.True(IsSuccess(secondResponse), "the other request with the same id was cancelled: " + secondResponse);
                    }
                }
                finally
                {
                    Directory.Delete(outputDir, true);
                }
            });

            runner.AddAsync("e2e_responses_echo_the_request_tags_and_priority", async () =>
            {
                var outputDir = Path.Combine(Path.GetTempPath(), "sdxl-dotnet-tags-" + Guid.NewGuid().ToString("N").Substring(0, 8));
                try
                {
                    using (var engine = CreateEngine(outputDir))
                    {
                        var request = new EnhancedSDXLRequest
                        {
                            Conditioning = new ConditioningConfiguration { Prompt = "a red cube" },
                            Model = new ModelConfiguration { Base = "builtin:tiny" },
                            Scheduler = new SchedulerConfiguration { Type = "EulerDiscrete", Steps = 1, GuidanceScale = 1.0 },
                            Hyperparameters = new HyperparametersConfiguration { Seed = 1, Width = 256, Height = 256 },
                        };
                        var response = await engine.GenerateAsync(request);
                        Assert.True(response.Success, "generation: " + response.Error);
                        Assert.SequenceEqual(EnhancedRequestTransformer.GenerateRequestTags(request), response.Tags, "tags echoed");
                        Assert.Equal("normal", response.Priority, "priority the transformer sends");
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
