/* fuzz_hf_config.c — a Hugging Face config.json (moe import / --init-from): every field the
 * mapping reads, and what it refuses. */
#include "moe.h"
#include "fuzz_common.h"

#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, "-hf/config.json"); // /tmp/moe-fuzz-PID-hf/config.json
    char dir[256];
    snprintf(dir, sizeof dir, "%.*s", (int)(strlen(path) - strlen("/config.json")), path);
    moe_config c;
    if (moe_hf_config(dir, &c) == MOE_STATUS_OK && moe_config_validate(&c) != MOE_STATUS_OK) abort(); // promised valid
    return 0;
}
