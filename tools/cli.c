/*
 * cli.c — the machinery of the `moe` commands (cli.h): exiting errors, the flag-table parser and
 * --help, the values the command line takes (numbers within a flag's range, --set KEY=VALUE,
 * token ids), and the few helpers the commands share: files written atomically, and what the
 * commands need of tokenizers (a checkpoint's tokenizer, the sidecar of `moe tokenize`'s shards,
 * the companion files of a model: tokenizer.json, tokenizer_config.json, generation_config.json).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

_Noreturn void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (moe_dist_size() > 1) fprintf(stderr, "moe (rank %d of %d): ", moe_dist_rank(), moe_dist_size());
    else fprintf(stderr, "moe: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    moe_dist_abort(code); // under MPI: ends every rank, none is left waiting in a collective
    exit(code);
}

void check(moe_status st) {
    if (st != MOE_STATUS_OK) die(1, "%s: %s", moe_status_str(st), moe_last_error());
}

/* ---------------------------------------------------------------- flags */

static const cli_flag *find_flag(const cli_command *cmd, const char *name) {
    for (int i = 0; i < cmd->n_flags; i++)
        if (!strcmp(cmd->flags[i].name, name)) return &cmd->flags[i];
    return NULL;
}

static void list_append(cli_list *l, char *v, int room) {
    if (!l->v && !(l->v = calloc((size_t)room, sizeof(char *)))) die(1, "out of memory");
    if (!v) die(1, "out of memory");
    l->v[l->n++] = v;
}

/* "key=value", to free (NULL when out of memory). */
static char *key_value(const char *key, const char *v) {
    size_t n = strlen(key) + strlen(v) + 2;
    char *kv = malloc(n);
    if (kv) snprintf(kv, n, "%s=%s", key, v);
    return kv;
}

/* Stores the value v of flag f in opts (room: how many values a list may get at most). */
static void store(const cli_flag *f, const char *v, void *opts, int room) {
    char *dest = (char *)opts + f->dest, err[512];
    double x = 0.0;
    if ((f->kind == CLI_INT || f->kind == CLI_REAL) && moe_arg_number(f, v, &x, err, sizeof err) != 0)
        die(2, "%s", err);
    if (f->set_key) {
        list_append((cli_list *)dest, key_value(f->set_key, v), room);
        return;
    }
    switch (f->kind) {
    case CLI_NONE: *(int *)dest = 1; break;
    case CLI_STRING: *(const char **)dest = v; break;
    case CLI_INT: *(long *)dest = (long)x; break;
    case CLI_REAL: *(double *)dest = x; break;
    case CLI_LIST: list_append((cli_list *)dest, strdup(v), room); break;
    }
}

void cli_parse(const cli_command *cmd, int argc, char **argv, void *opts) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cli_help(cmd, stdout);
            exit(0);
        }
        const cli_flag *f = find_flag(cmd, a);
        if (!f) die(2, "%s: unknown option '%s' (see moe %s --help)", cmd->name, a, cmd->name);
        if (f->kind != CLI_NONE && i + 1 >= argc) die(2, "%s needs a value", a);
        store(f, f->kind == CLI_NONE ? NULL : argv[++i], opts, argc);
        while (f->many && i + 1 < argc && argv[i + 1][0] != '-') store(f, argv[++i], opts, argc);
    }
    for (int i = 0; i < cmd->n_flags; i++) {
        const cli_flag *f = &cmd->flags[i];
        if (f->required && !*(const char **)((char *)opts + f->dest))
            die(2, "%s: %s is required (see moe %s --help)", cmd->name, f->name, cmd->name);
    }
}

void cli_help(const cli_command *cmd, FILE *f) {
    fprintf(f, "usage: moe %s\n\n%s\noptions:\n", cmd->usage, cmd->about);
    for (int i = 0; i < cmd->n_flags; i++) {
        const cli_flag *fl = &cmd->flags[i];
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", fl->name, fl->arg ? " " : "", fl->arg ? fl->arg : "");
        fprintf(f, "  %-18s ", left);
        for (const char *h = fl->help; *h; h++) { // later lines under the first
            fputc(*h, f);
            if (*h == '\n') fprintf(f, "%21s", "");
        }
        fputc('\n', f);
    }
    if (cmd->help_tail) {
        fputc('\n', f);
        cmd->help_tail(f);
    }
}

void cli_free(const cli_command *cmd, void *opts) {
    for (int i = 0; i < cmd->n_flags; i++) {
        const cli_flag *f = &cmd->flags[i];
        if (f->kind != CLI_LIST && !f->set_key) continue; // a set_key flag shares --set's list: freed once
        cli_list *l = (cli_list *)((char *)opts + f->dest);
        for (int j = 0; j < l->n; j++) free(l->v[j]);
        free(l->v);
        *l = (cli_list){0, NULL};
    }
}

