/* Every bad input a host can hand the C ABI: NULL handles and strings, invalid UTF-8,
 * garbage and oversized JSON, a panic inside the engine. Each must give an error (a
 * code, NULL or an error response, and a non-empty sdxl_last_error) and never a crash;
 * each returned string is freed exactly once (valgrind checks it). Needs a debug build
 * of libsdxl: the `debug_panic` message exists only there. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "sdxl.h"

static const char *const STATUS_REQUEST = "{\"message_type\":\"status_request\"}";

struct log_counts {
    unsigned errors;
    unsigned panics;
};

static void on_log(uint32_t level, const char *target, const char *message, void *user_data) {
    struct log_counts *counts = (struct log_counts *)user_data;
    (void)target;
    if (level == 0) {
        counts->errors++;
    }
    if (message != NULL && strstr(message, "debug_panic") != NULL) {
        counts->panics++;
    }
}

static bool never_called(const SdxlProgress *progress, void *user_data) {
    (void)progress;
    (void)user_data;
    return true;
}

/* Runs a request that must fail with `code`; frees the response. */
static void expect_error_response(SdxlEngine *engine, const char *request, const char *code, const char *what) {
    char *response = sdxl_generate_json(engine, request);
    CHECK(response != NULL, "%s: generate returned NULL for a valid engine (%s)", what, sdxl_last_error());
    if (response != NULL) {
        CHECK(!is_success(response), "%s: succeeded: %s", what, response);
        CHECK(has_error_code(response, code), "%s: expected %s in %.300s", what, code, response);
        sdxl_string_free(response);
    }
}

static void null_engine_everywhere(void) {
    CHECK(sdxl_generate_json(NULL, STATUS_REQUEST) == NULL, "generate with a NULL engine");
    CHECK(last_error_is_set(), "generate with a NULL engine left no last error");
    CHECK(contains(sdxl_last_error(), "engine"), "last error does not name the engine: %s", sdxl_last_error());
    CHECK(sdxl_last_error_code() == SDXL_ERR_INVALID_ARGUMENT, "last error code %d", (int)sdxl_last_error_code());

    CHECK(sdxl_load_model(NULL, "{\"base\":\"builtin:tiny\"}") == SDXL_ERR_INVALID_ARGUMENT, "load with a NULL engine");
    CHECK(last_error_is_set(), "load with a NULL engine left no last error");

    CHECK(sdxl_status_json(NULL) == NULL, "status with a NULL engine");
    CHECK(last_error_is_set(), "status with a NULL engine left no last error");

    CHECK(sdxl_cancel(NULL) == SDXL_ERR_INVALID_ARGUMENT, "cancel with a NULL engine");
    CHECK(last_error_is_set(), "cancel with a NULL engine left no last error");

    CHECK(sdxl_cancel_request(NULL, "r-1") == SDXL_ERR_INVALID_ARGUMENT, "cancel_request with a NULL engine");
    CHECK(last_error_is_set(), "cancel_request with a NULL engine left no last error");

    CHECK(sdxl_set_progress_callback(NULL, never_called, NULL) == SDXL_ERR_INVALID_ARGUMENT, "callback, NULL engine");
    CHECK(last_error_is_set(), "set_progress_callback with a NULL engine left no last error");

    sdxl_free(NULL);
    sdxl_string_free(NULL);
    CHECK(sdxl_last_error() != NULL, "last error is never NULL");
}

static void bad_configs(void) {
    SdxlEngine *engine = sdxl_create("{not json");
    CHECK(engine == NULL, "create accepted garbage JSON");
    CHECK(last_error_is_set(), "create with garbage left no last error");

    engine = sdxl_create("{\"devise\":\"cpu\"}");
    CHECK(engine == NULL, "create accepted an unknown field");
    CHECK(contains(sdxl_last_error(), "devise"), "last error does not name the unknown field: %s", sdxl_last_error());

    engine = sdxl_create("{\"device\":\"tpu\"}");
    CHECK(engine == NULL, "create accepted device tpu");
    CHECK(last_error_is_set(), "create with a bad device left no last error");

    engine = sdxl_create("{\"device\":\"cpu\",\"output_dir\":\"\xff\xfe\"}");
    CHECK(engine == NULL, "create accepted invalid UTF-8");
    CHECK(contains(sdxl_last_error(), "UTF-8"), "last error does not say UTF-8: %s", sdxl_last_error());
    CHECK(sdxl_last_error_code() == SDXL_ERR_INVALID_ARGUMENT, "last error code %d", (int)sdxl_last_error_code());
}

