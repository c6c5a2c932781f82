/*
 * safetensors.c — reader and writer of the safetensors format
 * (https://huggingface.co/docs/safetensors): u64 little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the data.
 * The reader checks everything it is given: header length, JSON, dtypes, shapes against byte
 * sizes, offsets inside the data region, no overlaps beyond what the spec allows.
 */
#define _DEFAULT_SOURCE /* madvise */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"

#include <cjson/cJSON.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int dtype_size(const char *dt) {
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32") || !strcmp(dt, "U32")) return 4;
    if (!strcmp(dt, "F16") || !strcmp(dt, "BF16") || !strcmp(dt, "I16") || !strcmp(dt, "U16")) return 2;
    if (!strcmp(dt, "F64") || !strcmp(dt, "I64") || !strcmp(dt, "U64")) return 8;
    if (!strcmp(dt, "I8") || !strcmp(dt, "U8") || !strcmp(dt, "BOOL")) return 1;
    return 0;
}

void moe__st_free(moe__st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) {
        free(f->t[i].name);
        free(f->t[i].own);
    }
    free(f->t);
    if (f->map_len) munmap(f->buf, f->map_len);
    else free(f->buf);
    cJSON_Delete(f->metadata);
    memset(f, 0, sizeof *f);
}

static uint64_t header_length(const char *buf) {
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (uint8_t)buf[i];
    return hlen;
}

/* The first 8 + header-length bytes of a file (at least what one 1 MiB read gives); *size gets
 * the file's size. The caller checks the lengths, from the bytes returned. */
static char *read_header_bytes(const char *path, size_t *len, size_t *size) {
    char *buf = moe__read_file_prefix(path, 1u << 20, len, size);
    if (!buf || *len < 8) return buf;
    uint64_t hlen = header_length(buf);
    if (8 + hlen > *len && hlen <= *size - 8 && hlen <= (100u << 20)) { // a header beyond the first read
        free(buf);
        buf = moe__read_file_prefix(path, 8 + (size_t)hlen, len, size);
    }
    return buf;
}

/* One tensor entry of the header (it, named it->string) into t: dtype, shape and data offsets
 * checked against the data region (data is NULL when only the header was read). */
static moe_status parse_entry(moe__st_tensor *t, const cJSON *it, const char *path, const uint8_t *data,
                              uint64_t data_len) {
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    cJSON *shape = cJSON_GetObjectItemCaseSensitive(it, "shape");
    cJSON *offs = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(shape) || !cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' lacks dtype, shape or data_offsets", path, it->string);
    int es = dtype_size(dt->valuestring);
    if (!es || strlen(dt->valuestring) >= sizeof t->dtype)
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has unknown dtype '%s'", path, it->string, dt->valuestring);
    t->ndim = cJSON_GetArraySize(shape);
    if (t->ndim > 8)
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has %d dimensions (at most 8)", path, it->string, t->ndim);
    double numel = 1;
    int d = 0;
    for (cJSON *s = shape->child; s; s = s->next, d++) {
        if (!cJSON_IsNumber(s) || s->valuedouble < 0 || s->valuedouble > 1e15)
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has a bad shape entry", path, it->string);
        t->shape[d] = (int64_t)s->valuedouble;
        numel *= s->valuedouble;
    }
    double b = cJSON_GetArrayItem(offs, 0)->valuedouble, e = cJSON_GetArrayItem(offs, 1)->valuedouble;
    if (!cJSON_IsNumber(cJSON_GetArrayItem(offs, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(offs, 1)) || b < 0 ||
        e < b || e > (double)data_len)
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' data_offsets [%.0f, %.0f] lie outside the %llu data bytes (truncated?)",
                        path, it->string, b, e, (unsigned long long)data_len);
    if (numel * es != e - b)
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has %.0f bytes but its shape and dtype need %.0f", path,
                        it->string, e - b, numel * es);
    snprintf(t->dtype, sizeof t->dtype, "%s", dt->valuestring);
    t->nbytes = (int64_t)(e - b);
    t->data = data ? data + (int64_t)b : NULL;
    t->name = strdup(it->string);
    if (!t->name)
        return moe__err(MOE_STATUS_NOMEM, "out of memory reading '%s'", path);
    return MOE_STATUS_OK;
}

