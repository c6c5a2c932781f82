/* fuzz_config.c — the JSON config reader (moe_config_apply_json, as for --config and the config
 * stored in checkpoints), then validation and a round trip through moe_config_to_json that must
 * give back the same text. */
#include "moe.h"
#include "fuzz_common.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *txt = fuzz_text(data, size);
    if (!txt) return 0;
    moe_config c = moe_config_default();
    if (moe_config_apply_json(&c, txt, "fuzz") == MOE_STATUS_OK && moe_config_validate(&c) == MOE_STATUS_OK)
        fuzz_config_round_trip(&c);
    free(txt);
    return 0;
}
