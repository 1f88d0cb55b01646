/* The happy path through the C ABI: create an engine, load builtin:tiny, generate one
 * 64x64 image, watch progress, cancel from the callback, ask for status. Every string
 * the library returns is freed exactly once (valgrind checks it). */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "sdxl.h"

static const char *const REQUEST =
    "{\"prompt\":\"a cat\",\"models\":{\"base\":\"builtin:tiny\"},"
    "\"dimensions\":{\"width\":64,\"height\":64},"
    "\"hyperparameters\":{\"num_inference_steps\":2,\"seed\":1},"
    "\"scheduler\":\"EulerDiscreteScheduler\"}";

struct progress_log {
    unsigned calls;
    unsigned denoise_calls;
    uint32_t last_total_steps;
    int request_id_ok;
    /* When non-zero, the callback cancels the request on its first call. */
    int cancel;
};

static bool on_progress(const SdxlProgress *progress, void *user_data) {
    struct progress_log *log = (struct progress_log *)user_data;
    log->calls++;
    if (progress->request_id != NULL && progress->request_id[0] != '\0') {
        log->request_id_ok = 1;
    }
    if (progress->stage == 1) {
        log->denoise_calls++;
        log->last_total_steps = progress->total_steps;
    }
    return !log->cancel;
}

/* Copies the first generated image's path out of a response into `path`. */
static int first_image_path(const char *response, char *path, size_t size) {
    const char *key = "\"path\":\"";
    const char *start = strstr(response, key);
    if (start == NULL) {
        return 0;
    }
    start += strlen(key);
    const char *end = strchr(start, '"');
    if (end == NULL || (size_t)(end - start) >= size) {
        return 0;
    }
    memcpy(path, start, (size_t)(end - start));
    path[end - start] = '\0';
    return 1;
}

int main(void) {
    char output_dir[] = "/tmp/sdxl-c-generate-XXXXXX";
    if (mkdtemp(output_dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    char config[512];
    snprintf(config, sizeof config, "{\"device\":\"cpu\",\"output_dir\":\"%s\",\"limits\":{\"min_size\":64}}", output_dir);

    CHECK(strcmp(sdxl_version(), SDXL_VERSION_STRING) == 0, "sdxl_version() = %s, header says %s", sdxl_version(),
          SDXL_VERSION_STRING);

    SdxlEngine *engine = sdxl_create(config);
    CHECK(engine != NULL, "sdxl_create failed: %s", sdxl_last_error());
    if (engine == NULL) {
        return report("generate");
    }
    CHECK(last_error_is_empty(), "last error after a successful create: %s", sdxl_last_error());

    int32_t loaded = sdxl_load_model(engine, "{\"base\":\"builtin:tiny\"}");
    CHECK(loaded == SDXL_OK, "sdxl_load_model returned %d: %s", (int)loaded, sdxl_last_error());

    /* One plain run: success, and the PNG is on disk. */
    char image_path[1024] = "";
    char *response = sdxl_generate_json(engine, REQUEST);
    CHECK(response != NULL, "generate returned NULL: %s", sdxl_last_error());
    if (response != NULL) {
        CHECK(is_success(response), "response: %s", response);
        CHECK(first_image_path(response, image_path, sizeof image_path), "no image path in %s", response);
        CHECK(contains(image_path, ".png"), "image path %s is not a .png", image_path);
        struct stat info;
        CHECK(stat(image_path, &info) == 0 && info.st_size > 0, "image %s missing or empty", image_path);
        sdxl_string_free(response);
    }

    /* Progress: the callback sees every denoising step of the request. */
    struct progress_log log = {0, 0, 0, 0, 0};
    CHECK(sdxl_set_progress_callback(engine, on_progress, &log) == SDXL_OK, "set callback: %s", sdxl_last_error());
    response = sdxl_generate_json(engine, REQUEST);
    CHECK(response != NULL && is_success(response), "response: %s", response ? response : "(null)");
    CHECK(log.calls > 0, "the progress callback was never called");
    CHECK(log.denoise_calls >= 2, "denoise progress reported %u times for 2 steps", log.denoise_calls);
    CHECK(log.last_total_steps == 2, "total_steps = %u, expected 2", (unsigned)log.last_total_steps);
    CHECK(log.request_id_ok, "progress carried no request_id");
    sdxl_string_free(response);

    /* Cancelling from the callback: the response says CANCELLED and the engine keeps working. */
    struct progress_log cancelling = {0, 0, 0, 0, 1};
    CHECK(sdxl_set_progress_callback(engine, on_progress, &cancelling) == SDXL_OK, "set callback: %s", sdxl_last_error());
    response = sdxl_generate_json(engine, REQUEST);
    CHECK(response != NULL && !is_success(response) && has_error_code(response, "CANCELLED"), "response: %s",
          response ? response : "(null)");
    CHECK(cancelling.calls == 1, "callback called %u times after it asked to cancel", cancelling.calls);
    sdxl_string_free(response);

    /* Clearing the callback: the next run succeeds and nothing calls the old one. */
    CHECK(sdxl_set_progress_callback(engine, NULL, NULL) == SDXL_OK, "clear callback: %s", sdxl_last_error());
    unsigned calls_before = cancelling.calls;
    response = sdxl_generate_json(engine, REQUEST);
    CHECK(response != NULL && is_success(response), "response after cancel: %s", response ? response : "(null)");
    CHECK(cancelling.calls == calls_before, "a cleared callback was still called");
    sdxl_string_free(response);

    /* sdxl_cancel while idle has no effect on the next request. */
    CHECK(sdxl_cancel(engine) == SDXL_OK, "cancel: %s", sdxl_last_error());
    response = sdxl_generate_json(engine, REQUEST);
    CHECK(response != NULL && is_success(response), "response after idle cancel: %s", response ? response : "(null)");
    sdxl_string_free(response);

    /* The status_request envelope echoes the request id. */
    response = sdxl_generate_json(engine, "{\"message_type\":\"status_request\",\"request_id\":\"status-1\"}");
    CHECK(response != NULL && is_success(response), "status response: %s", response ? response : "(null)");
    CHECK(contains(response, "\"request_id\":\"status-1\""), "status response lost the request id: %s", response);
    CHECK(contains(response, "builtin:tiny"), "status does not list the loaded model: %s", response);
    sdxl_string_free(response);

    /* sdxl_status_json reports the version and the requests served. */
    char *status = sdxl_status_json(engine);
    CHECK(status != NULL, "status_json returned NULL: %s", sdxl_last_error());
    CHECK(contains(status, "\"version\":\"" SDXL_VERSION_STRING "\""), "status: %s", status);
    CHECK(contains(status, "\"requests_served\":4"), "status should count 4 served requests: %s", status);
    sdxl_string_free(status);

    sdxl_free(engine);

    /* Every run used the same request id-less request: remove what was written. */
    remove_tree(output_dir);
    return report("generate");
}