/* ---------------------------------------------------------------- values */

int moe_arg_number(const cli_flag *f, const char *v, double *out, char *err, size_t n) {
    char *end;
    errno = 0;
    double x;
    if (f->kind == CLI_INT) {
        long long i = strtoll(v, &end, 10);
        x = (double)i;
        if (!*v || *end || errno || i < (long long)f->lo || i > (long long)f->hi) {
            snprintf(err, n, "%s needs an integer in [%.0f, %.0f], got '%s'", f->name, f->lo, f->hi, v);
            return -1;
        }
    } else {
        x = strtod(v, &end);
        if (!*v || *end || !(x >= f->lo && x <= f->hi)) { // NaN fails the range test too
            snprintf(err, n, "%s needs a number in [%g, %g], got '%s'", f->name, f->lo, f->hi, v);
            return -1;
        }
    }
    *out = x;
    return 0;
}

int moe_arg_set(moe_config *c, const char *kv, char *err, size_t n) {
    const char *eq = strchr(kv, '=');
    if (!eq) {
        snprintf(err, n, "--set needs KEY=VALUE, got '%s'", kv);
        return -1;
    }
    char key[128];
    if ((size_t)(eq - kv) >= sizeof key) {
        snprintf(err, n, "--set: config key '%.40s...' is too long (no key is)", kv);
        return -1;
    }
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = 0;
    if (moe_config_set(c, key, eq + 1) != MOE_STATUS_OK) {
        snprintf(err, n, "%s: %s", moe_status_str(MOE_STATUS_CONFIG), moe_last_error());
        return -1;
    }
    return 0;
}

int moe_arg_tokens(const char *text, const char *origin, int vocab, int max, int *tok, int *n_tok, char *err,
                   size_t n) {
    int T = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            int shown = (int)strcspn(p, " \t\r\n");
            snprintf(err, n, "'%s' holds '%.*s', which is not a token id", origin, shown < 20 ? shown : 20, p);
            return -1;
        }
        if (v < 0 || v >= vocab) {
            snprintf(err, n, "token %lld in '%s' is outside the vocabulary [0, %d)", v, origin, vocab);
            return -1;
        }
        if (T == max) {
            snprintf(err, n, "'%s' has more than seq_len = %d tokens", origin, max);
            return -1;
        }
        tok[T++] = (int)v;
        p = end;
    }
    if (T == 0) {
        snprintf(err, n, "'%s' has no tokens", origin);
        return -1;
    }
    *n_tok = T;
    return 0;
}

/* ---------------------------------------------------------------- helpers that exit */

void apply_keys(moe_config *c, const char *config, const cli_list *sets) {
    if (config) check(moe_config_apply_file(c, config));
    char err[1200];
    for (int i = 0; i < sets->n; i++)
        if (moe_arg_set(c, sets->v[i], err, sizeof err) != 0) die(strchr(sets->v[i], '=') ? 1 : 2, "%s", err);
}

int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) out[n++] = tok;
    return n;
}

char *str_dup(const char *s) {
    char *d = strdup(s);
    if (!d) die(1, "out of memory");
    return d;
}

char *concat(const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (!s) die(1, "out of memory");
    memcpy(s, prefix, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

char *path_in(const char *dir, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    size_t n = strlen(dir) + (size_t)len + 2;
    char *p = malloc(n);
    if (!p) die(1, "out of memory");
    int at = snprintf(p, n, "%s/", dir);
    va_start(ap, fmt);
    vsnprintf(p + at, n - (size_t)at, fmt, ap);
    va_end(ap);
    return p;
}

char *read_text(const char *path, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&buf, &cap, '\0', f); // the whole file: it stops early only after a NUL
    if (ferror(f)) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    fclose(f);
    if (n < 0) { // an empty file
        free(buf);
        buf = calloc(1, 1);
    }
    if (!buf) die(1, "out of memory");
    if (n > 0 && strlen(buf) != (size_t)n) die(1, "%s '%s' holds a NUL byte: it is not text", what, path);
    return buf;
}

char *read_bytes(const char *path, const char *what, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got = 1; buf && got > 0;) {
        if (n + 1 == cap && !(buf = realloc(buf, cap *= 2))) break;
        n += got = fread(buf + n, 1, cap - n - 1, f);
    }
    if (!buf) die(1, "out of memory reading %s '%s'", what, path);
    if (ferror(f)) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int exists(const char *path) { return access(path, F_OK) == 0; }

int64_t parse_size(const char *s) {
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},       {"B", 1},          {"KB", 1e3},        {"MB", 1e6},         {"GB", 1e9},
                 {"TB", 1e12}, {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}};
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !(v > 0)) return -1;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].unit)) return v * units[i].mult < 9e18 ? (int64_t)(v * units[i].mult) : -1;
    return -1;
}

