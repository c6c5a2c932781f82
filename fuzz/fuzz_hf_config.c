/* fuzz_hf_config.c — a Hugging Face config.json (moe import / --init-from): every field the
 * mapping reads, and what it refuses. */
#include "moe.h"
#include "fuzz_common.h"

#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/moe-fuzz-hf-%d", (int)getpid());
    mkdir(dir, 0755);
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    fclose(f);
    moe_config c;
    if (moe_hf_config(dir, &c) == MOE_STATUS_OK && moe_config_validate(&c) != MOE_STATUS_OK) abort(); // promised valid
    return 0;
}
