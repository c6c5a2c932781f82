/*
 * data.c — training data: text files read as bytes (token = byte, V = 256) and llm.c token
 * shards (header of 256 int32: magic 20240520, version 1, token count; then count uint16
 * tokens; llm.c's uint32 shards, magic 20240801, are refused by name), concatenated in the
 * order given. A dataset remembers where it came from (its source,
 * the paths joined by commas; a split names its part) and what looked wrong without being an
 * error (its notices: binary data given as text).
 */
#define _POSIX_C_SOURCE 200809L
#include "core/core.h"

#include <string.h>

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_BYTES (256 * 4)
#define SHARD32_MAGIC 20240801 /* llm.c's uint32 shards (version 7), for vocabularies above 65536 */

struct moe_dataset {
    uint16_t *tokens;
    int64_t n;
    char *source;                /* "a.txt,b.txt", or "the last 10% of a.txt,b.txt" */
    char notice[512];            /* "" or warnings, one a line */
};

/* Signatures of what is not text; a text file never holds a NUL byte. */
static const char *binary_kind(const char *buf, size_t len) {
    static const struct {
        const char *magic, *name;
        size_t n;
    } sig[] = {{"\x1f\x8b", "gzip-compressed data", 2},   {"\x7f" "ELF", "an ELF executable", 4},
               {"PK\x03\x04", "a zip archive", 4},          {"\x28\xb5\x2f\xfd", "zstd-compressed data", 4},
               {"\xfd" "7zXZ", "xz-compressed data", 5},    {"BZh", "bzip2-compressed data", 3}};
    for (size_t i = 0; i < sizeof sig / sizeof sig[0]; i++)
        if (len >= sig[i].n && !memcmp(buf, sig[i].magic, sig[i].n)) return sig[i].name;
    return memchr(buf, 0, len < 4096 ? len : 4096) ? "binary data (NUL bytes)" : NULL;
}