/* ---------------------------------------------------------------- files written atomically */

/* The temporary files not yet renamed into place: removed at exit. */
static char **pending;
static int n_pending, cap_pending;

static void remove_pending(void) {
    for (int i = 0; i < n_pending; i++)
        if (pending[i]) unlink(pending[i]);
}

static void forget_pending(const char *tmp) {
    for (int i = 0; i < n_pending; i++)
        if (pending[i] == tmp) pending[i] = NULL;
    while (n_pending > 0 && !pending[n_pending - 1]) n_pending--;
}

atomic_file atomic_open(const char *path) {
    static int registered;
    if (!registered) atexit(remove_pending);
    registered = 1;
    atomic_file a = {NULL, strdup(path), malloc(strlen(path) + 5)};
    if (!a.path || !a.tmp) die(1, "out of memory");
    snprintf(a.tmp, strlen(path) + 5, "%s.tmp", path);
    if (n_pending == cap_pending) {
        char **p = realloc(pending, (size_t)(cap_pending = 2 * cap_pending + 16) * sizeof *p);
        if (!p) die(1, "out of memory");
        pending = p;
    }
    pending[n_pending++] = a.tmp;
    if (make_parent(path) != 0 || !(a.f = fopen(a.tmp, "wb"))) die(1, "cannot create '%s': %s", a.tmp, strerror(errno));
    return a;
}

void atomic_close(atomic_file *a) {
    if (fflush(a->f) != 0 || ferror(a->f) || fsync(fileno(a->f)) != 0) die(1, "cannot write '%s': %s", a->tmp, strerror(errno));
    if (fclose(a->f) != 0) die(1, "cannot write '%s': %s", a->tmp, strerror(errno));
    a->f = NULL;
}

void atomic_rename(atomic_file *a) {
    if (rename(a->tmp, a->path) != 0) die(1, "cannot rename '%s' to '%s': %s", a->tmp, a->path, strerror(errno));
    forget_pending(a->tmp);
    char *slash = strrchr(a->path, '/');
    if (slash) *slash = 0;
    int fd = open(slash ? (a->path[0] ? a->path : "/") : ".", O_RDONLY | O_DIRECTORY);
    if (fd >= 0) { // the rename itself made durable; a directory that cannot be opened still renamed
        fsync(fd);
        close(fd);
    }
    free(a->path);
    free(a->tmp);
    a->path = a->tmp = NULL;
}

void atomic_commit(atomic_file *a) {
    atomic_close(a);
    atomic_rename(a);
}

void copy_file(const char *src, const char *dst) {
    size_t len;
    char *buf = read_bytes(src, "file", &len);
    atomic_file a = atomic_open(dst);
    if (fwrite(buf, 1, len, a.f) != len) die(1, "cannot write '%s': %s", a.tmp, strerror(errno));
    atomic_commit(&a);
    free(buf);
}

void use_device(const char *device, const char *dtype, const moe_config *c) {
    moe_device d;
    if (moe_device_parse(device, dtype, &d) != MOE_STATUS_OK) die(2, "%s", moe_last_error());
    check(moe_device_supports(&d, c));
    check(moe_device_select(&d));
}

void use_max_memory(const char *size) {
    if (!size) return;
    int64_t b = parse_size(size);
    if (b <= 0) die(2, "--max-memory must be a size such as 16GB, 500MB or 2000000000, got '%s'", size);
    moe_memory_limit_set(b);
}

void use_device_for(const char *device, const char *dtype, const char *ckpt) {
    if (!device && !dtype) return;
    moe_config c;
    check(moe_checkpoint_config(ckpt, &c, NULL));
    use_device(device, dtype, &c);
}

int make_dirs(const char *dir) {
    char p[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof p) return errno = n ? ENAMETOOLONG : ENOENT, -1;
    memcpy(p, dir, n + 1);
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
            *s = '/';
        }
    return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int make_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return 0;
    char p[4096];
    size_t n = (size_t)(slash - path);
    if (n >= sizeof p) return errno = ENAMETOOLONG, -1;
    memcpy(p, path, n);
    p[n] = 0;
    return make_dirs(p);
}

void print_notices(const moe_dataset *d) {
    const char *n = moe_dataset_notice(d);
    while (*n) {
        const char *nl = strchr(n, '\n');
        int len = nl ? (int)(nl - n) : (int)strlen(n);
        fprintf(stderr, "moe: warning: %.*s\n", len, n);
        n += len + (nl != NULL);
    }
}

