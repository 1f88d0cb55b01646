// Drop-in for the seed's PyTorchWorkerService.SendEnhancedCommandAsync: the same
// validation, transformation and response handling, but the "worker" is libsdxl in this
// process instead of a Python process on stdin/stdout.

using System;
using System.Collections.Generic;
using System.Linq;
using System.Threading;
using System.Threading.Tasks;

namespace DeviceOperations.Sdxl
{
    public sealed class SdxlNativeService : IDisposable
    {
        private readonly ISdxlGenerator _generator;
        private readonly bool _ownsGenerator;
        private readonly EnhancedRequestTransformer _requestTransformer;
        private readonly EnhancedResponseHandler _responseHandler;

        /// <summary>generator: an SdxlEngine or an SdxlEnginePool; disposed with the service
        /// when ownsGenerator.</summary>
        public SdxlNativeService(ISdxlGenerator generator, bool ownsGenerator = false,
            EnhancedRequestTransformer requestTransformer = null, EnhancedResponseHandler responseHandler = null)
        {
            if (generator == null)
            {
                throw new ArgumentNullException("generator");
            }
            _generator = generator;
            _ownsGenerator = ownsGenerator;
            _requestTransformer = requestTransformer ?? new EnhancedRequestTransformer();
            _responseHandler = responseHandler ?? new EnhancedResponseHandler();
        }

        /// <summary>Never throws for request errors: Success=false with the seed's messages
        /// ("Request validation failed: ..." / "Processing failed: ...").</summary>
        public Task<EnhancedSDXLResponse> SendEnhancedCommandAsync(EnhancedSDXLRequest request)
        {
            return SendEnhancedCommandAsync(request, null, CancellationToken.None);
        }

        /// <summary>As above, with progress and cancellation. Cancellation is not an exception
        /// here either: the seed's callers only look at Success, so a cancelled token (before or
        /// during the request) returns Success=false, ErrorCode "CANCELLED", ErrorNumber -9,
        /// Error "Processing failed: cancelled". SdxlEngine/SdxlEnginePool.GenerateAsync throw
        /// OperationCanceledException instead, as .NET callers expect.</summary>
        public async Task<EnhancedSDXLResponse> SendEnhancedCommandAsync(EnhancedSDXLRequest request, IProgress<SdxlProgress> progress, CancellationToken cancellationToken)
        {
            var requestId = Guid.NewGuid().ToString();
            try
            {
                // The same checks and failure as SdxlEngine/SdxlEnginePool.GenerateAsync.
                var rejected = _requestTransformer.ValidationFailure(request, requestId);
                if (rejected != null)
                {
                    return rejected;
                }
                var jsonCommand = _requestTransformer.TransformEnhancedSDXLRequest(request, requestId);
                var responseJson = await _generator.GenerateJsonAsync(jsonCommand, progress, cancellationToken).ConfigureAwait(false);
                if (string.IsNullOrEmpty(responseJson))
                {
                    throw new InvalidOperationException("Empty response from the native engine");
                }
                return _responseHandler.HandleEnhancedResponse(responseJson, requestId);
            }
            catch (SdxlException ex)
            {
                return EnhancedResponseHandler.Failure(requestId, ex.Code, "Processing failed: " + ex.Message, ex.FieldErrors.ToList());
            }
            catch (OperationCanceledException)
            {
                return EnhancedResponseHandler.Failure(requestId, SdxlErrorCode.Cancelled, "Processing failed: cancelled");
            }
            catch (Exception ex)
            {
                return EnhancedResponseHandler.Failure(requestId, SdxlErrorCode.Internal, "Processing failed: " + ex.Message);
            }
        }

        public void Dispose()
        {
            if (_ownsGenerator)
            {
                var disposable = _generator as IDisposable;
                if (disposable != null)
                {
                    disposable.Dispose();
                }
            }
        }
    }
}
