/* The setup the feature programs (refiner, controlnet, upscale) share: a CPU engine writing
 * under a fresh temporary folder, and the working directory (the repository root, where
 * tests/fixtures/ is) for building fixture paths. Include after defining _POSIX_C_SOURCE. */
#ifndef SDXL_TEST_FIXTURE_ENGINE_H
#define SDXL_TEST_FIXTURE_ENGINE_H

#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "sdxl.h"

struct fixture_engine {
    SdxlEngine *engine;
    /* A mkdtemp template on entry, the folder's path after. */
    char output_dir[64];
    char cwd[512];
};

/* Fills `setup` (output_dir must hold a "...XXXXXX" template); false, with the reason on
 * stderr or recorded as a failed check, when anything fails. */
static inline bool open_fixture_engine(struct fixture_engine *setup) {
    if (mkdtemp(setup->output_dir) == NULL || getcwd(setup->cwd, sizeof setup->cwd) == NULL) {
        perror("setup");
        return false;
    }
    char config[1024];
    snprintf(config, sizeof config, "{\"device\":\"cpu\",\"output_dir\":\"%s\",\"limits\":{\"min_size\":64}}", setup->output_dir);
    setup->engine = sdxl_create(config);
    CHECK(setup->engine != NULL, "sdxl_create failed: %s", sdxl_last_error());
    return setup->engine != NULL;
}

static inline void close_fixture_engine(struct fixture_engine *setup) {
    sdxl_free(setup->engine);
    remove_tree(setup->output_dir);
}

#endif
