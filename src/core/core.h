/*
 * core.h — what every layer of the library uses (core.c): assertions, error messages for
 * moe_last_error(), aligned allocation, the clock and phase timing, the RNG (xoshiro256**), the
 * FNV-1a hash, the memory planner, and whole-file and atomic file I/O. Not installed.
 */
#ifndef MOE_CORE_H
#define MOE_CORE_H

#include "moe.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Records a detailed message for moe_last_error() and returns s, so that callers can write
 * `return moe__err(MOE_STATUS_IO, "cannot open %s: %s", path, strerror(errno));`. */
moe_status moe__err(moe_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *moe__malloc(size_t n);             /* NULL on failure; aligned to 64 bytes */
void *moe__calloc(size_t n);             /* zeroed */
double moe__now(void);                   /* monotonic seconds */

/* Phase timing: t = moe__prof_begin(prof); ...; moe__prof_end(prof, MOE_PHASE_X, t) (no-op on NULL). */
static inline double moe__prof_begin(const double *prof) { return prof ? moe__now() : 0.0; }
static inline void moe__prof_end(double *prof, moe_phase p, double t0) {
    if (prof) prof[p] += moe__now() - t0;
}

/* xoshiro256** generator; state is plain data so it can be checkpointed. */
typedef struct { uint64_t s[4]; } moe__rng;
void moe__rng_seed(moe__rng *r, uint64_t seed);
uint64_t moe__rng_u64(moe__rng *r);
float moe__rng_uniform(moe__rng *r);     /* [0, 1) */
float moe__rng_normal(moe__rng *r);      /* N(0, 1), Box-Muller */

#define MOE_FNV_INIT 14695981039346656037ULL /* FNV-1a 64's offset basis */
/* The basis files written before 0.1.0's fix used (a digit short: not standard FNV-1a 64); their
 * checksums are still accepted when read. */
#define MOE_FNV_INIT_V0 1469598103934665603ULL
uint64_t moe__fnv1a(uint64_t h, const void *data, size_t n);
/* "[a, b, c]" into buf. */
void moe__shape_str(const int64_t *shape, int ndim, char *buf, size_t n);

/* A memory plan: buffers carved one after another (64-byte aligned) out of one allocation. A
 * first pass with base NULL only sizes (off ends as the bytes needed, pointers are NULL); a
 * second pass over the allocation hands out the same offsets. */
typedef struct {
    char *base;
    size_t off;
} moe__planner;
void *moe__take(moe__planner *p, size_t bytes);
#define MOE_TAKE_F(p, n) ((float *)moe__take(p, (size_t)(n) * sizeof(float)))
#define MOE_TAKE_I(p, n) ((int *)moe__take(p, (size_t)(n) * sizeof(int)))
#define MOE_TAKE_I64(p, n) ((int64_t *)moe__take(p, (size_t)(n) * sizeof(int64_t)))

/* A path formatted into buf (n bytes) like snprintf; MOE_STATUS_ARG "path too long: ..." naming
 * its start when it does not fit (buf then holds ""), so that a cut path never names another
 * file. */
moe_status moe__pathf(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* dir/name (caller frees); NULL with an error set when out of memory. */
char *moe__path_join(const char *dir, const char *name);
/* mkdir -p: creates dir and its missing parents; 0, or -1 with errno. */
int moe__mkdir_p(const char *dir);
/* Reads a whole file; *len gets its size. NULL with an error set on failure. */
char *moe__read_file(const char *path, size_t *len);
/* The first min(max, size) bytes of a file (NUL-terminated); *size gets its size (may be NULL). */
char *moe__read_file_prefix(const char *path, size_t max, size_t *len, size_t *size);
/* Reads a whole text file or pipe as a NUL-terminated string (caller frees), named as `what`
 * ("config") in errors; NULL with *st set when it cannot be read or holds a NUL byte. */
char *moe__read_text(const char *path, const char *what, moe_status *st);
/* A file written atomically: data goes to path.tmp; commit syncs it and renames it over path (and
 * syncs the directory); abort, or a failed commit, removes path.tmp and leaves path as it was. */
typedef struct {
    int fd;
    char *path, *tmp;
} moe__afile;
moe_status moe__afile_open(moe__afile *a, const char *path);
moe_status moe__afile_write(moe__afile *a, const void *data, size_t n);
/* At byte `at` of the file (a patch of what was written), or appended when at < 0. */
moe_status moe__afile_pwrite(moe__afile *a, const void *data, size_t n, int64_t at);
moe_status moe__afile_commit(moe__afile *a);
void moe__afile_abort(moe__afile *a);
/* Drops the pages of [p, p + n) (those wholly inside) of a private file mapping [map, map +
 * map_len) from the process: read once, they leave its resident memory (the page cache keeps
 * them; a later read maps them again). No-op when map is NULL or map_len 0 (a file read). */
void moe__map_release(const void *map, size_t map_len, const void *p, size_t n);

/* bf16: the upper half of an fp32, rounded to nearest even (NaN stays NaN); and back. */
static inline uint16_t moe__bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float moe__f32_of_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* n bf16 values to fp32 (in parallel when large). */
void moe__bf16_to_f32(float *dst, const uint16_t *src, int64_t n);

/* Memory available to this process: moe_memory_limit_set's limit, else the smaller of
 * MemAvailable and what the cgroup's limit leaves; -1 when unknown. *source says which. */
int64_t moe__mem_available(const char **source);
/* MOE_STATUS_NOMEM, before anything is allocated, when need bytes (of `what`, "the model's
 * weights and activations") pass what is available: the message gives both figures, where the
 * second comes from, and advice (the options that would fit). */
moe_status moe__mem_check(int64_t need, const char *what, const char *advice);
/* Writes data to path atomically: path.tmp, fsync, rename, fsync of the directory. */
moe_status moe__write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts);

#endif
