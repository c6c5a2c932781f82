/*
 * core.c — status messages, error reporting, allocation, clock, RNG (xoshiro256**), hashing,
 * and whole-file / atomic file I/O.
 */
#define _DEFAULT_SOURCE /* madvise */
#define _POSIX_C_SOURCE 200809L
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static const char *const status_msgs[] = {
#define MOE__X(name, msg) msg,
    MOE_STATUS_LIST(MOE__X)
#undef MOE__X
};

const char *moe_version(void) { return MOE_VERSION_STRING; }

const char *moe_build_info(void) {
    return MOE_VERSION_STRING " (openblas, openmp"
#ifdef MOE_HAVE_MPI
           ", mpi"
#endif
#ifdef MOE_HAVE_CUDA
           ", cuda"
#endif
           ")";
}

/* OpenBLAS's own reports (moe links OpenBLAS: CMake's BLA_VENDOR). */
extern char *openblas_get_corename(void);
extern char *openblas_get_config(void);
extern int openblas_get_num_threads(void);

const char *moe_blas_info(void) {
    static _Thread_local char buf[256];
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": its first two words, the name and version
    const char *sp = strchr(cfg, ' '), *sp2 = sp ? strchr(sp + 1, ' ') : NULL;
    int head = sp2 ? (int)(sp2 - cfg) : (int)strlen(cfg);
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#else
    int threads = 1;
#endif
    snprintf(buf, sizeof buf, "%.*s, kernel %s, %d threads", head, cfg, core ? core : "?", threads);
    return buf;
}

const char *moe_blas_core(void) {
    const char *core = openblas_get_corename();
    return core ? core : "?";
}

const char *moe_status_str(moe_status s) {
    if ((int)s < 0 || s >= MOE_STATUS_COUNT) return "unknown status";
    return status_msgs[s];
}

static _Thread_local char last_error[1024];

const char *moe_last_error(void) { return last_error; }

/* Formats into a buffer of its own first: a caller may pass moe_last_error() as an argument,
 * to wrap the error it got in its own context, and the thread's buffer is then both source and
 * destination of the formatting. A message longer than the buffer keeps its start and its end
 * around " ... ": the end is where the cause is ("...: File name too long" after a long path). */
moe_status moe__err(moe_status s, const char *fmt, ...) {
    enum { TAIL = 320 };
    char msg[sizeof last_error];
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    char *full = n >= (int)sizeof msg ? malloc((size_t)n + 1) : NULL;
    if (full) {
        vsnprintf(full, (size_t)n + 1, fmt, again);
        size_t head = sizeof msg - 1 - TAIL - 5;
        memcpy(msg + head, " ... ", 5);
        memcpy(msg + head + 5, full + n - TAIL, TAIL + 1);
        free(full);
    }
    va_end(again);
    va_end(ap);
    memcpy(last_error, msg, sizeof last_error);
    return s;
}

moe_status moe__pathf(char *buf, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    if (k >= 0 && (size_t)k < n) return MOE_STATUS_OK;
    moe_status st = k < 0 ? moe__err(MOE_STATUS_ARG, "path cannot be formatted from '%s'", fmt)
                          : moe__err(MOE_STATUS_ARG, "path too long: '%.240s...' has %d bytes, more than the %zu allowed",
                                     buf, k, n - 1);
    if (n) buf[0] = '\0'; // never the prefix of the path, which may name another file
    return st;
}

void *moe__malloc(size_t n) {
    void *p = NULL;
    if (n == 0) n = 64;
    size_t rounded = (n + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded) != 0) return NULL;
    return p;
}

void *moe__calloc(size_t n) {
    void *p = moe__malloc(n);
    if (p) memset(p, 0, n);
    return p;
}

