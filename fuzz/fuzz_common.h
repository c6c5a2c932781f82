/* fuzz_common.h — helpers of the libFuzzer targets: the parsers read files, so an input is
 * written to a per-process temporary file first; the config round trip two targets check. */
#ifndef MOE_FUZZ_COMMON_H
#define MOE_FUZZ_COMMON_H

#include "moe.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static inline const char *fuzz_file(const uint8_t *data, size_t size, const char *suffix) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/moe-fuzz-%d%s", (int)getpid(), suffix);
    char *slash = strrchr(path, '/');
    if (slash > path + 4) { // a suffix with a directory in it: make that directory
        *slash = 0;
        mkdir(path, 0755);
        *slash = '/';
    }
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    return path;
}

/* The input as a NUL-terminated string (to free), or NULL. */
static inline char *fuzz_text(const uint8_t *data, size_t size) {
    char *txt = malloc(size + 1);
    if (txt) memcpy(txt, data, size), txt[size] = 0;
    return txt;
}

/* What we write we read, unchanged: a valid config's JSON read back gives the same JSON. */
static inline void fuzz_config_round_trip(const moe_config *c) {
    char *j = moe_config_to_json(c);
    moe_config d = moe_config_default();
    if (!j || moe_config_apply_json(&d, j, "round trip") != MOE_STATUS_OK) abort();
    char *k = moe_config_to_json(&d);
    if (!k || strcmp(j, k) != 0) abort();
    free(j);
    free(k);
}

#endif
