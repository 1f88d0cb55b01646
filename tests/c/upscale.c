/* Upscaling and in-memory images through the C ABI: a generation with output.upscale using the
 * tiny x2 Real-ESRGAN fixture (the image comes back twice the size), the Lanczos method, an
 * image returned base64 instead of written (output.return_images), and a missing upscaler model
 * refused at its field. Run from the repository root (run.sh does). */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>

#include "check.h"
#include "fixture_engine.h"
#include "sdxl.h"

static const char *const BASE =
    "{\"prompt\":\"a lighthouse\",\"models\":{\"base\":\"builtin:tiny\"},\"dimensions\":{\"width\":64,\"height\":64},"
    "\"hyperparameters\":{\"num_inference_steps\":2,\"seed\":3},\"scheduler\":\"EulerDiscreteScheduler\",";

int main(void) {
    struct fixture_engine setup = {NULL, "/tmp/sdxl-c-upscale-XXXXXX", ""};
    if (!open_fixture_engine(&setup)) {
        return report("upscale");
    }
    SdxlEngine *engine = setup.engine;
    const char *cwd = setup.cwd;

    char request[2048];
    snprintf(request, sizeof request,
             "%s\"output\":{\"upscale\":{\"enabled\":true,\"factor\":2,\"model\":\"%s/tests/fixtures/esrgan/tiny_x2plus.pth\"}}}", BASE, cwd);
    char *response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && is_success(response), "Real-ESRGAN response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"width\":128"), "the ×2 image is not 128 wide: %s", response);
    CHECK(contains(response, "\"method\":\"realesrgan\""), "model_info lacks the upscale: %s", response);
    sdxl_string_free(response);

    snprintf(request, sizeof request, "%s\"output\":{\"upscale\":{\"enabled\":true,\"factor\":4,\"method\":\"lanczos\"}}}", BASE);
    response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && is_success(response), "Lanczos response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"width\":256"), "the ×4 image is not 256 wide: %s", response);
    sdxl_string_free(response);

    /* return_images: the encoded PNG comes back in the response (base64), no file. */
    snprintf(request, sizeof request, "%s\"output\":{\"return_images\":true,\"upscale\":{\"enabled\":true,\"factor\":2,\"method\":\"lanczos\"}}}", BASE);
    response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && is_success(response), "return_images response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"path\":null") && contains(response, "\"data\":\"iVBORw0KGgo"), "no base64 PNG in the response: %.300s", response);
    sdxl_string_free(response);

    snprintf(request, sizeof request, "%s\"output\":{\"upscale\":{\"enabled\":true,\"factor\":4,\"model\":\"/nonexistent/RealESRGAN_x4plus.pth\"}}}", BASE);
    response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && has_error_code(response, "VALIDATION_ERROR"), "missing upscaler: %s", response ? response : "(null)");
    CHECK(contains(response, "output.upscale.model"), "the error does not name the field: %s", response);
    sdxl_string_free(response);

    close_fixture_engine(&setup);
    return report("upscale");
}
