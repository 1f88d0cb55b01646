// The seed's EnhancedResponseHandler: the engine's response JSON (src/api/response.rs:
// request_id, success, data{generated_images, processing_metrics}, error, error_code,
// error_number, field_errors, warnings, execution_time, timestamp) → EnhancedSDXLResponse.

using System;
using System.Collections.Generic;

namespace DeviceOperations.Sdxl
{
    public class EnhancedResponseHandler
    {
        /// <summary>Never throws: unreadable JSON, or a number its member cannot hold (a width
        /// of 4294967297 or 1.9), becomes Success=false with ErrorCode INVALID_JSON.</summary>
        public EnhancedSDXLResponse HandleEnhancedResponse(string responseJson, string requestId)
        {
            try
            {
                return Map(Json.ParseObject(responseJson ?? string.Empty), requestId);
            }
            catch (FormatException ex)
            {
                return Failure(requestId, SdxlErrorCode.InvalidJson, "Invalid response from the native engine: " + ex.Message);
            }
        }

        private static EnhancedSDXLResponse Map(Dictionary<string, object> root, string requestId)
        {

            var response = new EnhancedSDXLResponse
            {
                RequestId = Json.GetString(root, "request_id") ?? requestId,
                Success = Json.GetBool(root, "success", false),
                Error = Json.GetString(root, "error"),
                ErrorCode = Json.GetString(root, "error_code"),
                ExecutionTime = Json.GetDouble(root, "execution_time") ?? 0.0,
            };
            var errorNumber = Json.GetInt(root, "error_number");
            if (errorNumber.HasValue)
            {
                response.ErrorNumber = errorNumber.Value;
            }
            else if (response.ErrorCode != null)
            {
                response.ErrorNumber = SdxlErrorCode.FromName(response.ErrorCode);
            }
            if (!response.Success && response.ErrorCode == null)
            {
                response.ErrorCode = SdxlErrorCode.Name(response.ErrorNumber ?? SdxlErrorCode.Internal);
                response.ErrorNumber = response.ErrorNumber ?? SdxlErrorCode.Internal;
            }
            if (!response.Success && string.IsNullOrEmpty(response.Error))
            {
                response.Error = "Processing failed: " + response.ErrorCode;
            }

            foreach (var item in Json.GetArray(root, "field_errors") ?? new List<object>())
            {
                var fieldError = item as Dictionary<string, object>;
                if (fieldError != null)
                {
                    response.FieldErrors.Add(new SdxlFieldError(Json.GetString(fieldError, "field"), Json.GetString(fieldError, "message")));
                }
            }
            foreach (var item in Json.GetArray(root, "warnings") ?? new List<object>())
            {
                var warning = item as string;
                if (warning != null)
                {
                    response.Warnings.Add(warning);
                }
            }

            var data = Json.GetObject(root, "data");
            if (data != null)
            {
                var images = Json.GetArray(data, "generated_images") ?? new List<object>();
                for (var index = 0; index < images.Count; index++)
                {
                    var image = images[index] as Dictionary<string, object>;
                    if (image == null)
                    {
                        continue;
                    }
                    response.Images.Add(new GeneratedImage
                    {
                        Path = Json.GetString(image, "path"),
                        Data = DecodeImageData(Json.GetString(image, "data"), index),
                        Seed = Json.GetLong(image, "seed") ?? 0,
                        Width = Json.GetInt(image, "width") ?? 0,
                        Height = Json.GetInt(image, "height") ?? 0,
                        Format = Json.GetString(image, "format"),
                    });
                }
                var metadata = Json.GetObject(data, "metadata");
                if (metadata != null)
                {
                    response.Priority = Json.GetString(metadata, "priority");
                    foreach (var item in Json.GetArray(metadata, "tags") ?? new List<object>())
                    {
                        var tag = item as string;
                        if (tag != null)
                        {
                            response.Tags.Add(tag);
                        }
                    }
                }
                var metrics = Json.GetObject(data, "processing_metrics");
                if (metrics != null)
                {
                    response.Metrics = MapMetrics(metrics);
                }
            }
            return response;
        }

        /// <summary>generated_images[i].data (output.return_images): base64 of the encoded file,
        /// decoded once here; null when absent. Not base64: FormatException naming the image.</summary>
        private static byte[] DecodeImageData(string base64, int index)
        {
            if (base64 == null)
            {
                return null;
            }
            try
            {
                return Convert.FromBase64String(base64);
            }
            catch (FormatException ex)
            {
                throw new FormatException("data.generated_images[" + index + "].data is not base64: " + ex.Message, ex);
            }
        }