void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

/* ---------------------------------------------------------------- tokenizers */

/* The directory part of path ("." when it has none); to free. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return str_dup(".");
    if (slash == path) return str_dup("/");
    char *d = str_dup(path);
    d[slash - path] = 0;
    return d;
}

char *tokenizer_json(const char *path) { return is_dir(path) ? path_in(path, "tokenizer.json") : str_dup(path); }

char *tokenizer_config_beside(const char *json) {
    char *dir = dir_of(json), *cfg = path_in(dir, "tokenizer_config.json");
    free(dir);
    if (exists(cfg)) return cfg;
    free(cfg);
    return NULL;
}

char *ckpt_dir(const char *ckpt) { return is_dir(ckpt) ? str_dup(ckpt) : dir_of(ckpt); }

moe_tokenizer *ckpt_tokenizer(const char *ckpt) {
    char *dir = ckpt_dir(ckpt), *json = path_in(dir, "tokenizer.json");
    const char *name = strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir;
    if (!exists(json) && !strncmp(name, "step-", 5)) { // a kept checkpoint, RUN/checkpoints/step-N: RUN's
        char *run = path_in(dir, "../.."), *snaps = path_in(run, "checkpoints");
        if (is_dir(snaps)) {
            free(dir);
            free(json);
            dir = run;
            json = path_in(run, "tokenizer.json");
            run = NULL;
        }
        free(run);
        free(snaps);
    }
    moe_tokenizer *t = NULL;
    if (exists(json)) check(moe_tokenizer_load(dir, &t));
    free(json);
    free(dir);
    return t;
}

int sidecar_read(const char *path, shard_sidecar *s) {
    memset(s, 0, sizeof *s);
    // NAME_NNNNNN.bin: digits between the last '_' and ".bin"
    size_t n = strlen(path);
    if (n < 6 || strcmp(path + n - 4, ".bin")) return 0;
    const char *us = strrchr(path, '_'), *slash = strrchr(path, '/');
    if (!us || (slash && us < slash) || us + 1 == path + n - 4) return 0;
    for (const char *p = us + 1; p < path + n - 4; p++)
        if (*p < '0' || *p > '9') return 0;
    char *name = str_dup(path);
    name[us - path] = 0;
    char *json = concat(name, ".json");
    if (!exists(json)) {
        free(json);
        free(name);
        return 0;
    }
    s->path = json;
    char *text = read_text(json, "shard sidecar");
    cJSON *o = cJSON_Parse(text);
    const cJSON *hash = cJSON_GetObjectItemCaseSensitive(o, "tokenizer_hash"),
                *vocab = cJSON_GetObjectItemCaseSensitive(o, "vocab_size"),
                *dtype = cJSON_GetObjectItemCaseSensitive(o, "dtype");
    if (!cJSON_IsObject(o) || !cJSON_IsString(hash) || strlen(hash->valuestring) != 16 || !cJSON_IsNumber(vocab) ||
        vocab->valuedouble < 1 || vocab->valuedouble > INT_MAX || !cJSON_IsString(dtype) ||
        (strcmp(dtype->valuestring, "uint16") && strcmp(dtype->valuestring, "uint32")))
        die(1, "shard sidecar '%s' is not one that moe tokenize writes: it needs tokenizer_hash (16 hex digits), "
               "vocab_size and dtype (uint16 or uint32)", json);
    memcpy(s->hash, hash->valuestring, 17);
    s->vocab_size = (int)vocab->valuedouble;
    s->wide = !strcmp(dtype->valuestring, "uint32");
    cJSON_Delete(o);
    free(text);
    s->tokenizer = concat(name, ".tokenizer.json");
    s->tokenizer_config = concat(name, ".tokenizer_config.json");
    if (!exists(s->tokenizer)) {
        free(s->tokenizer);
        s->tokenizer = NULL;
    }
    if (!exists(s->tokenizer_config)) {
        free(s->tokenizer_config);
        s->tokenizer_config = NULL;
    }
    free(name);
    return 1;
}

void sidecar_free(shard_sidecar *s) {
    free(s->path);
    free(s->tokenizer);
    free(s->tokenizer_config);
    memset(s, 0, sizeof *s);
}

const char *copy_companions(const char *from, const char *to) {
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    static char copied[128];
    copied[0] = 0;
    char *dir = ckpt_dir(from);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *src = path_in(dir, "%s", names[i]), *dst = path_in(to, "%s", names[i]);
        if (exists(src)) {
            copy_file(src, dst);
            strcat(strcat(copied, copied[0] ? ", " : ""), names[i]);
        }
        free(src);
        free(dst);
    }
    free(dir);
    return copied;
}
