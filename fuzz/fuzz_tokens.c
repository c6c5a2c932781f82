/* fuzz_tokens.c — the data reader: llm.c token shards (magic 20240520 or 20240801, version,
 * token count, uint16 or uint32 tokens) and, for anything else, text as bytes; tokens checked
 * against the vocabulary when read, a window at a time and all at once. */
#include "moe.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".bin");
    moe_dataset *d = NULL;
    if (moe_dataset_load(&path, 1, 50304, &d) == MOE_STATUS_OK) {
        int64_t n = moe_dataset_len(d);
        int t[64];
        moe_status all = moe_dataset_check(d), some = MOE_STATUS_OK;
        for (int64_t at = 0; at < n && some == MOE_STATUS_OK; at += 64) {
            int k = n - at < 64 ? (int)(n - at) : 64;
            some = moe_dataset_read(d, at, k, t);
            for (int i = 0; some == MOE_STATUS_OK && i < k; i++)
                if (t[i] < 0 || t[i] >= 50304) abort(); // a token read is in the vocabulary
        }
        if (all != some) abort(); // the whole check and the windows agree
        moe_dataset_free(d);
    }
    return 0;
}
