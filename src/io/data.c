/*
 * data.c — training data, read where it lies. A dataset is a list of files concatenated in the
 * order given (a directory stands for its files, a glob pattern for its matches): text read as
 * bytes (token = byte, V = 256) and llm.c token shards (a header of 256 int32: magic, version,
 * token count; then the tokens: uint16 with magic 20240520 version 1, uint32 with magic 20240801
 * version 7), or tokens given in memory. Loading reads each file's header only; the tokens of a
 * window are read when asked for (moe_dataset_read: pread into the caller's buffer, widened in
 * place) and checked against the vocabulary there, a bad one named by file and byte offset. The
 * memory a dataset holds is its file table, whatever the corpus size. A split is a view of the
 * same files (a range of the concatenation). A dataset remembers where it came from (its
 * source: the paths as given; a split names its part) and what looked wrong without being an
 * error (its notices: binary data given as text).
 */
#define _POSIX_C_SOURCE 200809L
#include "core/core.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SHARD_MAGIC 20240520   /* uint16 tokens, version 1 */
#define SHARD_VERSION 1
#define SHARD32_MAGIC 20240801 /* llm.c's uint32 shards, version 7, for vocabularies above 65536 */
#define SHARD32_VERSION 7
#define SHARD_HEADER_BYTES (256 * 4)
#define MAX_OPEN 64            /* files kept open at once; the least recently read is closed */
#define CHECK_CHUNK (1 << 20)  /* tokens per read of moe_dataset_check */

typedef struct {
    char *path;      /* NULL for tokens in memory */
    int *mem;        /* the tokens in memory (moe_dataset_from_tokens) */
    int width;       /* bytes per token in the file: 1 text, 2 or 4 shard */
    int64_t offset;  /* where the tokens start in the file */
    int64_t n;       /* tokens */
    int fd;          /* -1 when closed */
    uint64_t used;   /* when last read, for closing the least recently read */
} data_file;

/* The files, shared by a dataset and the parts split off it. */
typedef struct {
    int refs, n, n_open;
    data_file *f;
    int64_t *start;  /* n + 1: where each file starts in the concatenation */
    uint64_t clock;
    int vocab;
} data_files;

