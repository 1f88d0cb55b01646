/* ControlNet through the C ABI: load the built-in tiny base and the tiny canny ControlNet
 * fixture ahead (sdxl_load_model), run a request with two ControlNet entries (the canny
 * preprocessor on a photo-like image, and an edge image used as given), read what the
 * response says ran, and see a missing control image refused at its field. Run from the
 * repository root (run.sh does), where tests/fixtures/ is. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>

#include "check.h"
#include "fixture_engine.h"
#include "sdxl.h"

int main(void) {
    struct fixture_engine setup = {NULL, "/tmp/sdxl-c-controlnet-XXXXXX", ""};
    if (!open_fixture_engine(&setup)) {
        return report("controlnet");
    }
    SdxlEngine *engine = setup.engine;
    const char *cwd = setup.cwd;

    char models[1024];
    snprintf(models, sizeof models, "{\"base\":\"builtin:tiny\",\"controlnet\":[\"%s/tests/fixtures/tiny-controlnet-canny\"]}", cwd);
    int32_t loaded = sdxl_load_model(engine, models);
    CHECK(loaded == SDXL_OK, "sdxl_load_model(base + controlnet) returned %d: %s", (int)loaded, sdxl_last_error());
    char *status = sdxl_status_json(engine);
    CHECK(contains(status, "tiny-controlnet-canny"), "status does not list the ControlNet: %s", status);
    sdxl_string_free(status);

    char request[4096];
    snprintf(request, sizeof request,
             "{\"prompt\":\"a house by the sea\",\"models\":{\"base\":\"builtin:tiny\"},"
             "\"controlnet\":["
             "{\"enabled\":true,\"model\":\"%s/tests/fixtures/tiny-controlnet-canny\",\"type\":\"canny\",\"conditioning_scale\":0.7,"
             "\"control_image\":\"%s/tests/fixtures/reference/canny_source_128.png\",\"preprocessor\":{\"enabled\":true}},"
             "{\"enabled\":true,\"model\":\"%s/tests/fixtures/tiny-controlnet-canny\",\"type\":\"canny\",\"conditioning_scale\":0.3,"
             "\"control_image\":\"%s/tests/fixtures/reference/control_canny_128.png\",\"guidance_end\":0.5}],"
             "\"dimensions\":{\"width\":128,\"height\":128},\"hyperparameters\":{\"num_inference_steps\":3,\"seed\":4},"
             "\"scheduler\":\"EulerDiscreteScheduler\"}",
             cwd, cwd, cwd, cwd);
    char *response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && is_success(response), "ControlNet response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"conditioning_scale\":0.7"), "model_info lacks the first ControlNet: %s", response);
    CHECK(contains(response, "\"guidance_end\":0.5"), "model_info lacks the second ControlNet's window: %s", response);
    sdxl_string_free(response);

    /* A control image that does not exist is a validation error naming controlnet[0].control_image. */
    snprintf(request, sizeof request,
             "{\"prompt\":\"a house\",\"models\":{\"base\":\"builtin:tiny\"},\"controlnet\":[{\"enabled\":true,"
             "\"model\":\"%s/tests/fixtures/tiny-controlnet-canny\",\"control_image\":\"/nonexistent/edges.png\"}],"
             "\"dimensions\":{\"width\":64,\"height\":64},\"hyperparameters\":{\"num_inference_steps\":1}}",
             cwd);
    response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && has_error_code(response, "VALIDATION_ERROR"), "missing control image: %s", response ? response : "(null)");
    CHECK(contains(response, "controlnet[0].control_image"), "the error does not name the field: %s", response);
    sdxl_string_free(response);

    close_fixture_engine(&setup);
    return report("controlnet");
}
