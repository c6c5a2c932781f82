/*
 * cmd_tok.c — `moe tokenize`: a Hugging Face tokenizer.json (the library's src/tok/) from the
 * command line: the ids of a text (--ids), the text of ids (--decode), and llm.c token shards of
 * documents for training (--data), with a JSON sidecar that names the tokenizer; and what the
 * other commands need of tokenizers: a checkpoint's tokenizer, a shard's sidecar, and the
 * companion files (tokenizer.json, tokenizer_config.json, generation_config.json) that travel
 * with a model.
 *
 * Shards are those of llm.c (dev/data/fineweb.py): PREFIX_000000.bin, PREFIX_000001.bin, ...,
 * each a header of 256 little-endian int32 ([0] magic, [1] version, [2] token count) and then the
 * tokens: uint16 (magic 20240520, version 1) when the vocabulary has at most 65536 ids, else
 * uint32 (magic 20240801, version 7). Each document is preceded by the tokenizer's EOT token and
 * encoded without the post-processor's special tokens (llm.c's encode_ordinary); a document may
 * run on into the next shard. Documents are encoded in parallel, a batch at a time, and appended
 * in input order: the shards do not depend on the thread count. The shards are written to
 * PREFIX_NNNNNN.bin.tmp and renamed into place only when all are done, then the sidecar; a run
 * that fails leaves no shard behind.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define SHARD16_MAGIC 20240520
#define SHARD16_VERSION 1
#define SHARD32_MAGIC 20240801
#define SHARD32_VERSION 7
#define SHARD_HEADER_INTS 256

/* ---------------------------------------------------------------- shared with other commands */

static char *str_dup(const char *s) {
    char *d = strdup(s);
    if (!d) die(1, "out of memory");
    return d;
}