struct moe_dataset {
    data_files *fs;
    int64_t lo, n;   /* the tokens [lo, lo + n) of the concatenation */
    int f0, f1;      /* the files [f0, f1) that hold them */
    char *source;    /* "a.txt,b.txt", or "the last 10% of a.txt,b.txt" */
    char notice[512];/* "" or warnings, one a line */
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

static uint32_t le32(const void *p) {
    const uint8_t *u = p;
    return (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Reads n bytes at off, through short reads; the bytes read (< n at the end of the file), or -1
 * with errno. */
static ssize_t pread_full(int fd, void *buf, size_t n, int64_t off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + (int64_t)got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* ---------------------------------------------------------------- the file list */

typedef struct {
    char **p;
    int n, cap;
} path_list;

static moe_status list_add(path_list *l, const char *path) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 16;
        char **p = realloc(l->p, (size_t)nc * sizeof *p);
        if (!p) return moe__err(MOE_STATUS_NOMEM, "out of memory");
        l->p = p;
        l->cap = nc;
    }
    if (!(l->p[l->n] = strdup(path))) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    l->n++;
    return MOE_STATUS_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* A directory's files, sorted by name: its token shards (*.bin) when it has any, else every
 * file whose name does not start with '.'. */
static moe_status add_dir(path_list *l, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return moe__err(MOE_STATUS_IO, "cannot read directory '%s': %s", dir, strerror(errno));
    path_list all = {0};
    moe_status st = MOE_STATUS_OK;
    int bins = 0;
    for (struct dirent *e; st == MOE_STATUS_OK && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char *p = moe__path_join(dir, e->d_name);
        struct stat s;
        if (!p) st = moe__err(MOE_STATUS_NOMEM, "out of memory");
        else if (stat(p, &s) == 0 && S_ISREG(s.st_mode)) {
            st = list_add(&all, p);
            bins += ends_with(p, ".bin");
        }
        free(p);
    }
    closedir(d);
    if (st == MOE_STATUS_OK && all.n == 0) st = moe__err(MOE_STATUS_DATA, "directory '%s' holds no data files", dir);
    if (all.n) qsort(all.p, (size_t)all.n, sizeof *all.p, cmp_str);
    for (int i = 0; i < all.n; i++) {
        if (st == MOE_STATUS_OK && (!bins || ends_with(all.p[i], ".bin"))) st = list_add(l, all.p[i]);
        free(all.p[i]);
    }
    free(all.p);
    return st;
}

/* A glob pattern's matches, sorted; each a regular file. */
static moe_status add_glob(path_list *l, const char *pattern) {
    glob_t g;
    int r = glob(pattern, 0, NULL, &g);
    if (r == GLOB_NOMATCH) return moe__err(MOE_STATUS_DATA, "no file matches '%s'", pattern);
    if (r != 0) return moe__err(MOE_STATUS_IO, "cannot expand '%s' (glob error %d)", pattern, r);
    moe_status st = MOE_STATUS_OK;
    for (size_t i = 0; i < g.gl_pathc && st == MOE_STATUS_OK; i++) {
        struct stat s;
        if (stat(g.gl_pathv[i], &s) == 0 && !S_ISREG(s.st_mode))
            st = moe__err(MOE_STATUS_DATA, "'%s' (matching '%s') is not a regular file", g.gl_pathv[i], pattern);
        else st = list_add(l, g.gl_pathv[i]);
    }
    globfree(&g);
    return st;
}

/* The files that one entry of moe_dataset_load's list stands for. */
static moe_status expand(path_list *l, const char *entry) {
    struct stat s;
    if (stat(entry, &s) == 0) return S_ISDIR(s.st_mode) ? add_dir(l, entry) : list_add(l, entry);
    if (strpbrk(entry, "*?[")) return add_glob(l, entry);
    return moe__err(MOE_STATUS_IO, "cannot open '%s': %s", entry, strerror(errno));
}

/* ---------------------------------------------------------------- loading */

/* Reads the header of f->path: what it holds and where. Notices go to notice. */
static moe_status open_one(data_file *f, char *notice, size_t notice_size) {
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe__err(MOE_STATUS_IO, "cannot open '%s': %s", f->path, strerror(errno));
    struct stat s;
    char head[4096];
    ssize_t len = fstat(fd, &s) == 0 ? pread_full(fd, head, sizeof head, 0) : -1;
    int err = errno;
    close(fd);
    if (len < 0) return moe__err(MOE_STATUS_IO, "cannot read '%s': %s", f->path, strerror(err));
    int64_t size = (int64_t)s.st_size;
    uint32_t magic = len >= 4 ? le32(head) : 0;
    if (magic == SHARD_MAGIC || magic == SHARD32_MAGIC) {
        int wide = magic == SHARD32_MAGIC, want = wide ? SHARD32_VERSION : SHARD_VERSION;
        f->width = wide ? 4 : 2;
        if (size < SHARD_HEADER_BYTES)
            return moe__err(MOE_STATUS_DATA, "'%s': token shard is truncated (%lld bytes, header needs %d)", f->path,
                            (long long)size, SHARD_HEADER_BYTES);
        int32_t version = (int32_t)le32(head + 4), count = (int32_t)le32(head + 8);
        if (version != want)
            return moe__err(MOE_STATUS_DATA, "'%s': token shard version %d is not supported (magic %u has version %d, %s tokens)",
                            f->path, version, magic, want, wide ? "uint32" : "uint16");
        if (count < 0 || size != SHARD_HEADER_BYTES + (int64_t)f->width * count)
            return moe__err(MOE_STATUS_DATA, "'%s': token shard header says %d tokens but the file holds %lld bytes of tokens "
                            "(%d per token)", f->path, (int)count, (long long)(size - SHARD_HEADER_BYTES), f->width);
        f->offset = SHARD_HEADER_BYTES;
        f->n = count;
    } else {
        if (ends_with(f->path, ".bin"))
            return moe__err(MOE_STATUS_DATA, "'%s': not an llm.c token shard (magic %d, expected %d or %d)", f->path,
                            len >= 4 ? (int)magic : -1, SHARD_MAGIC, SHARD32_MAGIC);
        f->width = 1;
        f->offset = 0;
        f->n = size;
        const char *kind = binary_kind(head, (size_t)len);
        size_t used = strlen(notice);
        if (kind && used < notice_size)
            snprintf(notice + used, notice_size - used,
                     "'%s' looks like %s, not text: it is read as bytes (vocab 256); decompress or tokenize it first\n",
                     f->path, kind);
    }
    if (f->n == 0) return moe__err(MOE_STATUS_DATA, "'%s' holds no tokens (empty %s)", f->path, f->width == 1 ? "file" : "shard");
    return MOE_STATUS_OK;
}

static void files_release(data_files *fs) {
    if (!fs || --fs->refs > 0) return;
    for (int i = 0; i < fs->n; i++) {
        if (fs->f[i].fd >= 0) close(fs->f[i].fd);
        free(fs->f[i].path);
        free(fs->f[i].mem);
    }
    free(fs->f);
    free(fs->start);
    free(fs);
}

/* The files [f0, f1) that hold d's tokens. */
static int file_of(const data_files *fs, int64_t pos);
static void set_range(moe_dataset *d, int64_t lo, int64_t n) {
    d->lo = lo;
    d->n = n;
    d->f0 = file_of(d->fs, lo);
    d->f1 = file_of(d->fs, lo + n - 1) + 1;
}

/* A dataset over n files (table zeroed, fds closed), to be filled in; NULL when out of memory. */
static moe_dataset *dataset_new(int n, int vocab) {
    moe_dataset *d = calloc(1, sizeof *d);
    data_files *fs = calloc(1, sizeof *fs);
    if (d && fs && (fs->f = calloc((size_t)n, sizeof *fs->f)) && (fs->start = calloc((size_t)n + 1, sizeof(int64_t)))) {
        fs->refs = 1;
        fs->n = n;
        fs->vocab = vocab;
        for (int i = 0; i < n; i++) fs->f[i].fd = -1;
        d->fs = fs;
        return d;
    }
    if (fs) free(fs->f);
    free(fs);
    free(d);
    return NULL;
}

/* Concatenation offsets and the whole range, once the files are known. */
static void dataset_finish(moe_dataset *d) {
    data_files *fs = d->fs;
    for (int i = 0; i < fs->n; i++) fs->start[i + 1] = fs->start[i] + fs->f[i].n;
    set_range(d, 0, fs->start[fs->n]);
}

moe_status moe_dataset_load(const char *const *paths, int n_paths, int vocab_size, moe_dataset **out) {
    *out = NULL;
    if (n_paths < 1) return moe__err(MOE_STATUS_ARG, "no data files given");
    if (vocab_size < 1) return moe__err(MOE_STATUS_ARG, "vocab_size %d is not positive", vocab_size);
    path_list l = {0};
    moe_status st = MOE_STATUS_OK;
    int expanded = 0;
    for (int i = 0; i < n_paths && st == MOE_STATUS_OK; i++) {
        int before = l.n;
        st = expand(&l, paths[i]);
        expanded |= l.n != before + 1 || strcmp(l.p[before], paths[i]);
    }
    moe_dataset *d = st == MOE_STATUS_OK ? dataset_new(l.n, vocab_size) : NULL;
    if (st == MOE_STATUS_OK && !d) st = moe__err(MOE_STATUS_NOMEM, "out of memory");
    for (int i = 0; i < l.n; i++) {
        if (st == MOE_STATUS_OK) {
            d->fs->f[i].path = l.p[i];
            st = open_one(&d->fs->f[i], d->notice, sizeof d->notice);
        } else {
            free(l.p[i]);
        }
    }
    free(l.p);
    if (st != MOE_STATUS_OK) {
        moe_dataset_free(d);
        return st;
    }
    // the source: the entries as given, and how many files they stand for when that differs
    size_t sl = 32;
    for (int i = 0; i < n_paths; i++) sl += strlen(paths[i]) + 1;
    if (!(d->source = calloc(sl, 1))) {
        moe_dataset_free(d);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_paths; i++) {
        if (i) strcat(d->source, ",");
        strcat(d->source, paths[i]);
    }
    if (expanded) snprintf(d->source + strlen(d->source), 32, " (%d files)", d->fs->n);
    dataset_finish(d);
    *out = d;
    return MOE_STATUS_OK;
}

moe_status moe_dataset_from_tokens(const int *tokens, int64_t n, int vocab_size, moe_dataset **out) {
    *out = NULL;
    if (n < 1) return moe__err(MOE_STATUS_ARG, "no tokens given");
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= vocab_size)
            return moe__err(MOE_STATUS_DATA, "token %d at index %lld is outside the model's vocabulary (vocab_size %d)",
                            tokens[i], (long long)i, vocab_size);
    moe_dataset *d = dataset_new(1, vocab_size);
    data_file *f = d ? &d->fs->f[0] : NULL;
    if (d) d->source = malloc(64);
    if (!d || !d->source || !(f->mem = malloc((size_t)n * sizeof(int)))) {
        moe_dataset_free(d);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    memcpy(f->mem, tokens, (size_t)n * sizeof(int));
    f->n = n;
    f->width = (int)sizeof(int);
    snprintf(d->source, 64, "%lld tokens in memory", (long long)n);
    dataset_finish(d);
    *out = d;
    return MOE_STATUS_OK;
}

void moe_dataset_free(moe_dataset *d) {
    if (!d) return;
    files_release(d->fs);
    free(d->source);
    free(d);
}

int64_t moe_dataset_len(const moe_dataset *d) { return d->n; }
const char *moe_dataset_source(const moe_dataset *d) { return d->source ? d->source : ""; }
const char *moe_dataset_notice(const moe_dataset *d) { return d->notice; }
int moe_dataset_n_files(const moe_dataset *d) { return d->f1 - d->f0; }

moe_data_file moe_dataset_file(const moe_dataset *d, int i) {
    const data_file *f = &d->fs->f[d->f0 + i];
    return (moe_data_file){f->path ? f->path : "", f->n, f->width};
}

/* ---------------------------------------------------------------- reading */

/* The file that holds position pos of the concatenation (0 <= pos < the total). */
static int file_of(const data_files *fs, int64_t pos) {
    int a = 0, b = fs->n - 1;
    while (a < b) {
        int m = (a + b + 1) / 2;
        if (fs->start[m] <= pos) a = m;
        else b = m - 1;
    }
    return a;
}

/* f's descriptor, opened when closed (closing the least recently read past MAX_OPEN). */
static moe_status file_fd(data_files *fs, data_file *f) {
    f->used = ++fs->clock;
    if (f->fd >= 0) return MOE_STATUS_OK;
    if (fs->n_open >= MAX_OPEN) {
        data_file *old = NULL;
        for (int i = 0; i < fs->n; i++)
            if (fs->f[i].fd >= 0 && (!old || fs->f[i].used < old->used)) old = &fs->f[i];
        close(old->fd);
        old->fd = -1;
        fs->n_open--;
    }
    if ((f->fd = open(f->path, O_RDONLY | O_CLOEXEC)) < 0)
        return moe__err(MOE_STATUS_IO, "cannot open '%s': %s", f->path, strerror(errno));
    fs->n_open++;
    return MOE_STATUS_OK;
}

/* Tokens [q, q + k) of file f into out, checked against the vocabulary. */
static moe_status read_file_tokens(data_files *fs, data_file *f, int64_t q, int64_t k, int *out) {
    if (f->mem) {
        memcpy(out, f->mem + q, (size_t)k * sizeof(int));
        return MOE_STATUS_OK;
    }
    moe_status st = file_fd(fs, f);
    if (st != MOE_STATUS_OK) return st;
    // the raw tokens land at the start of out and are widened in place from the last one down:
    // token j's int covers bytes [4j, 4j + 4), past every raw token i < j ([w i, w i + w), w <= 4)
    size_t bytes = (size_t)k * (size_t)f->width;
    int64_t at = f->offset + q * f->width;
    ssize_t got = pread_full(f->fd, out, bytes, at);
    if (got < 0) return moe__err(MOE_STATUS_IO, "cannot read '%s' at byte %lld: %s", f->path, (long long)at, strerror(errno));
    if ((size_t)got < bytes)
        return moe__err(MOE_STATUS_IO, "'%s' ended at byte %lld, before its %lld tokens (was it changed since it was opened?)",
                        f->path, (long long)(at + got), (long long)f->n);
    const uint8_t *raw = (const uint8_t *)out;
    uint32_t bad = 0;
    int64_t bad_at = -1;
    for (int64_t j = k - 1; j >= 0; j--) {
        const uint8_t *p = raw + j * f->width;
        uint32_t v = f->width == 1 ? p[0] : f->width == 2 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : le32(p);
        if (v >= (uint32_t)fs->vocab) bad = v, bad_at = j; // the first one, scanning down
        out[j] = (int)v;
    }
    if (bad_at >= 0)
        return moe__err(MOE_STATUS_DATA,
                        "'%s': token %u at byte offset %lld (token %lld of the file) is outside the model's vocabulary "
                        "(vocab_size %d)", f->path, bad, (long long)(f->offset + (q + bad_at) * f->width),
                        (long long)(q + bad_at), fs->vocab);
    return MOE_STATUS_OK;
}

moe_status moe_dataset_read(const moe_dataset *d, int64_t start, int64_t n, int *out) {
    if (start < 0 || n < 0 || start + n > d->n)
        return moe__err(MOE_STATUS_ARG, "tokens [%lld, %lld) are outside the dataset's %lld (%s)", (long long)start,
                        (long long)(start + n), (long long)d->n, moe_dataset_source(d));
    data_files *fs = d->fs;
    int64_t pos = d->lo + start;
    for (int i = n ? file_of(fs, pos) : 0; n > 0; i++) {
        int64_t q = pos - fs->start[i], k = fs->f[i].n - q < n ? fs->f[i].n - q : n;
        moe_status st = read_file_tokens(fs, &fs->f[i], q, k, out);
        if (st != MOE_STATUS_OK) return st;
        out += k;
        pos += k;
        n -= k;
    }
    return MOE_STATUS_OK;
}

moe_status moe__dataset_window(const moe_dataset *d, int64_t start, int T, int *tok, int *tgt) {
    moe_status st = moe_dataset_read(d, start, T, tok);
    if (st == MOE_STATUS_OK) st = moe_dataset_read(d, start + T, 1, tgt + T - 1);
    if (st == MOE_STATUS_OK) memcpy(tgt, tok + 1, (size_t)(T - 1) * sizeof(int));
    return st;
}

moe_status moe_dataset_check(const moe_dataset *d) {
    int *buf = malloc((size_t)CHECK_CHUNK * sizeof(int));
    if (!buf) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    moe_status st = MOE_STATUS_OK;
    for (int64_t at = 0; at < d->n && st == MOE_STATUS_OK; at += CHECK_CHUNK)
        st = moe_dataset_read(d, at, d->n - at < CHECK_CHUNK ? d->n - at : CHECK_CHUNK, buf);
    free(buf);
    return st;
}

moe_status moe_dataset_split(moe_dataset *d, float frac, moe_dataset **val) {
    *val = NULL;
    int64_t nv = (int64_t)((double)d->n * frac);
    if (!(frac > 0.0f && frac < 1.0f) || nv < 1 || nv >= d->n)
        return moe__err(MOE_STATUS_ARG, "cannot split %lld tokens with val_frac %g", (long long)d->n, frac);
    moe_dataset *v = calloc(1, sizeof *v);
    size_t sl = strlen(moe_dataset_source(d)) + 64;
    char *vs = malloc(sl), *ds = malloc(sl);
    if (!v || !vs || !ds) {
        free(vs);
        free(ds);
        free(v);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    snprintf(vs, sl, "the last %g%% (%lld tokens) of %s", 100.0 * frac, (long long)nv, moe_dataset_source(d));
    snprintf(ds, sl, "the first %lld tokens of %s", (long long)(d->n - nv), moe_dataset_source(d));
    free(d->source);
    d->source = ds;
    v->source = vs;
    v->fs = d->fs;
    d->fs->refs++;
    set_range(v, d->lo + d->n - nv, nv);
    set_range(d, d->lo, d->n - nv);
    *val = v;
    return MOE_STATUS_OK;
}