        private static GenerationMetrics MapMetrics(Dictionary<string, object> metrics)
        {
            var modelInfo = Json.GetObject(metrics, "model_info") ?? new Dictionary<string, object>();
            var result = new GenerationMetrics
            {
                TotalTime = Json.GetDouble(metrics, "total_time") ?? 0.0,
                InferenceTime = Json.GetDouble(metrics, "inference_time") ?? 0.0,
                DeviceName = Json.GetString(metrics, "device_name"),
                MemoryUsed = Json.GetLong(metrics, "memory_used") ?? 0,
                UnetCalls = Json.GetLong(metrics, "unet_calls") ?? 0,
                IterationsPerSecond = Json.GetDouble(metrics, "iterations_per_second") ?? 0.0,
                ModelInfo = modelInfo,
                RefinerModel = Json.GetString(modelInfo, "refiner_model"),
                RefinerMode = Json.GetString(modelInfo, "refiner_mode"),
                RefinerSteps = Json.GetInt(modelInfo, "refiner_steps") ?? 0,
                RefinerDescription = Json.GetString(modelInfo, "refiner_description"),
                Vae = Json.GetString(modelInfo, "vae"),
                VaeDtype = Json.GetString(modelInfo, "vae_dtype"),
            };
            var tiling = Json.GetObject(modelInfo, "vae_tiling");
            if (tiling != null)
            {
                result.VaeTiling = new SdxlVaeTiling
                {
                    TileSize = Json.GetInt(tiling, "tile_size") ?? 0,
                    Overlap = Json.GetDouble(tiling, "overlap") ?? 0.0,
                };
            }
            foreach (var item in Json.GetArray(modelInfo, "controlnets") ?? new List<object>())
            {
                var controlnet = item as Dictionary<string, object>;
                if (controlnet == null)
                {
                    continue;
                }
                var info = new SdxlControlNetInfo
                {
                    Type = Json.GetString(controlnet, "type"),
                    Model = Json.GetString(controlnet, "model"),
                    ConditioningScale = Json.GetDouble(controlnet, "conditioning_scale") ?? 0.0,
                    GuidanceStart = Json.GetDouble(controlnet, "guidance_start") ?? 0.0,
                    GuidanceEnd = Json.GetDouble(controlnet, "guidance_end") ?? 1.0,
                };
                var canny = Json.GetObject(controlnet, "canny");
                if (canny != null)
                {
                    info.Canny = new SdxlCannySettings
                    {
                        LowThreshold = Json.GetDouble(canny, "low_threshold") ?? 0.0,
                        HighThreshold = Json.GetDouble(canny, "high_threshold") ?? 0.0,
                        Resolution = Json.GetInt(canny, "resolution"),
                    };
                }
                result.ControlNets.Add(info);
            }
            var upscale = Json.GetObject(modelInfo, "upscale");
            if (upscale != null)
            {
                result.Upscale = new SdxlUpscaleInfo
                {
                    Method = Json.GetString(upscale, "method"),
                    Factor = Json.GetInt(upscale, "factor") ?? 0,
                    Model = Json.GetString(upscale, "model"),
                    Tile = Json.GetInt(upscale, "tile") ?? 0,
                    TilePad = Json.GetInt(upscale, "tile_pad") ?? 0,
                };
            }
            var stageTimes = Json.GetObject(metrics, "stage_times");
            if (stageTimes != null)
            {
                result.StageTimes = new SdxlStageTimes
                {
                    TextEncode = Json.GetDouble(stageTimes, "text_encode") ?? 0.0,
                    Denoise = Json.GetDouble(stageTimes, "denoise") ?? 0.0,
                    Refine = Json.GetDouble(stageTimes, "refine") ?? 0.0,
                    Decode = Json.GetDouble(stageTimes, "decode") ?? 0.0,
                    Upscale = Json.GetDouble(stageTimes, "upscale") ?? 0.0,
                    Save = Json.GetDouble(stageTimes, "save") ?? 0.0,
                };
            }
            return result;
        }

        /// <summary>A failure response built on this side (validation, cancellation before start, exceptions).</summary>
        public static EnhancedSDXLResponse Failure(string requestId, int code, string error, IList<SdxlFieldError> fieldErrors = null)
        {
            var response = new EnhancedSDXLResponse
            {
                RequestId = requestId,
                Success = false,
                Error = error,
                ErrorCode = SdxlErrorCode.Name(code),
                ErrorNumber = code,
            };
            if (fieldErrors != null)
            {
                response.FieldErrors.AddRange(fieldErrors);
            }
            return response;
        }
    }
}