static int32_t le32(const char *p) {
    const uint8_t *u = (const uint8_t *)p;
    return (int32_t)((uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Appends the tokens of one file to d (capacity grown as needed). */
static moe_status load_one(moe_dataset *d, int64_t *cap, const char *path, int vocab) {
    size_t len;
    char *buf = moe__read_file(path, &len);
    if (!buf) return MOE_STATUS_IO;
    moe_status st = MOE_STATUS_OK;
    const char *src;
    int64_t count;
    int is_shard = len >= 4 && le32(buf) == SHARD_MAGIC;
    if (is_shard) {
        if (len < SHARD_HEADER_BYTES) {
            st = moe__err(MOE_STATUS_DATA, "'%s': token shard is truncated (%zu bytes, header needs %d)", path, len,
                          SHARD_HEADER_BYTES);
            goto done;
        }
        int32_t version = le32(buf + 4);
        count = le32(buf + 8);
        if (version != SHARD_VERSION) {
            st = moe__err(MOE_STATUS_DATA, "'%s': token shard version %d is not supported (expected %d, uint16 tokens)",
                          path, version, SHARD_VERSION);
            goto done;
        }
        if (count < 0 || (uint64_t)len != SHARD_HEADER_BYTES + 2 * (uint64_t)count) {
            st = moe__err(MOE_STATUS_DATA, "'%s': token shard header says %d tokens but the file holds %zu bytes of tokens",
                          path, (int)count, len - SHARD_HEADER_BYTES);
            goto done;
        }
        src = buf + SHARD_HEADER_BYTES;
    } else {
        if (len >= 8 && le32(buf) == SHARD32_MAGIC) {
            st = moe__err(MOE_STATUS_DATA,
                          "'%s' is a uint32 token shard (magic %d, version %d): only uint16 shards (magic %d, "
                          "vocabularies of at most 65536) can be read yet",
                          path, SHARD32_MAGIC, le32(buf + 4), SHARD_MAGIC);
            goto done;
        }
        if (ends_with(path, ".bin")) {
            st = moe__err(MOE_STATUS_DATA, "'%s': not an llm.c token shard (magic %d, expected %d)", path,
                          len >= 4 ? le32(buf) : -1, SHARD_MAGIC);
            goto done;
        }
        src = buf;
        count = (int64_t)len;
        const char *kind = binary_kind(buf, len);
        size_t used = strlen(d->notice);
        if (kind && used < sizeof d->notice)
            snprintf(d->notice + used, sizeof d->notice - used,
                     "'%s' looks like %s, not text: it is read as bytes (vocab 256); decompress or tokenize it first\n",
                     path, kind);
    }
    if (count == 0) {
        st = moe__err(MOE_STATUS_DATA, "'%s' holds no tokens (empty file)", path);
        goto done;
    }
    if (d->n + count > *cap) {
        int64_t nc = (d->n + count) * 3 / 2 + 1024;
        uint16_t *t = realloc(d->tokens, (size_t)nc * sizeof(uint16_t));
        if (!t) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory loading '%s'", path);
            goto done;
        }
        d->tokens = t;
        *cap = nc;
    }
    for (int64_t i = 0; i < count; i++) {
        int tok = is_shard ? (int)((uint8_t)src[2 * i] | (uint8_t)src[2 * i + 1] << 8) : (int)(uint8_t)src[i];
        if (tok >= vocab) {
            st = moe__err(MOE_STATUS_DATA, "'%s': token %d at index %lld is outside the model's vocabulary (vocab_size %d)",
                          path, tok, (long long)i, vocab);
            goto done;
        }
        d->tokens[d->n + i] = (uint16_t)tok;
    }
    d->n += count;
done:
    free(buf);
    return st;
}

moe_status moe_dataset_load(const char *const *paths, int n_paths, int vocab_size, moe_dataset **out) {
    *out = NULL;
    if (n_paths < 1) return moe__err(MOE_STATUS_ARG, "no data files given");
    moe_dataset *d = calloc(1, sizeof *d);
    if (!d) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    int64_t cap = 0;
    size_t sl = 1;
    for (int i = 0; i < n_paths; i++) sl += strlen(paths[i]) + 1;
    if (!(d->source = calloc(sl, 1))) {
        free(d);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_paths; i++) {
        if (i) strcat(d->source, ",");
        strcat(d->source, paths[i]);
    }
    for (int i = 0; i < n_paths; i++) {
        moe_status st = load_one(d, &cap, paths[i], vocab_size);
        if (st != MOE_STATUS_OK) {
            moe_dataset_free(d);
            return st;
        }
    }
    *out = d;
    return MOE_STATUS_OK;
}

void moe_dataset_free(moe_dataset *d) {
    if (!d) return;
    free(d->tokens);
    free(d->source);
    free(d);
}

int64_t moe_dataset_len(const moe_dataset *d) { return d->n; }
const char *moe_dataset_source(const moe_dataset *d) { return d->source ? d->source : ""; }
const char *moe_dataset_notice(const moe_dataset *d) { return d->notice; }
const uint16_t *moe_dataset_tokens(const moe_dataset *d) { return d->tokens; }

moe_status moe_dataset_split(moe_dataset *d, float frac, moe_dataset **val) {
    *val = NULL;
    int64_t nv = (int64_t)((double)d->n * frac);
    if (!(frac > 0.0f && frac < 1.0f) || nv < 1 || nv >= d->n)
        return moe__err(MOE_STATUS_ARG, "cannot split %lld tokens with val_frac %g", (long long)d->n, frac);
    moe_dataset *v = calloc(1, sizeof *v);
    if (!v) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    v->tokens = malloc((size_t)nv * sizeof(uint16_t));
    if (!v->tokens) {
        free(v);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    memcpy(v->tokens, d->tokens + d->n - nv, (size_t)nv * sizeof(uint16_t));
    size_t sl = strlen(moe_dataset_source(d)) + 64;
    char *vs = malloc(sl), *ds = malloc(sl);
    if (!vs || !ds) {
        free(vs);
        free(ds);
        free(v->tokens);
        free(v);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    snprintf(vs, sl, "the last %g%% (%lld tokens) of %s", 100.0 * frac, (long long)nv, moe_dataset_source(d));
    snprintf(ds, sl, "the first %lld tokens of %s", (long long)(d->n - nv), moe_dataset_source(d));
    free(d->source);
    d->source = ds;
    v->source = vs;
    v->n = nv;
    d->n -= nv;
    *val = v;
    return MOE_STATUS_OK;
}
