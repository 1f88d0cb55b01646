/* The refiner and a custom VAE through the C ABI: load the built-in tiny base with the tiny
 * refiner and VAE fixtures ahead (sdxl_load_model), run an ensemble request, watch the
 * refiner's progress stage (5), read what the response says ran. Run from the repository root
 * (run.sh does), where tests/fixtures/ is. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>

#include "check.h"
#include "fixture_engine.h"
#include "sdxl.h"

struct stages {
    unsigned denoise;
    unsigned refine;
    uint32_t refine_total;
};

static bool on_progress(const SdxlProgress *progress, void *user_data) {
    struct stages *seen = (struct stages *)user_data;
    if (progress->stage == 1) {
        seen->denoise++;
    } else if (progress->stage == 5) {
        seen->refine++;
        seen->refine_total = progress->total_steps;
    }
    return true;
}

int main(void) {
    struct fixture_engine setup = {NULL, "/tmp/sdxl-c-refiner-XXXXXX", ""};
    if (!open_fixture_engine(&setup)) {
        return report("refiner");
    }
    SdxlEngine *engine = setup.engine;
    const char *cwd = setup.cwd;

    char models[2048];
    snprintf(models, sizeof models,
             "{\"base\":\"builtin:tiny\",\"refiner\":\"%s/tests/fixtures/tiny-sdxl-refiner\",\"vae\":\"%s/tests/fixtures/tiny-vae-fp16-fix\"}",
             cwd, cwd);
    int32_t loaded = sdxl_load_model(engine, models);
    CHECK(loaded == SDXL_OK, "sdxl_load_model(base + refiner + vae) returned %d: %s", (int)loaded, sdxl_last_error());

    /* A base model named as the refiner is refused, naming the field. */
    int32_t wrong = sdxl_load_model(engine, "{\"base\":\"builtin:tiny\",\"refiner\":\"builtin:tiny\"}");
    CHECK(wrong != SDXL_OK, "builtin:tiny loaded as a refiner");
    CHECK(contains(sdxl_last_error(), "models.refiner"), "last error does not name models.refiner: %s", sdxl_last_error());

    struct stages seen = {0, 0, 0};
    CHECK(sdxl_set_progress_callback(engine, on_progress, &seen) == SDXL_OK, "set callback: %s", sdxl_last_error());
    char request[4096];
    snprintf(request, sizeof request,
             "{\"prompt\":\"a lighthouse\",\"models\":{\"base\":\"builtin:tiny\",\"refiner\":\"%s/tests/fixtures/tiny-sdxl-refiner\","
             "\"vae\":\"%s/tests/fixtures/tiny-vae-fp16-fix\"},\"refiner\":{\"mode\":\"ensemble\",\"denoising_start\":0.75},"
             "\"dimensions\":{\"width\":64,\"height\":64},\"hyperparameters\":{\"num_inference_steps\":4,\"seed\":3},"
             "\"scheduler\":\"EulerDiscreteScheduler\",\"precision\":{\"vae_tiling\":false}}",
             cwd, cwd);
    char *response = sdxl_generate_json(engine, request);
    CHECK(response != NULL && is_success(response), "refiner response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"refiner_mode\":\"ensemble\""), "model_info lacks the refiner mode: %s", response);
    CHECK(contains(response, "\"refiner_steps\":1"), "4 steps handed over at 0.75 leave the refiner 1 step: %s", response);
    CHECK(contains(response, "tiny-vae-fp16-fix"), "model_info lacks the VAE: %s", response);
    CHECK(seen.denoise > 0 && seen.refine > 0, "progress saw %u denoise and %u refine reports", seen.denoise, seen.refine);
    CHECK(seen.refine_total == 1, "the refine stage reported %u total steps", seen.refine_total);
    sdxl_string_free(response);

    close_fixture_engine(&setup);
    return report("refiner");
}
