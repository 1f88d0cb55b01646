/* sdxl_free while other threads are inside calls on the engine: the running request and the
 * queued one end with CANCELLED, sdxl_free returns only after both calls have returned, and
 * nothing touches freed memory (valgrind checks it). */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "threads.h"
#include "sdxl.h"

/* Enough steps that the request is still running when sdxl_free arrives. */
#define LONG_STEPS 150

struct progress {
    atomic_int denoise_steps; /* of the "running" request */
    atomic_int queued_reports;
};

static bool count_steps(const SdxlProgress *progress, void *user_data) {
    struct progress *seen = (struct progress *)user_data;
    if (strcmp(progress->request_id, "running") == 0 && progress->stage == 1) {
        atomic_fetch_add(&seen->denoise_steps, 1);
    }
    if (strcmp(progress->request_id, "queued") == 0) {
        atomic_fetch_add(&seen->queued_reports, 1);
    }
    return true;
}

static void request_with_id(char *buffer, size_t size, const char *request_id) {
    snprintf(buffer, size,
             "{\"prompt\":\"a cat\",\"models\":{\"base\":\"builtin:tiny\"},"
             "\"dimensions\":{\"width\":64,\"height\":64},"
             "\"hyperparameters\":{\"num_inference_steps\":%d,\"seed\":1},"
             "\"scheduler\":\"EulerDiscreteScheduler\",\"metadata\":{\"request_id\":\"%s\"}}",
             LONG_STEPS, request_id);
}

int main(void) {
    char output_dir[] = "/tmp/sdxl-c-free-XXXXXX";
    if (mkdtemp(output_dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    char config[512];
    snprintf(config, sizeof config, "{\"device\":\"cpu\",\"output_dir\":\"%s\",\"limits\":{\"min_size\":64}}", output_dir);

    SdxlEngine *engine = sdxl_create(config);
    CHECK(engine != NULL, "sdxl_create failed: %s", sdxl_last_error());
    if (engine == NULL) {
        return report("free_while_running");
    }
    CHECK(sdxl_load_model(engine, "{\"base\":\"builtin:tiny\"}") == SDXL_OK, "load: %s", sdxl_last_error());
    struct progress seen;
    atomic_init(&seen.denoise_steps, 0);
    atomic_init(&seen.queued_reports, 0);
    CHECK(sdxl_set_progress_callback(engine, count_steps, &seen) == SDXL_OK, "set callback: %s", sdxl_last_error());

    struct call running = {.engine = engine, .response = NULL};
    struct call queued = {.engine = engine, .response = NULL};
    request_with_id(running.request, sizeof running.request, "running");
    request_with_id(queued.request, sizeof queued.request, "queued");
    pthread_t running_thread, queued_thread;
    pthread_create(&running_thread, NULL, generate_on_thread, &running);
    while (atomic_load(&seen.denoise_steps) == 0) {
        sleep_ms(1);
    }
    pthread_create(&queued_thread, NULL, generate_on_thread, &queued);
    CHECK(wait_for_status(engine, "\"waiting\":[\"queued\"]"), "the second request never showed up as queued");

    /* Both threads are inside sdxl_generate_json now. */
    sdxl_free(engine);
    int steps_at_free = atomic_load(&seen.denoise_steps);
    pthread_join(running_thread, NULL);
    pthread_join(queued_thread, NULL);

    CHECK(has_error_code(running.response, "CANCELLED"), "running request: %s", running.response ? running.response : "(null)");
    CHECK(has_error_code(queued.response, "CANCELLED"), "queued request: %s", queued.response ? queued.response : "(null)");
    CHECK(steps_at_free < LONG_STEPS, "sdxl_free waited for all %d steps instead of cancelling", steps_at_free);
    CHECK(atomic_load(&seen.denoise_steps) == steps_at_free, "the request reported progress after sdxl_free returned");
    CHECK(atomic_load(&seen.queued_reports) == 0, "the queued request ran (%d progress reports)", atomic_load(&seen.queued_reports));
    sdxl_string_free(running.response);
    sdxl_string_free(queued.response);

    remove_tree(output_dir);
    return report("free_while_running");
}
