/* A few helpers shared by the C tests: CHECK records a failure and carries on, so one
 * run reports every broken rule; main returns failures() so run.sh sees the result. */
#ifndef SDXL_TEST_CHECK_H
#define SDXL_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sdxl.h"

static int check_failures = 0;
static int check_count = 0;

#define CHECK(condition, ...)                                                        \
    do {                                                                             \
        check_count++;                                                               \
        if (!(condition)) {                                                          \
            check_failures++;                                                        \
            fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #condition);   \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, "\n");                                                   \
        }                                                                            \
    } while (0)

static inline int contains(const char *haystack, const char *needle) {
    return haystack != NULL && strstr(haystack, needle) != NULL;
}

/* The response's error_code, as `"error_code":"NAME"` (serde_json writes no spaces). */
static inline int has_error_code(const char *response, const char *name) {
    char wanted[96];
    snprintf(wanted, sizeof wanted, "\"error_code\":\"%s\"", name);
    return contains(response, wanted);
}

static inline int is_success(const char *response) {
    return contains(response, "\"success\":true");
}

static inline int last_error_is_empty(void) {
    const char *text = sdxl_last_error();
    return text != NULL && text[0] == '\0';
}

static inline int last_error_is_set(void) {
    const char *text = sdxl_last_error();
    return text != NULL && text[0] != '\0';
}

static inline int report(const char *program) {
    if (check_failures != 0) {
        fprintf(stderr, "%s: %d of %d checks failed\n", program, check_failures, check_count);
        return 1;
    }
    printf("%s: all %d checks passed\n", program, check_count);
    return 0;
}

/* Removes a test's output folder and what the engine wrote in it. */
static inline void remove_tree(const char *dir) {
    char command[1200];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    if (system(command) != 0) {
        fprintf(stderr, "could not remove %s\n", dir);
    }
}

#endif