/* The whole file, mapped (private, copy on write: the file is never written through it), or read
 * when it cannot be mapped (MOE_NO_MMAP=1 in the environment reads it too). *mapped: its length
 * when mapped, else 0. NULL with the error set. */
static char *map_file(const char *path, size_t *len, size_t *mapped) {
    *mapped = 0;
    const char *no = getenv("MOE_NO_MMAP");
    if (no && no[0] == '1') return moe__read_file(path, len);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
        if (fd >= 0) close(fd);
        return moe__read_file(path, len); // its errors name the file
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return moe__read_file(path, len);
    *len = *mapped = (size_t)sb.st_size;
    return p;
}

/* Reads and checks a file; with header_only, only its header (tensors then have no data). */
static moe_status st_read(const char *path, moe__st_file *out, int header_only) {
    memset(out, 0, sizeof *out);
    size_t len, size, mapped = 0;
    char *buf = header_only ? read_header_bytes(path, &len, &size) : map_file(path, &len, &mapped);
    if (!buf) return MOE_STATUS_IO;
    if (!header_only) size = len;
    out->buf = buf;
    out->len = len;
    out->map_len = mapped;
    moe_status st = MOE_STATUS_OK;
    cJSON *root = NULL;
    if (size < 8) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': %zu bytes is too short for a safetensors file", path, size);
        goto fail;
    }
    uint64_t hlen = header_length(buf);
    if (hlen > size - 8 || hlen > (100u << 20) || 8 + hlen > len) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': header length %llu does not fit the %zu-byte file (truncated or not safetensors)",
                      path, (unsigned long long)hlen, size);
        goto fail;
    }
    root = cJSON_ParseWithLength(buf + 8, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': header is not a JSON object (not a safetensors file?)", path);
        goto fail;
    }
    int count = cJSON_GetArraySize(root);
    out->t = calloc((size_t)(count ? count : 1), sizeof(moe__st_tensor));
    if (!out->t) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory reading '%s'", path);
        goto fail;
    }
    const uint8_t *data = header_only ? NULL : (const uint8_t *)buf + 8 + hlen;
    uint64_t data_len = size - 8 - hlen;
    out->data = data;
    out->data_len = data_len;
    for (cJSON *it = root->child, *next; it; it = next) {
        next = it->next;
        if (!strcmp(it->string, "__metadata__")) {
            if (!cJSON_IsObject(it)) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': __metadata__ is not an object", path);
                goto fail;
            }
            cJSON_Delete(out->metadata); // a repeated key: the last one counts
            out->metadata = cJSON_DetachItemViaPointer(root, it); // kept: its keys are read later
            continue;
        }
        st = parse_entry(&out->t[out->n], it, path, data, data_len);
        if (st != MOE_STATUS_OK) goto fail;
        out->n++;
    }
    cJSON_Delete(root);
    return MOE_STATUS_OK;
fail:
    cJSON_Delete(root);
    moe__st_free(out);
    return st;
}

moe_status moe__st_read(const char *path, moe__st_file *out) { return st_read(path, out, 0); }


uint64_t moe__st_fnv(const moe__st_file *f, uint64_t basis, const void *p, size_t n) {
    enum { CHUNK = 64 << 20 };
    const uint8_t *q = p;
    uint64_t h = basis;
    for (size_t at = 0; at < n; at += CHUNK) {
        size_t k = n - at < CHUNK ? n - at : CHUNK;
        h = moe__fnv1a(h, q + at, k);
        moe__map_release(f->buf, f->map_len, q + at, k);
    }
    return h;
}
moe_status moe__st_read_header(const char *path, moe__st_file *out) { return st_read(path, out, 1); }

const moe__st_tensor *moe__st_find(const moe__st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

char *moe__st_meta(const moe__st_file *f, const char *key) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(f->metadata, key);
    return cJSON_IsString(it) ? strdup(it->valuestring) : NULL;
}