/* prefix followed by suffix; to free. */
static char *concat(const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (!s) die(1, "out of memory");
    memcpy(s, prefix, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

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

/* ---------------------------------------------------------------- tokenize */

typedef struct {
    const char *tokenizer, *ids, *decode, *out;
    cli_list data;
    long threads, shard_tokens; /* threads 0: all cores */
    int no_special, skip_special;
} tok_opts;

#define OPT(field) offsetof(tok_opts, field)
static const cli_flag tok_flags[] = {
    {"--tokenizer", CLI_STRING, "PATH", OPT(tokenizer),
     .help = "a Hugging Face tokenizer.json, or a directory holding one (and\n"
             "tokenizer_config.json, which names BOS and EOS)",
     .required = 1},
    {"--ids", CLI_STRING, "FILE", OPT(ids), .help = "print the ids of FILE's text, space-separated, on one line"},
    {"--no-special", CLI_NONE, NULL, OPT(no_special),
     .help = "--ids without the post-processor's special tokens (BOS)"},
    {"--decode", CLI_STRING, "FILE", OPT(decode),
     .help = "write the text of FILE's ids (whitespace-separated) to stdout, as it is"},
    {"--skip-special", CLI_NONE, NULL, OPT(skip_special), .help = "--decode without the special tokens"},
    {"--data", CLI_LIST, "FILES", OPT(data),
     .help = "write token shards of these files, comma-separated, repeatable: text\n"
             "files (a document each) and .jsonl files (a document per line)"},
    {"--out", CLI_STRING, "PREFIX", OPT(out),
     .help = "--data writes PREFIX_000000.bin, ..., the sidecar PREFIX.json and\n"
             "PREFIX.tokenizer.json (and PREFIX.tokenizer_config.json)"},
    {"--threads", CLI_INT, "N", OPT(threads), .help = "threads that encode documents (default: all cores)", .lo = 1,
     .hi = 4096},
    {"--shard-tokens", CLI_INT, "N", OPT(shard_tokens), .help = "tokens per shard (default 100000000, llm.c's)",
     .lo = 1, .hi = INT_MAX},
};
#undef OPT

/* ---------------------------------------------------------------- --ids, --decode */

static void print_ids(const moe_tokenizer *t, const char *path, int add_special) {
    size_t len, n = 0, cap = 0;
    char *text = read_bytes(path, "text file", &len);
    int *ids = NULL;
    check(moe_tokenizer_encode(t, text, len, add_special, &ids, &n, &cap));
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    free(ids);
    free(text);
}

static void print_text(const moe_tokenizer *t, const char *path, int skip_special) {
    char *text = read_text(path, "token file"), err[512];
    size_t words = 1, len;
    for (const char *p = text; *p; p++) words += *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r';
    int *ids = malloc(words * sizeof(int)), n = 0;
    if (!ids) die(1, "out of memory");
    if (text[strspn(text, " \t\r\n")] && // no ids: no text
        moe_arg_tokens(text, path, moe_tokenizer_vocab_size(t), (int)(words < INT_MAX ? words : INT_MAX), ids, &n,
                       err, sizeof err) != 0)
        die(1, "tokenize: %s", err);
    char *out;
    check(moe_tokenizer_decode(t, ids, (size_t)n, skip_special, &out, &len));
    if (fwrite(out, 1, len, stdout) != len || fflush(stdout) != 0) die(1, "tokenize: cannot write the text");
    free(out);
    free(ids);
    free(text);
}

/* ---------------------------------------------------------------- --data: shards */

/* The shards being written: the open one and the names of all, pending until shards_finish. */
typedef struct {
    const char *prefix;
    int wide;                       /* uint32 tokens */
    int64_t per_shard, in_shard;    /* tokens per shard; tokens in the open one */
    int64_t total;
    atomic_file open;               /* open.f NULL when no shard is open */
    atomic_file *done;              /* closed shards, renamed by shards_finish */
    int n_shards;
    unsigned char *buf;             /* little-endian tokens on their way to the file */
} shard_writer;

static void put_i32(unsigned char *p, int32_t v) {
    uint32_t u = (uint32_t)v;
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(u >> 8 * i);
}

static void shard_close(shard_writer *w) {
    unsigned char head[SHARD_HEADER_INTS * 4] = {0};
    put_i32(head, w->wide ? SHARD32_MAGIC : SHARD16_MAGIC);
    put_i32(head + 4, w->wide ? SHARD32_VERSION : SHARD16_VERSION);
    put_i32(head + 8, (int32_t)w->in_shard);
    if (fseek(w->open.f, 0, SEEK_SET) != 0 || fwrite(head, 1, sizeof head, w->open.f) != sizeof head)
        die(1, "cannot write '%s': %s", w->open.tmp, strerror(errno));
    atomic_close(&w->open);
    w->done[w->n_shards++] = w->open;
    w->open.f = NULL;
}

/* Appends n token ids (each < the vocabulary, so within the dtype) to the shards. */
static void shard_write(shard_writer *w, const int *ids, size_t n) {
    enum { CHUNK = 1 << 16 };
    size_t width = w->wide ? 4 : 2;
    while (n > 0) {
        if (!w->open.f) {
            if (w->n_shards % 64 == 0) {
                atomic_file *d = realloc(w->done, (size_t)(w->n_shards + 64) * sizeof *d);
                if (!d) die(1, "out of memory");
                w->done = d;
            }
            char name[64];
            snprintf(name, sizeof name, "_%06d.bin", w->n_shards);
            char *path = concat(w->prefix, name);
            w->open = atomic_open(path);
            free(path);
            static const unsigned char zero[SHARD_HEADER_INTS * 4];
            if (fwrite(zero, 1, sizeof zero, w->open.f) != sizeof zero) // the header, filled in at the end
                die(1, "cannot write '%s': %s", w->open.tmp, strerror(errno));
            w->in_shard = 0;
        }
        size_t room = (size_t)(w->per_shard - w->in_shard), k = n < room ? n : room;
        if (k > CHUNK) k = CHUNK;
        for (size_t i = 0; i < k; i++) {
            uint32_t v = (uint32_t)ids[i];
            for (size_t b = 0; b < width; b++) w->buf[i * width + b] = (unsigned char)(v >> 8 * b);
        }
        if (fwrite(w->buf, width, k, w->open.f) != k) die(1, "cannot write '%s': %s", w->open.tmp, strerror(errno));
        w->in_shard += (int64_t)k;
        w->total += (int64_t)k;
        ids += k;
        n -= k;
        if (w->in_shard == w->per_shard) shard_close(w);
    }
}

/* Closes the last shard and renames every shard into place. */
static void shards_finish(shard_writer *w) {
    if (w->open.f) shard_close(w);
    for (int i = 0; i < w->n_shards; i++) atomic_rename(&w->done[i]);
}

/* ---------------------------------------------------------------- --data: documents */

/* A document: its text, then its ids (the EOT token first). */
typedef struct {
    char *text;
    size_t len;
    int *ids;
    size_t n, cap;
} doc;

/* Documents read but not yet encoded, and the counts of the whole run. */
typedef struct {
    const moe_tokenizer *tok;
    int eot, threads;
    doc *docs;
    int n, cap;           /* documents in the batch; room */
    size_t batch_bytes;   /* their text */
    size_t max_bytes;     /* a batch is encoded once it holds this much text */
    int64_t documents, text_bytes, input_bytes, input_total;
    double t0, last_draw;
    int tty, drawn;
    shard_writer *w;
} batcher;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* On a terminal: one line on stderr, redrawn at most 10 times a second; last: at the end. */
static void progress(batcher *b, int last) {
    double t = now_s();
    if (!b->tty || (!last && t - b->last_draw < 0.1)) return;
    b->last_draw = t;
    double mb = (double)b->input_bytes / 1e6;
    fprintf(stderr, "\r\033[Ktokenize: %.1f of %.1f MB, %.2f MB/s, %lld documents, %lld tokens%s", mb,
            (double)b->input_total / 1e6, mb / (t - b->t0 > 1e-9 ? t - b->t0 : 1e-9), (long long)b->documents,
            (long long)b->w->total, last ? "\n" : "");
    b->drawn = !last;
}

/* Encodes the batch's documents in parallel, then appends their ids in order. */
static void encode_batch(batcher *b) {
    int64_t bad = b->n; // the first document that failed, and its message
    char msg[1024] = "";
#pragma omp parallel for schedule(dynamic, 1) num_threads(b->threads)
    for (int i = 0; i < b->n; i++) {
        doc *d = &b->docs[i];
        d->n = 0;
        moe_status st = MOE_STATUS_OK;
        if (b->eot >= 0) {
            if (d->cap == 0 && !(d->ids = malloc((d->cap = 1024) * sizeof(int)))) st = MOE_STATUS_NOMEM;
            else d->ids[d->n++] = b->eot;
        }
        if (st == MOE_STATUS_OK) st = moe_tokenizer_encode(b->tok, d->text, d->len, 0, &d->ids, &d->n, &d->cap);
        if (st != MOE_STATUS_OK) {
#pragma omp critical(tokenize_error)
            if (i < bad) {
                bad = i;
                snprintf(msg, sizeof msg, "%s: %s", moe_status_str(st), st == MOE_STATUS_NOMEM && !d->ids ? "out of memory" : moe_last_error());
            }
        }
    }
    if (bad < b->n) die(1, "tokenize: %s", msg);
    int vocab = moe_tokenizer_vocab_size(b->tok);
    for (int i = 0; i < b->n; i++) {
        doc *d = &b->docs[i];
        for (size_t j = 0; j < d->n; j++)
            if (d->ids[j] < 0 || d->ids[j] >= vocab)
                die(1, "tokenize: the tokenizer gave id %d, outside its vocabulary of %d", d->ids[j], vocab);
        shard_write(b->w, d->ids, d->n);
        free(d->text);
        d->text = NULL;
        b->documents++;
        b->text_bytes += (int64_t)d->len;
    }
    b->n = 0;
    b->batch_bytes = 0;
}

/* Takes a document (text owned from now on) into the batch, encoding the batch when full. */
static void add_doc(batcher *b, char *text, size_t len) {
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 256;
        doc *docs = realloc(b->docs, (size_t)cap * sizeof *docs);
        if (!docs) die(1, "out of memory");
        memset(docs + b->cap, 0, (size_t)(cap - b->cap) * sizeof *docs);
        b->docs = docs;
        b->cap = cap;
    }
    doc *d = &b->docs[b->n++]; // keeps the room of its ids from an earlier batch
    d->text = text;
    d->len = len;
    b->batch_bytes += len;
    if (b->batch_bytes >= b->max_bytes || b->n >= 256 * b->threads) encode_batch(b);
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), n = strlen(suffix);
    return a >= n && !strcmp(s + a - n, suffix);
}