static void bad_requests(SdxlEngine *engine) {
    expect_error_response(engine, NULL, "INVALID_ARGUMENT", "NULL request");
    CHECK(contains(sdxl_last_error(), "request_json"), "last error does not name request_json: %s", sdxl_last_error());

    expect_error_response(engine, "{\"prompt\":\"a \xc3\x28 cat\"}", "INVALID_ARGUMENT", "invalid UTF-8");
    expect_error_response(engine, "\xff", "INVALID_ARGUMENT", "a lone 0xff byte");
    expect_error_response(engine, "{not json", "INVALID_JSON", "garbage JSON");
    expect_error_response(engine, "", "INVALID_JSON", "an empty string");
    expect_error_response(engine, "[1,2,3]", "INVALID_JSON", "a JSON array");
    expect_error_response(engine, "\"just a string\"", "INVALID_JSON", "a JSON string");
    expect_error_response(engine, "{\"message_type\":\"reboot\"}", "VALIDATION_ERROR", "an unknown message type");
    expect_error_response(engine, "{\"message_type\":\"inference_request\",\"data\":[]}", "VALIDATION_ERROR",
                          "data that is not an object");
    expect_error_response(engine, "{\"prompt\":\"x\",\"models\":{\"base\":\"builtin:tiny\"},\"colour\":1}",
                          "VALIDATION_ERROR", "an unknown field");
    expect_error_response(engine, "{\"prompt\":\"x\",\"models\":{\"base\":\"no-such-model-anywhere\"},"
                                  "\"dimensions\":{\"width\":64,\"height\":64}}",
                          "MODEL_NOT_FOUND", "a model that does not exist");

    /* 20 MB of JSON: refused before parsing, as an error response. */
    size_t huge_size = 20u * 1024u * 1024u;
    char *huge = (char *)malloc(huge_size + 1);
    CHECK(huge != NULL, "malloc of 20 MB failed");
    if (huge != NULL) {
        const char *head = "{\"prompt\":\"";
        size_t head_len = strlen(head);
        memcpy(huge, head, head_len);
        memset(huge + head_len, 'a', huge_size - head_len - 2);
        huge[huge_size - 2] = '"';
        huge[huge_size - 1] = '}';
        huge[huge_size] = '\0';
        expect_error_response(engine, huge, "INVALID_JSON", "a 20 MB request");
        free(huge);
    }

    /* sdxl_load_model's error codes. */
    CHECK(sdxl_load_model(engine, NULL) == SDXL_ERR_INVALID_ARGUMENT, "load with a NULL model_json");
    CHECK(contains(sdxl_last_error(), "model_json"), "last error: %s", sdxl_last_error());
    CHECK(sdxl_load_model(engine, "\xff") == SDXL_ERR_INVALID_ARGUMENT, "load with invalid UTF-8");
    CHECK(sdxl_load_model(engine, "{not json") == SDXL_ERR_INVALID_JSON, "load with garbage JSON");
    CHECK(sdxl_load_model(engine, "{}") == SDXL_ERR_VALIDATION, "load without a model name");
    CHECK(sdxl_load_model(engine, "{\"base\":\"builtin:tiny\",\"colour\":1}") == SDXL_ERR_VALIDATION,
          "load with an unknown field");
    CHECK(sdxl_load_model(engine, "{\"base\":\"no-such-model-anywhere\"}") == SDXL_ERR_MODEL_NOT_FOUND,
          "load of a missing model");
    CHECK(sdxl_last_error_code() == SDXL_ERR_MODEL_NOT_FOUND, "last error code %d", (int)sdxl_last_error_code());
    CHECK(last_error_is_set(), "a failed load left no last error");

    /* sdxl_cancel_request: a bad id is an error; an id nothing carries is not. */
    CHECK(sdxl_cancel_request(engine, NULL) == SDXL_ERR_INVALID_ARGUMENT, "cancel_request with a NULL id");
    CHECK(contains(sdxl_last_error(), "request_id"), "last error does not name request_id: %s", sdxl_last_error());
    CHECK(sdxl_cancel_request(engine, "\xff") == SDXL_ERR_INVALID_ARGUMENT, "cancel_request with invalid UTF-8");
    CHECK(sdxl_cancel_request(engine, "no-such-request") == SDXL_REQUEST_NOT_FOUND, "cancel_request of an unknown id");
    CHECK(last_error_is_empty(), "an unknown id set the last error: %s", sdxl_last_error());

    /* A successful call clears the last error. */
    char *status = sdxl_status_json(engine);
    CHECK(status != NULL, "status_json: %s", sdxl_last_error());
    CHECK(last_error_is_empty(), "last error after a successful call: %s", sdxl_last_error());
    CHECK(sdxl_last_error_code() == SDXL_OK, "last error code after a successful call: %d", (int)sdxl_last_error_code());
    sdxl_string_free(status);
}

static void panic_is_caught(SdxlEngine *engine) {
    /* The panic's text goes to the host's log callback, never to stderr. */
    struct log_counts counts = {0, 0};
    CHECK(sdxl_set_log_callback(on_log, 0, &counts) == SDXL_OK, "set log callback: %s", sdxl_last_error());
    for (int attempt = 0; attempt < 2; attempt++) {
        expect_error_response(engine, "{\"message_type\":\"debug_panic\"}", "INTERNAL_ERROR", "a panic inside the engine");
        CHECK(contains(sdxl_last_error(), "panic"), "last error does not mention the panic: %s", sdxl_last_error());
    }
    CHECK(counts.panics == 2, "the log callback saw %u of 2 panics (%u error lines)", counts.panics, counts.errors);
    CHECK(sdxl_set_log_callback(NULL, 0, NULL) == SDXL_OK, "clear log callback: %s", sdxl_last_error());

    /* The engine and the process keep working after the panic. */
    char *response = sdxl_generate_json(engine, STATUS_REQUEST);
    CHECK(response != NULL && is_success(response), "status after a panic: %s", response ? response : "(null)");
    sdxl_string_free(response);
}

int main(void) {
    char output_dir[] = "/tmp/sdxl-c-bad-XXXXXX";
    if (mkdtemp(output_dir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    char config[512];
    snprintf(config, sizeof config, "{\"device\":\"cpu\",\"output_dir\":\"%s\",\"limits\":{\"min_size\":64}}", output_dir);

    null_engine_everywhere();
    bad_configs();

    SdxlEngine *engine = sdxl_create(config);
    CHECK(engine != NULL, "sdxl_create failed: %s", sdxl_last_error());
    if (engine != NULL) {
        bad_requests(engine);
        panic_is_caught(engine);
        sdxl_free(engine);
    }
    if (rmdir(output_dir) != 0) {
        fprintf(stderr, "note: %s was not empty\n", output_dir);
    }
    return report("bad_inputs");
}
