/* Helpers of the C tests that call the engine from several threads (POSIX: define
 * _POSIX_C_SOURCE before including). */
#ifndef SDXL_TEST_THREADS_H
#define SDXL_TEST_THREADS_H

#include <stdatomic.h>
#include <time.h>

#include "check.h"

static void sleep_ms(long ms) {
    struct timespec pause = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
}

/* One sdxl_generate_json call made on its own thread. */
struct call {
    SdxlEngine *engine;
    char request[512];
    char *response;
    atomic_int returned;
};

static void *generate_on_thread(void *argument) {
    struct call *call = (struct call *)argument;
    call->response = sdxl_generate_json(call->engine, call->request);
    atomic_store(&call->returned, 1);
    return NULL;
}

/* Polls the engine's status until `needle` shows up (or about 60 s pass). */
static int wait_for_status(SdxlEngine *engine, const char *needle) {
    for (int attempt = 0; attempt < 60000; attempt++) {
        char *status = sdxl_status_json(engine);
        int found = contains(status, needle);
        sdxl_string_free(status);
        if (found) {
            return 1;
        }
        sleep_ms(1);
    }
    return 0;
}

#endif
