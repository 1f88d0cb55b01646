/* sdxl_cancel_request cancels exactly one request: a queued one ends at once without running
 * while the one in flight carries on, and a cancel racing against the next request (early,
 * mid-run, or late: after the request returned, when the next one is starting) never
 * stops that next request. Runs under valgrind: every string freed once, no races on freed
 * memory. SDXL_RACE_ITERATIONS overrides the number of races (default 2000). */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "threads.h"
#include "sdxl.h"

/* One 64x64 step of builtin:tiny: the cheapest real request. */
static void tiny_request(char *buffer, size_t size, const char *request_id, int steps) {
    snprintf(buffer, size,
             "{\"prompt\":\"a cat\",\"models\":{\"base\":\"builtin:tiny\"},"
             "\"dimensions\":{\"width\":32,\"height\":32},"
             "\"hyperparameters\":{\"num_inference_steps\":%d,\"seed\":1,\"guidance_scale\":1},"
             "\"scheduler\":\"EulerDiscreteScheduler\",\"metadata\":{\"request_id\":\"%s\"}}",
             steps, request_id);
}

/* ---- A queued request is cancelled without running; the running one is untouched. ---- */

struct hold {
    atomic_int long_running; /* the "long" request reached its first denoise step */
    atomic_int release;      /* let the "long" request go on */
    atomic_int queued_steps; /* progress reports of the "queued" request (must stay 0) */
};

static bool hold_long_request(const SdxlProgress *progress, void *user_data) {
    struct hold *hold = (struct hold *)user_data;
    if (strcmp(progress->request_id, "queued") == 0) {
        atomic_fetch_add(&hold->queued_steps, 1);
    }
    if (strcmp(progress->request_id, "long") == 0 && progress->stage == 1) {
        atomic_store(&hold->long_running, 1);
        while (!atomic_load(&hold->release)) {
            sleep_ms(1);
        }
    }
    return true;
}

static void queued_request_is_cancelled_alone(SdxlEngine *engine) {
    struct hold hold;
    atomic_init(&hold.long_running, 0);
    atomic_init(&hold.release, 0);
    atomic_init(&hold.queued_steps, 0);
    CHECK(sdxl_set_progress_callback(engine, hold_long_request, &hold) == SDXL_OK, "set callback: %s", sdxl_last_error());

    struct call running = {.engine = engine, .response = NULL};
    struct call queued = {.engine = engine, .response = NULL};
    atomic_init(&running.returned, 0);
    atomic_init(&queued.returned, 0);
    tiny_request(running.request, sizeof running.request, "long", 2);
    tiny_request(queued.request, sizeof queued.request, "queued", 2);
    pthread_t running_thread, queued_thread;
    pthread_create(&running_thread, NULL, generate_on_thread, &running);
    while (!atomic_load(&hold.long_running)) {
        sleep_ms(1);
    }
    pthread_create(&queued_thread, NULL, generate_on_thread, &queued);
    CHECK(wait_for_status(engine, "\"waiting\":[\"queued\"]"), "the second request never showed up as queued");

    CHECK(sdxl_cancel_request(engine, "queued") == SDXL_OK, "cancel_request(queued): %s", sdxl_last_error());
    pthread_join(queued_thread, NULL);
    CHECK(!atomic_load(&running.returned), "the running request ended when the queued one was cancelled");
    CHECK(has_error_code(queued.response, "CANCELLED"), "queued response: %s", queued.response ? queued.response : "(null)");
    CHECK(atomic_load(&hold.queued_steps) == 0, "the cancelled queued request ran (%d progress reports)",
          atomic_load(&hold.queued_steps));

    atomic_store(&hold.release, 1);
    pthread_join(running_thread, NULL);
    CHECK(is_success(running.response), "the running request was hit by another's cancel: %s",
          running.response ? running.response : "(null)");
    sdxl_string_free(queued.response);
    sdxl_string_free(running.response);
    CHECK(sdxl_cancel_request(engine, "long") == SDXL_REQUEST_NOT_FOUND, "cancel of a finished request found it");
    CHECK(sdxl_set_progress_callback(engine, NULL, NULL) == SDXL_OK, "clear callback: %s", sdxl_last_error());
}

/* ---- Cancel of request A raced against the next request B, many times. ---- */

enum race_moment { CANCEL_AT_ONCE, CANCEL_WHILE_RUNNING, CANCEL_AFTER_RETURN, RACE_MOMENTS };

struct race {
    SdxlEngine *engine;
    int iterations;
    sem_t pair_start, pair_done;
    atomic_int a_running;  /* A reported progress */
    atomic_int a_returned; /* sdxl_generate_json(A) returned */
    char a_id[32], b_id[32];
    char *a_response, *b_response;
};

static bool note_a_running(const SdxlProgress *progress, void *user_data) {
    struct race *race = (struct race *)user_data;
    if (progress->request_id[0] == 'a') {
        atomic_store(&race->a_running, 1);
    }
    return true;
}