double moe__now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- RNG */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void moe__rng_seed(moe__rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t moe__rng_u64(moe__rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float moe__rng_uniform(moe__rng *r) { return (float)(moe__rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

float moe__rng_normal(moe__rng *r) {
    /* Box-Muller from two uniforms; u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(moe__rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(moe__rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

void moe__shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    int k = snprintf(buf, n, "[");
    for (int d = 0; d < ndim && k > 0 && (size_t)k < n; d++)
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k > 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, "]");
}

uint64_t moe__fnv1a(uint64_t h, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

void *moe__take(moe__planner *p, size_t bytes) {
    size_t at = p->off;
    p->off += (bytes + 63) / 64 * 64;
    return p->base ? p->base + at : NULL;
}

/* ---------------------------------------------------------------- files */

char *moe__path_join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    else moe__err(MOE_STATUS_NOMEM, "out of memory");
    return p;
}

int moe__mkdir_p(const char *dir) {
    char path[4096]; // PATH_MAX: a longer dir is refused before any of its parents is made
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *q = path + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
        *q = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

char *moe__read_file_prefix(const char *path, size_t max, size_t *len, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        moe__err(MOE_STATUS_IO, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        moe__err(MOE_STATUS_IO, "'%s' is not a regular file", path);
        return NULL;
    }
    size_t n = (size_t)st.st_size < max ? (size_t)st.st_size : max;
    char *buf = moe__malloc(n + 1);
    if (!buf) {
        fclose(f);
        moe__err(MOE_STATUS_NOMEM, "cannot allocate %zu bytes to read '%s'", n, path);
        return NULL;
    }
    if (n && fread(buf, 1, n, f) != n) { // a read error, or the file shrank since fstat
        moe__err(MOE_STATUS_IO, "cannot read '%s': %s", path, ferror(f) ? strerror(errno) : "it is shorter than its size");
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    if (size) *size = (size_t)st.st_size;
    return buf;
}

char *moe__read_text(const char *path, const char *what, moe_status *st) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *st = moe__err(MOE_STATUS_IO, "cannot read %s '%s': %s", what, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) { // no fstat: a pipe has no size
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        char *b = realloc(buf, cap *= 2);
        if (!b) free(buf);
        buf = b;
    }
    if (!buf) {
        fclose(f);
        *st = moe__err(MOE_STATUS_NOMEM, "out of memory reading %s '%s'", what, path);
        return NULL;
    }
    int bad = ferror(f);
    fclose(f);
    buf[n] = 0;
    if (bad || strlen(buf) != n) {
        *st = bad ? moe__err(MOE_STATUS_IO, "cannot read %s '%s': %s", what, path, strerror(errno))
                  : moe__err(MOE_STATUS_CONFIG, "%s '%s' holds a NUL byte: it is not text", what, path);
        free(buf);
        return NULL;
    }
    *st = MOE_STATUS_OK;
    return buf;
}

char *moe__read_file(const char *path, size_t *len) { return moe__read_file_prefix(path, SIZE_MAX, len, NULL); }

moe_status moe__afile_open(moe__afile *a, const char *path) {
    memset(a, 0, sizeof *a);
    a->fd = -1;
    size_t plen = strlen(path);
    a->path = strdup(path);
    a->tmp = malloc(plen + 8);
    if (!a->path || !a->tmp) {
        moe__afile_abort(a);
        return moe__err(MOE_STATUS_NOMEM, "out of memory writing '%s'", path);
    }
    snprintf(a->tmp, plen + 8, "%s.tmp", path);
    if ((a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        moe_status st = moe__err(MOE_STATUS_IO, "cannot create '%s': %s", a->tmp, strerror(errno));
        moe__afile_abort(a);
        return st;
    }
    return MOE_STATUS_OK;
}

moe_status moe__afile_pwrite(moe__afile *a, const void *data, size_t n, int64_t at) {
    const char *p = data;
    while (n > 0) {
        ssize_t w = at < 0 ? write(a->fd, p, n) : pwrite(a->fd, p, n, (off_t)at);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return moe__err(MOE_STATUS_IO, "cannot write '%s': %s", a->tmp, strerror(errno));
        p += w;
        n -= (size_t)w;
        if (at >= 0) at += w;
    }
    return MOE_STATUS_OK;
}

moe_status moe__afile_write(moe__afile *a, const void *data, size_t n) { return moe__afile_pwrite(a, data, n, -1); }

void moe__afile_abort(moe__afile *a) {
    if (a->fd >= 0) {
        close(a->fd);
        unlink(a->tmp); // the previous file at path is untouched
    }
    free(a->path);
    free(a->tmp);
    memset(a, 0, sizeof *a);
    a->fd = -1;
}

moe_status moe__afile_commit(moe__afile *a) {
    moe_status st = MOE_STATUS_OK;
    if (fsync(a->fd) != 0) st = moe__err(MOE_STATUS_IO, "cannot sync '%s': %s", a->tmp, strerror(errno));
    if (close(a->fd) != 0 && st == MOE_STATUS_OK) st = moe__err(MOE_STATUS_IO, "cannot close '%s': %s", a->tmp, strerror(errno));
    a->fd = -1;
    if (st == MOE_STATUS_OK && rename(a->tmp, a->path) != 0)
        st = moe__err(MOE_STATUS_IO, "cannot rename '%s' to '%s': %s", a->tmp, a->path, strerror(errno));
    if (st != MOE_STATUS_OK) unlink(a->tmp);
    else {
        int dfd = open(dirname(a->path), O_RDONLY); // the rename itself, durable
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    free(a->path);
    free(a->tmp);
    a->path = a->tmp = NULL;
    return st;
}

moe_status moe__write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts) {
    moe__afile a;
    moe_status st = moe__afile_open(&a, path);
    for (int i = 0; i < n_parts && st == MOE_STATUS_OK; i++) st = moe__afile_write(&a, parts[i], lens[i]);
    if (st != MOE_STATUS_OK) {
        if (a.tmp) moe__afile_abort(&a);
        return st;
    }
    return moe__afile_commit(&a);
}

/* ---------------------------------------------------------------- memory */

static int64_t mem_limit; /* moe_memory_limit_set; 0: from the system */

void moe_memory_limit_set(int64_t bytes) { mem_limit = bytes > 0 ? bytes : 0; }

/* The first number in a small file, or -1 ("max" and unreadable files are -1). */
static int64_t file_number(const char *path) {
    FILE *f = fopen(path, "r");
    long long v = -1;
    if (f) {
        if (fscanf(f, "%lld", &v) != 1) v = -1;
        fclose(f);
    }
    return v;
}

int64_t moe__mem_available(const char **source) {
    if (mem_limit > 0) {
        *source = "--max-memory";
        return mem_limit;
    }
    int64_t avail = -1;
    *source = "MemAvailable in /proc/meminfo";
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        long long kb;
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) avail = (int64_t)kb * 1024;
    }
    if (f) fclose(f);
    // a cgroup limit (v2, then v1) below that: what is left of it
    static const char *const lim[][2] = {{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                                          {"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                           "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
    for (int i = 0; i < 2; i++) {
        int64_t max = file_number(lim[i][0]), cur = file_number(lim[i][1]);
        if (max <= 0 || max >= ((int64_t)1 << 60) || cur < 0) continue;
        if (avail < 0 || max - cur < avail) {
            avail = max - cur > 0 ? max - cur : 0;
            *source = i == 0 ? "the cgroup's memory.max less memory.current" : "the cgroup's memory limit less its usage";
        }
        break;
    }
    return avail;
}

moe_status moe__mem_check(int64_t need, const char *what, const char *advice) {
    const char *source;
    int64_t avail = moe__mem_available(&source);
    if (avail < 0 || need <= avail) return MOE_STATUS_OK;
    return moe__err(MOE_STATUS_NOMEM, "%s needs %.2f GiB (%lld bytes) but %.2f GiB (%lld bytes) are available (%s): %s",
                    what, (double)need / 1073741824.0, (long long)need, (double)avail / 1073741824.0, (long long)avail,
                    source, advice);
}

void moe__bf16_to_f32(float *dst, const uint16_t *src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t i = 0; i < n; i++) dst[i] = moe__f32_of_bf16(src[i]);
}

void moe__map_release(const void *map, size_t map_len, const void *p, size_t n) {
    if (!map || !map_len || !n) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page;
    uintptr_t b = ((uintptr_t)p + n) / page * page, end = (uintptr_t)map + map_len;
    if (b > end) b = end / page * page;
    if (a < (uintptr_t)map) a = (uintptr_t)map;
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}
