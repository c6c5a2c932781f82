/* fuzz_tokens.c — the data reader: llm.c token shards (magic 20240520, version, token count,
 * uint16 tokens) and, for anything else, text as bytes; tokens checked against the vocabulary. */
#include "moe.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".bin");
    moe_dataset *d = NULL;
    if (moe_dataset_load(&path, 1, 50304, &d) == MOE_STATUS_OK) {
        const uint16_t *t = moe_dataset_tokens(d);
        for (int64_t i = 0; i < moe_dataset_len(d); i++)
            if (t[i] >= 50304) abort(); // the reader promised every token is in the vocabulary
        moe_dataset_free(d);
    }
    return 0;
}