moe_status moe__st_out_open(moe__st_out *o, const char *path, const moe__st_entry *e, int n, const char *const *meta_keys,
                            const char *const *meta_vals, int n_meta, const char *hash_key) {
    memset(o, 0, sizeof *o);
    o->hash_at = -1;
    o->sum = MOE_FNV_INIT;
    cJSON *root = cJSON_CreateObject();
    if (!root) return moe__err(MOE_STATUS_NOMEM, "out of memory writing '%s'", path);
    static const char placeholder[] = "0000000000000000";
    if (n_meta > 0 || hash_key) {
        cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; i < n_meta; i++) cJSON_AddStringToObject(meta, meta_keys[i], meta_vals[i]);
        if (hash_key) cJSON_AddStringToObject(meta, hash_key, placeholder); // patched at the close
    }
    for (int i = 0; i < n; i++) {
        cJSON *t = cJSON_AddObjectToObject(root, e[i].name);
        cJSON_AddStringToObject(t, "dtype", e[i].dtype);
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        uint64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)e[i].shape[d]));
            numel *= (uint64_t)e[i].shape[d];
        }
        uint64_t bytes = numel * (uint64_t)dtype_size(e[i].dtype);
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)o->total));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(o->total + bytes)));
        o->total += bytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    // header padded with spaces to a multiple of 8 so the data is aligned
    size_t jl = json ? strlen(json) : 0, padded = (jl + 7) / 8 * 8;
    char *hdr = json ? malloc(8 + padded) : NULL;
    if (!hdr) {
        free(json);
        return moe__err(MOE_STATUS_NOMEM, "out of memory writing '%s'", path);
    }
    for (int i = 0; i < 8; i++) hdr[i] = (char)(((uint64_t)padded >> (8 * i)) & 0xff);
    memcpy(hdr + 8, json, jl);
    memset(hdr + 8 + jl, ' ', padded - jl);
    if (hash_key) { // where the value of hash_key lies: "KEY":"0000000000000000"
        char key[96];
        snprintf(key, sizeof key, "\"%s\":\"%s\"", hash_key, placeholder);
        const char *at = strstr(json, key);
        if (at) o->hash_at = 8 + (at - json) + (int64_t)strlen(key) - 17;
    }
    moe_status st = moe__afile_open(&o->f, path);
    if (st == MOE_STATUS_OK) st = moe__afile_write(&o->f, hdr, 8 + padded);
    if (st != MOE_STATUS_OK && o->f.tmp) moe__afile_abort(&o->f);
    free(hdr);
    free(json);
    return st;
}

moe_status moe__st_out_write(moe__st_out *o, const void *data, size_t n) {
    if (o->done + n > o->total)
        return moe__err(MOE_STATUS_ARG, "writing '%s': %llu bytes of data, more than the header's %llu", o->f.path,
                        (unsigned long long)(o->done + n), (unsigned long long)o->total);
    if (o->hash_at >= 0) o->sum = moe__fnv1a(o->sum, data, n);
    o->done += n;
    return moe__afile_write(&o->f, data, n);
}

moe_status moe__st_out_close(moe__st_out *o) {
    moe_status st = MOE_STATUS_OK;
    if (o->done != o->total)
        st = moe__err(MOE_STATUS_ARG, "writing '%s': %llu bytes of data, the header says %llu", o->f.path,
                      (unsigned long long)o->done, (unsigned long long)o->total);
    if (st == MOE_STATUS_OK && o->hash_at >= 0) {
        char sum[17];
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)o->sum);
        st = moe__afile_pwrite(&o->f, sum, 16, o->hash_at);
    }
    if (st != MOE_STATUS_OK) {
        moe__afile_abort(&o->f);
        return st;
    }
    return moe__afile_commit(&o->f);
}

void moe__st_out_abort(moe__st_out *o) {
    if (o->f.tmp) moe__afile_abort(&o->f);
}

moe_status moe__st_write(const char *path, const moe__st_entry *e, int n, const char *const *meta_keys,
                         const char *const *meta_vals, int n_meta) {
    moe__st_out o;
    moe_status st = moe__st_out_open(&o, path, e, n, meta_keys, meta_vals, n_meta, NULL);
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) numel *= (uint64_t)e[i].shape[d];
        st = moe__st_out_write(&o, e[i].data, (size_t)(numel * (uint64_t)dtype_size(e[i].dtype)));
    }
    if (st != MOE_STATUS_OK) {
        moe__st_out_abort(&o);
        return st;
    }
    return moe__st_out_close(&o);
}
