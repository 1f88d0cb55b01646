// One engine per device (cuda:0..N-1, or N CPU engines); each request goes to the least
// busy engine, ties broken round-robin. libsdxl serialises requests per engine, so the
// pool is how a host uses several GPUs at once.

using System;
using System.Collections.Generic;
using System.Globalization;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl
{
    public sealed class SdxlEnginePool : ISdxlGenerator, IDisposable
    {
        private readonly SdxlEngine[] _engines;
        private readonly EnhancedRequestTransformer _transformer = new EnhancedRequestTransformer();
        private readonly EnhancedResponseHandler _responseHandler = new EnhancedResponseHandler();
        private readonly object _selectLock = new object();
        private int _next;

        /// <summary>Takes ownership of the engines.</summary>
        public SdxlEnginePool(IEnumerable<SdxlEngine> engines)
        {
            if (engines == null)
            {
                throw new ArgumentNullException("engines");
            }
            _engines = engines.ToArray();
            if (_engines.Length == 0 || _engines.Any(e => e == null))
            {
                throw new ArgumentException("a pool needs at least one engine, and no null ones", "engines");
            }
        }

        public IReadOnlyList<SdxlEngine> Engines
        {
            get { return _engines; }
        }

        /// <summary>One engine per device name, each a copy of the template with Device set.</summary>
        public static SdxlEnginePool Create(SdxlEngineConfig template, IEnumerable<string> devices)
        {
            var created = new List<SdxlEngine>();
            try
            {
                foreach (var device in devices)
                {
                    var config = (template ?? new SdxlEngineConfig()).Clone();
                    config.Device = device;
                    created.Add(SdxlEngine.Create(config));
                }
                return new SdxlEnginePool(created);
            }
            catch
            {
                foreach (var engine in created)
                {
                    engine.Dispose();
                }
                throw;
            }
        }

        /// <summary>Engines on cuda:0 .. cuda:(count-1).</summary>
        public static SdxlEnginePool ForCuda(int count, SdxlEngineConfig template = null)
        {
            CheckCount(count);
            return Create(template, Enumerable.Range(0, count).Select(i => "cuda:" + i.ToString(CultureInfo.InvariantCulture)));
        }

        /// <summary>count CPU engines (each runs one request at a time).</summary>
        public static SdxlEnginePool ForCpu(int count, SdxlEngineConfig template = null)
        {
            CheckCount(count);
            return Create(template, Enumerable.Repeat("cpu", count));
        }

        /// <summary>Loads the model on every engine.</summary>
        public Task LoadModelAsync(string baseModel, CancellationToken cancellationToken = default(CancellationToken))
        {
            return Task.WhenAll(_engines.Select(e => e.LoadModelAsync(baseModel, cancellationToken)));
        }

        public async Task<EnhancedSDXLResponse> GenerateAsync(EnhancedSDXLRequest request, IProgress<SdxlProgress> progress = null, CancellationToken cancellationToken = default(CancellationToken))
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            var requestId = Guid.NewGuid().ToString();
            var rejected = _transformer.ValidationFailure(request, requestId);
            if (rejected != null)
            {
                return rejected;
            }
            var json = _transformer.TransformEnhancedSDXLRequest(request, requestId);
            var responseJson = await GenerateJsonAsync(json, progress, cancellationToken).ConfigureAwait(false);
            return _responseHandler.HandleEnhancedResponse(responseJson, requestId);
        }

        public Task<string> GenerateJsonAsync(string requestJson, IProgress<SdxlProgress> progress, CancellationToken cancellationToken)
        {
            return NextEngine().GenerateJsonAsync(requestJson, progress, cancellationToken);
        }

        public Task<SdxlEngineStatus[]> GetStatusAsync(CancellationToken cancellationToken = default(CancellationToken))
        {
            return Task.WhenAll(_engines.Select(e => e.GetStatusAsync(cancellationToken)));
        }

        /// <summary>The least busy engine; among equals, the next in round-robin order.</summary>
        public SdxlEngine NextEngine()
        {
            lock (_selectLock)
            {
                var index = SelectIndex(_engines.Select(e => e.PendingRequests).ToArray(), _next);
                _next = (index + 1) % _engines.Length;
                return _engines[index];
            }
        }

        /// <summary>Index of the smallest load, scanning from start so ties rotate.</summary>
        internal static int SelectIndex(int[] pending, int start)
        {
            var best = -1;
            for (var offset = 0; offset < pending.Length; offset++)
            {
                var index = (start + offset) % pending.Length;
                if (best < 0 || pending[index] < pending[best])
                {
                    best = index;
                }
            }
            return best;
        }

        public void Dispose()
        {
            foreach (var engine in _engines)
            {
                engine.Dispose();
            }
        }

        private static void CheckCount(int count)
        {
            if (count < 1)
            {
                throw new ArgumentOutOfRangeException("count", count, "a pool needs at least one engine");
            }
        }
    }
}