/* A .jsonl file: a document per line, its string field "text". Lines of only white space are
 * skipped. The lines are parsed here, on one thread: cJSON_Parse writes a global on every call. */
static void read_jsonl(batcher *b, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(1, "cannot read '%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    long long lineno = 0;
    for (ssize_t n; (n = getline(&line, &cap, f)) >= 0;) {
        lineno++;
        b->input_bytes += n;
        if (line[strspn(line, " \t\r\n")] == 0 && (size_t)n == strlen(line)) continue;
        cJSON *o = cJSON_ParseWithOpts(line, NULL, 1); // the whole line: nothing after the object
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
        if (!cJSON_IsObject(o)) {
            int shown = (int)strcspn(line, "\r\n");
            die(1, "tokenize: '%s' line %lld is not a JSON object (alone on its line): '%.*s%s'", path, lineno,
                shown < 40 ? shown : 40, line, shown > 40 ? "..." : "");
        }
        if (!cJSON_IsString(text)) die(1, "tokenize: '%s' line %lld has no string field \"text\"", path, lineno);
        char *s = str_dup(text->valuestring);
        cJSON_Delete(o);
        add_doc(b, s, strlen(s));
        progress(b, 0);
    }
    if (ferror(f)) die(1, "cannot read '%s': %s", path, strerror(errno));
    fclose(f);
    free(line);
}

static void read_input(batcher *b, const char *path) {
    if (ends_with(path, ".jsonl")) {
        read_jsonl(b, path);
        return;
    }
    size_t len;
    char *text = read_bytes(path, "text file", &len);
    b->input_bytes += (int64_t)len;
    add_doc(b, text, len);
    progress(b, 0);
}

/* PREFIX.json: what the shards hold and which tokenizer made them. */
static void write_sidecar(const tok_opts *o, const moe_tokenizer *t, const shard_writer *w, int64_t documents) {
    cJSON *s = cJSON_CreateObject(), *names = cJSON_CreateArray();
    if (!s || !names) die(1, "out of memory");
    const char *base = strrchr(o->out, '/') ? strrchr(o->out, '/') + 1 : o->out;
    for (int i = 0; i < w->n_shards; i++) {
        char name[4200];
        snprintf(name, sizeof name, "%s_%06d.bin", base, i);
        cJSON_AddItemToArray(names, cJSON_CreateString(name));
    }
    cJSON_AddStringToObject(s, "tokenizer_hash", moe_tokenizer_hash(t));
    cJSON_AddNumberToObject(s, "vocab_size", moe_tokenizer_vocab_size(t));
    if (moe_tokenizer_eot(t) >= 0) cJSON_AddNumberToObject(s, "eot", moe_tokenizer_eot(t));
    else cJSON_AddNullToObject(s, "eot");
    cJSON_AddNumberToObject(s, "tokens", (double)w->total);
    cJSON_AddItemToObject(s, "shards", names);
    cJSON_AddStringToObject(s, "dtype", w->wide ? "uint32" : "uint16");
    cJSON_AddNumberToObject(s, "documents", (double)documents);
    char *text = cJSON_Print(s), *path = concat(o->out, ".json");
    if (!text) die(1, "out of memory");
    atomic_file a = atomic_open(path);
    fprintf(a.f, "%s\n", text);
    atomic_commit(&a);
    free(path);
    cJSON_free(text);
    cJSON_Delete(s);
}

static void write_shards(const tok_opts *o, const moe_tokenizer *t) {
    char *paths[4096];
    int n_paths = 0;
    for (int i = 0; i < o->data.n; i++) n_paths += split_list(o->data.v[i], paths + n_paths, 4096 - n_paths);
    if (n_paths == 0) die(2, "tokenize: --data names no file");
    int threads = (int)o->threads;
#ifdef _OPENMP
    if (threads == 0) threads = omp_get_num_procs();
#else
    threads = 1;
#endif
    int vocab = moe_tokenizer_vocab_size(t);
    shard_writer w = {.prefix = o->out, .wide = vocab > 65536, .per_shard = o->shard_tokens};
    batcher b = {.tok = t, .eot = moe_tokenizer_eot(t), .threads = threads, .w = &w, .tty = isatty(STDERR_FILENO)};
    b.max_bytes = (size_t)threads << 22; // 4 MB of text per thread
    if (!(w.buf = malloc((size_t)(1 << 16) * 4))) die(1, "out of memory");
    for (int i = 0; i < n_paths; i++) { // every input exists before anything is written
        struct stat st;
        if (stat(paths[i], &st) != 0) die(1, "cannot read '%s': %s", paths[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) die(1, "tokenize: '%s' is a directory; name its files", paths[i]);
        b.input_total += st.st_size;
    }
    b.t0 = b.last_draw = now_s();
    for (int i = 0; i < n_paths; i++) read_input(&b, paths[i]);
    encode_batch(&b);
    if (w.total == 0) die(1, "tokenize: the data holds no tokens (no documents, or only empty ones and no EOT token)");
    shards_finish(&w);
    write_sidecar(o, t, &w, b.documents);
    char *json = tokenizer_json(o->tokenizer), *cfg = tokenizer_config_beside(json), *dst = concat(o->out, ".tokenizer.json");
    copy_file(json, dst);
    free(dst);
    if (cfg) {
        dst = concat(o->out, ".tokenizer_config.json");
        copy_file(cfg, dst);
        free(dst);
    }
    progress(&b, 1);
    double s = now_s() - b.t0;
    printf("moe: tokenized %lld documents (%lld bytes of text) into %lld tokens (%s) in %d shard%s, %s_%06d.bin",
           (long long)b.documents, (long long)b.text_bytes, (long long)w.total, w.wide ? "uint32" : "uint16", w.n_shards,
           w.n_shards > 1 ? "s" : "", o->out, 0);
    if (w.n_shards > 1) printf(" to %s_%06d.bin", o->out, w.n_shards - 1);
    printf(", at %.2f MB/s; sidecar %s.json\n", (double)b.input_bytes / 1e6 / (s > 1e-9 ? s : 1e-9), o->out);
    for (int i = 0; i < b.cap; i++) free(b.docs[i].ids);
    free(b.docs);
    free(w.done);
    free(w.buf);
    free(json);
    free(cfg);
}

static int run_tokenize(void *opts) {
    const tok_opts *o = opts;
    int modes = !!o->ids + !!o->decode + (o->data.n > 0);
    if (modes != 1) die(2, "tokenize: give one of --ids, --decode or --data (see moe tokenize --help)");
    if (o->no_special && !o->ids) die(2, "tokenize: --no-special goes with --ids");
    if (o->skip_special && !o->decode) die(2, "tokenize: --skip-special goes with --decode");
    if (!o->data.n && (o->out || o->threads || o->shard_tokens != 100000000))
        die(2, "tokenize: --out, --threads and --shard-tokens go with --data");
    if (o->data.n && !o->out) die(2, "tokenize: --data needs --out PREFIX");
    moe_tokenizer *t;
    check(moe_tokenizer_load(o->tokenizer, &t));
    if (o->ids) print_ids(t, o->ids, !o->no_special);
    else if (o->decode) print_text(t, o->decode, o->skip_special);
    else write_shards(o, t);
    moe_tokenizer_free(t);
    return 0;
}

static void tok_help_tail(FILE *f) {
    fprintf(f, "Shards (docs/formats.md): a header of 256 int32 ([0] magic, [1] version, [2] tokens),\n"
               "then the tokens: uint16 (magic 20240520, version 1) when the vocabulary has at most\n"
               "65536 ids, else uint32 (magic 20240801, version 7; moe train reads only uint16 yet).\n"
               "Each document is preceded by the tokenizer's EOT token (EOS, else BOS) and encoded\n"
               "without BOS, as llm.c's fineweb.py does; the shards do not depend on --threads. A\n"
               ".jsonl line must be a JSON object with a string field \"text\" (blank lines are\n"
               "skipped). PREFIX.json records tokenizer_hash, vocab_size, eot, tokens, shards, dtype\n"
               "and documents; moe train reads it to check vocab_size and to copy the tokenizer into\n"
               "the run. Nothing is written when an input is at fault.\n"
               "\n"
               "Examples:\n"
               "  moe tokenize --tokenizer hf/TinyLlama --ids prompt.txt\n"
               "  moe tokenize --tokenizer hf/TinyLlama --data a.jsonl,b.txt --out data/tiny\n"
               "  moe train --data data/tiny_000000.bin --out runs/tiny --set vocab_size=32000\n");
}

const cli_command moe_cmd_tokenize = {
    "tokenize",
    "token ids of text, text of ids, token shards for training",
    "tokenize --tokenizer PATH (--ids FILE | --decode FILE | --data FILES --out PREFIX) [options]",
    "Runs a Hugging Face tokenizer (tokenizer.json: byte-level BPE as GPT-2, Llama-3, Qwen2;\n"
    "SentencePiece-style BPE as Llama-2, Mistral) without Python, with the ids of Hugging Face's\n"
    "tokenizers. --ids prints the ids of a file's text (with BOS where the tokenizer adds one),\n"
    "--decode the text of ids, and --data writes llm.c token shards of text and .jsonl files\n"
    "for moe train, encoding documents on all cores.\n",
    CLI_FLAGS(tok_flags),
    tok_help_tail,
    sizeof(tok_opts),
    &(tok_opts){.shard_tokens = 100000000},
    run_tokenize,
};
