/* fuzz_state.c — the training state reader (state.bin: magic, version, parameter count, length,
 * checksum, step, spike guard fields). The first input byte steers the fuzzer past the checks
 * it cannot solve by mutation: bit 0 rewrites the trailing checksum to match, bit 1 takes the
 * model's parameter count from the file (else 16), so the later checks are reached too. */
#include "train/train.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned ctl = data[0];
    size_t len = size - 1;
    char *buf = malloc(len ? len : 1); // exactly the file's bytes: ASan sees any read past them
    if (!buf) return 0;
    memcpy(buf, data + 1, len);
    if ((ctl & 1) && len >= 8) {
        uint64_t sum = moe__fnv1a(MOE_FNV_INIT, buf, len - 8);
        memcpy(buf + len - 8, &sum, 8);
    }
    int64_t P = 16;
    if ((ctl & 2) && len >= 32) memcpy(&P, buf + 24, 8);
    moe__state s;
    const void *opt;
    if (moe__state_parse(buf, len, "fuzz", P, &s, &opt) == MOE_STATUS_OK) {
        // the parser promised: 2P floats of moments inside the buffer, sane fields
        float acc = 0, x;
        for (int64_t i = 0; i < 2 * P; i++) memcpy(&x, (const char *)opt + 4 * i, 4), acc += x;
        if (s.step < 0 || s.ema_n < 0 || s.skipped_run < 0) abort();
        // what we write we read: re-encode (as version 2) and parse again
        size_t n2 = MOE_STATE_HEADER + (size_t)P * 8 + 8;
        char *b2 = malloc(n2);
        if (b2) {
            moe__state_header(&s, P, b2);
            memcpy(b2 + MOE_STATE_HEADER, opt, (size_t)P * 8);
            uint64_t sum = moe__fnv1a(MOE_FNV_INIT, b2, n2 - 8);
            memcpy(b2 + n2 - 8, &sum, 8);
            moe__state t;
            const void *opt2;
            if (moe__state_parse(b2, n2, "round trip", P, &t, &opt2) != MOE_STATUS_OK || t.step != s.step ||
                t.ema_n != s.ema_n || t.skipped_run != s.skipped_run || memcmp(&t.rng, &s.rng, sizeof t.rng) ||
                memcmp(&t.loss_ema, &s.loss_ema, 8) || memcmp(opt2, opt, (size_t)P * 8))
                abort();
            free(b2);
        }
        (void)acc;
    }
    free(buf);
    return 0;
}