/* Runs A, then B at once, for every iteration: B starts while a late cancel of A may land. */
static void *run_pairs(void *argument) {
    struct race *race = (struct race *)argument;
    char request[512];
    for (int i = 0; i < race->iterations; i++) {
        sem_wait(&race->pair_start);
        tiny_request(request, sizeof request, race->a_id, 1);
        race->a_response = sdxl_generate_json(race->engine, request);
        atomic_store(&race->a_returned, 1);
        tiny_request(request, sizeof request, race->b_id, 1);
        race->b_response = sdxl_generate_json(race->engine, request);
        sem_post(&race->pair_done);
    }
    return NULL;
}

static void cancel_never_reaches_the_next_request(SdxlEngine *engine, int iterations) {
    struct race race = {.engine = engine, .iterations = iterations};
    sem_init(&race.pair_start, 0, 0);
    sem_init(&race.pair_done, 0, 0);
    atomic_init(&race.a_running, 0);
    atomic_init(&race.a_returned, 0);
    CHECK(sdxl_set_progress_callback(engine, note_a_running, &race) == SDXL_OK, "set callback: %s", sdxl_last_error());
    pthread_t worker;
    pthread_create(&worker, NULL, run_pairs, &race);

    int a_cancelled = 0, b_failed = 0, late_found = 0;
    for (int i = 0; i < iterations; i++) {
        snprintf(race.a_id, sizeof race.a_id, "a-%d", i);
        snprintf(race.b_id, sizeof race.b_id, "b-%d", i);
        atomic_store(&race.a_running, 0);
        atomic_store(&race.a_returned, 0);
        enum race_moment moment = (enum race_moment)(i % RACE_MOMENTS);
        sem_post(&race.pair_start);
        if (moment == CANCEL_WHILE_RUNNING) {
            while (!atomic_load(&race.a_running) && !atomic_load(&race.a_returned)) {
                sched_yield();
            }
        } else if (moment == CANCEL_AFTER_RETURN) {
            while (!atomic_load(&race.a_returned)) {
                sched_yield();
            }
        }
        int32_t result = sdxl_cancel_request(engine, race.a_id);
        CHECK(result == SDXL_OK || result == SDXL_REQUEST_NOT_FOUND, "cancel_request returned %d: %s", (int)result,
              sdxl_last_error());
        if (moment == CANCEL_AFTER_RETURN && result != SDXL_REQUEST_NOT_FOUND) {
            late_found++;
        }
        sem_wait(&race.pair_done);

        if (has_error_code(race.a_response, "CANCELLED")) {
            a_cancelled++;
        } else if (!is_success(race.a_response)) {
            CHECK(0, "A of race %d failed otherwise: %s", i, race.a_response ? race.a_response : "(null)");
        }
        if (!is_success(race.b_response)) {
            if (b_failed++ < 5) {
                fprintf(stderr, "race %d (moment %d): B failed: %s\n", i, (int)moment,
                        race.b_response ? race.b_response : "(null)");
            }
        }
        sdxl_string_free(race.a_response);
        sdxl_string_free(race.b_response);
    }
    pthread_join(worker, NULL);
    CHECK(b_failed == 0, "a cancel of A stopped the next request B %d times in %d races", b_failed, iterations);
    CHECK(late_found == 0, "a cancel after A returned still found A %d times", late_found);
    CHECK(a_cancelled > 0, "no cancel of A ever landed in %d races: the race was not exercised", iterations);
    printf("cancel_request: %d races, A cancelled %d times, B never\n", iterations, a_cancelled);
    sem_destroy(&race.pair_start);
    sem_destroy(&race.pair_done);
    CHECK(sdxl_set_progress_callback(engine, NULL, NULL) == SDXL_OK, "clear callback: %s", sdxl_last_error());
}

int main(void) {
    char output_dir[] = "/tmp/sdxl-c-cancel-XXXXXX";
    if (mkdtemp(output_dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    char config[512];
    snprintf(config, sizeof config, "{\"device\":\"cpu\",\"output_dir\":\"%s\",\"limits\":{\"min_size\":32}}", output_dir);
    const char *iterations_text = getenv("SDXL_RACE_ITERATIONS");
    int iterations = iterations_text != NULL ? atoi(iterations_text) : 2000;

    SdxlEngine *engine = sdxl_create(config);
    CHECK(engine != NULL, "sdxl_create failed: %s", sdxl_last_error());
    if (engine != NULL) {
        CHECK(sdxl_load_model(engine, "{\"base\":\"builtin:tiny\"}") == SDXL_OK, "load: %s", sdxl_last_error());
        queued_request_is_cancelled_alone(engine);
        cancel_never_reaches_the_next_request(engine, iterations);
        sdxl_free(engine);
    }
    remove_tree(output_dir);
    return report("cancel_request");
}
