/*
 * state.c — the training state file (state.bin): AdamW moments, step, data RNG and the loss
 * spike guard, with an FNV-1a checksum. A pure parser (moe__state_parse, fuzzed by
 * fuzz/fuzz_state.c) and an encoder; the trainer does the file I/O. Layout in docs/formats.md.
 *
 * Version 2 (written now) has a 96-byte header: version 1's 64 bytes, then the spike guard's
 * running mean, its step count and the steps skipped in a row. Version 1 files still load, with
 * the guard starting afresh as it did then.
 */
#include "train/train.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define STATE_MAGIC "MOESTATE"

static size_t header_len(uint32_t version) { return version == 1 ? 64 : MOE_STATE_HEADER; }

moe_status moe__state_parse(const char *buf, size_t len, const char *path, int64_t n_params, moe__state *out,
                            const void **opt) {
    memset(out, 0, sizeof *out);
    if (len < 64 || memcmp(buf, STATE_MAGIC, 8) != 0)
        return moe__err(MOE_STATUS_FORMAT, "'%s' is not a moe training state (bad magic)", path);
    uint32_t version;
    memcpy(&version, buf + 8, 4);
    if (version != 1 && version != MOE_STATE_VERSION)
        return moe__err(MOE_STATUS_FORMAT, "'%s': state version %u is not supported (expected 1 or %u)", path, version,
                        MOE_STATE_VERSION);
    int64_t P;
    memcpy(&out->step, buf + 16, 8);
    memcpy(&P, buf + 24, 8);
    size_t head = header_len(version);
    // P is checked before it sizes anything: a foreign count cannot overflow the length below
    if (P != n_params || n_params < 0 || (uint64_t)n_params > (SIZE_MAX - 200) / 8 || len != head + (size_t)n_params * 8 + 8)
        return moe__err(MOE_STATUS_FORMAT, "'%s': holds %lld parameters in %zu bytes; the model has %lld (truncated or foreign)",
                        path, (long long)P, len, (long long)n_params);
    size_t opt_bytes = (size_t)n_params * 8;
    uint64_t sum;
    memcpy(&sum, buf + head + opt_bytes, 8);
    if (sum != moe__fnv1a(MOE_FNV_INIT, buf, head + opt_bytes) && sum != moe__fnv1a(MOE_FNV_INIT_V0, buf, head + opt_bytes))
        return moe__err(MOE_STATUS_FORMAT, "'%s': checksum mismatch (the file is corrupt)", path);
    if (out->step < 0)
        return moe__err(MOE_STATUS_FORMAT, "'%s': step %lld is negative", path, (long long)out->step);
    memcpy(out->rng.s, buf + 32, 32);
    if (version >= 2) {
        int64_t skipped;
        memcpy(&out->loss_ema, buf + 64, 8);
        memcpy(&out->ema_n, buf + 72, 8);
        memcpy(&skipped, buf + 80, 8);
        if (!isfinite(out->loss_ema) || out->ema_n < 0 || skipped < 0 || skipped > INT32_MAX)
            return moe__err(MOE_STATUS_FORMAT, "'%s': spike guard state (mean %g over %lld steps, %lld skipped) is invalid",
                            path, out->loss_ema, (long long)out->ema_n, (long long)skipped);
        out->skipped_run = (int)skipped;
    }
    *opt = buf + head;
    return MOE_STATUS_OK;
}

size_t moe__state_header(const moe__state *s, int64_t n_params, char head[MOE_STATE_HEADER]) {
    memset(head, 0, MOE_STATE_HEADER);
    memcpy(head, STATE_MAGIC, 8);
    uint32_t version = MOE_STATE_VERSION;
    int64_t skipped = s->skipped_run;
    memcpy(head + 8, &version, 4);
    memcpy(head + 16, &s->step, 8);
    memcpy(head + 24, &n_params, 8);
    memcpy(head + 32, s->rng.s, 32);
    memcpy(head + 64, &s->loss_ema, 8);
    memcpy(head + 72, &s->ema_n, 8);
    memcpy(head + 80, &skipped, 8);
    return MOE_STATE_HEADER;
}
