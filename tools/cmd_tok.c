/*
 * cmd_tok.c — `moe tokenize`: a Hugging Face tokenizer.json (the library's src/tok/) from the
 * command line: the ids of a text (--ids), the text of ids (--decode), and llm.c token shards of
 * documents for training (--data), with a JSON sidecar that names the tokenizer (read back by
 * sidecar_read in cli.c, for moe train).
 *
 * Shards are those of llm.c (dev/data/fineweb.py): PREFIX_000000.bin, PREFIX_000001.bin, ...,
 * each a header of 256 little-endian int32 ([0] magic, [1] version, [2] token count) and then the
 * tokens: uint16 (magic 20240520, version 1) when the vocabulary has at most 65536 ids, else
 * uint32 (magic 20240801, version 7). Each document is preceded by the tokenizer's EOT token and
 * encoded without the post-processor's special tokens (llm.c's encode_ordinary); a document may
 * run on into the next shard. Documents are encoded in parallel a batch at a time (OpenMP tasks,
 * while one thread reads the next batch) and appended in input order: the shards do not depend
 * on the thread count. The shards are written to
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
     .help = "write token shards of these files (one or more words, or comma-\n"
             "separated): text files (a document each) and .jsonl files (a\n"
             "document per line)",
     .many = 1},
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

/* Documents encoded together; each keeps the room of its ids for the next batch in its place. */
typedef struct {
    doc *docs;
    int n, cap;
    size_t bytes; /* of text */
    int bad;      /* the first document that failed (n: none) and why */
    char msg[1024];
} batch;

/* The inputs as they are read: the file being read (a .jsonl, line by line) and the next. */
typedef struct {
    char **paths;
    int n_paths, next;
    FILE *f;
    const char *path;
    long long lineno;
    char *line;
    size_t cap;
} reader;

/* What --data does: how, and the counts so far. */
typedef struct {
    const moe_tokenizer *tok;
    int eot, threads, max_docs;
    size_t max_bytes;     /* a batch is full at this much text or max_docs documents */
    int64_t documents, text_bytes, input_bytes, input_total;
    double t0, last_draw;
    int tty;
    shard_writer *w;
} tokenizing;

/* On a terminal: one line on stderr, redrawn at most 10 times a second; last: at the end. */
static void progress(tokenizing *g, int last) {
    double t = now_seconds();
    if (!g->tty || (!last && t - g->last_draw < 0.1)) return;
    g->last_draw = t;
    double mb = (double)g->input_bytes / 1e6;
    fprintf(stderr, "\r\033[Ktokenize: %.1f of %.1f MB, %.2f MB/s, %lld documents, %lld tokens%s", mb,
            (double)g->input_total / 1e6, mb / (t - g->t0 > 1e-9 ? t - g->t0 : 1e-9), (long long)g->documents,
            (long long)g->w->total, last ? "\n" : "");
}

/* Takes a document (text owned from now on) into the batch. */
static void add_doc(batch *bt, char *text, size_t len) {
    if (bt->n == bt->cap) {
        int cap = bt->cap ? 2 * bt->cap : 256;
        doc *docs = realloc(bt->docs, (size_t)cap * sizeof *docs);
        if (!docs) die(1, "out of memory");
        memset(docs + bt->cap, 0, (size_t)(cap - bt->cap) * sizeof *docs);
        bt->docs = docs;
        bt->cap = cap;
    }
    doc *d = &bt->docs[bt->n++];
    d->text = text;
    d->len = len;
    bt->bytes += len;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), n = strlen(suffix);
    return a >= n && !strcmp(s + a - n, suffix);
}

/* One line of the open .jsonl into the batch: its string field "text" (a line of only white
 * space is skipped). Parsed on the reading thread alone: cJSON_Parse writes a global. */
static void add_line(const reader *r, batch *bt, size_t n) {
    const char *line = r->line;
    if (line[strspn(line, " \t\r\n")] == 0 && n == strlen(line)) return;
    cJSON *o = cJSON_ParseWithOpts(line, NULL, 1); // the whole line: nothing after the object
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (!cJSON_IsObject(o)) {
        int shown = (int)strcspn(line, "\r\n");
        die(1, "tokenize: '%s' line %lld is not a JSON object (alone on its line): '%.*s%s'", r->path, r->lineno,
            shown < 40 ? shown : 40, line, shown > 40 ? "..." : "");
    }
    if (!cJSON_IsString(text)) die(1, "tokenize: '%s' line %lld has no string field \"text\"", r->path, r->lineno);
    char *s = str_dup(text->valuestring);
    cJSON_Delete(o);
    add_doc(bt, s, strlen(s));
}

/* Reads documents into bt (emptied first) until it is full or the input ends. */
static void read_batch(tokenizing *g, reader *r, batch *bt) {
    bt->n = 0;
    bt->bytes = 0;
    while (bt->bytes < g->max_bytes && bt->n < g->max_docs) {
        if (!r->f) {
            if (r->next == r->n_paths) return;
            r->path = r->paths[r->next++];
            if (!ends_with(r->path, ".jsonl")) { // a text file: one document
                size_t len;
                char *text = read_bytes(r->path, "text file", &len);
                g->input_bytes += (int64_t)len;
                add_doc(bt, text, len);
                continue;
            }
            if (!(r->f = fopen(r->path, "rb"))) die(1, "cannot read '%s': %s", r->path, strerror(errno));
            r->lineno = 0;
        }
        ssize_t n = getline(&r->line, &r->cap, r->f);
        if (n < 0) {
            if (ferror(r->f)) die(1, "cannot read '%s': %s", r->path, strerror(errno));
            fclose(r->f);
            r->f = NULL;
            continue;
        }
        r->lineno++;
        g->input_bytes += n;
        add_line(r, bt, (size_t)n);
        progress(g, 0);
    }
}

/* Encodes documents [i0, i1) of bt: [EOT] + the ids of the text. */
static void encode_docs(const tokenizing *g, batch *bt, int i0, int i1) {
    for (int i = i0; i < i1; i++) {
        doc *d = &bt->docs[i];
        // the encoder updates n and cap as it goes: locals, not the array that other threads write
        int *ids = d->ids;
        size_t n = 0, cap = d->cap;
        moe_status st = MOE_STATUS_OK;
        if (g->eot >= 0) {
            if (cap == 0 && !(ids = malloc((cap = 1024) * sizeof(int)))) st = MOE_STATUS_NOMEM;
            else ids[n++] = g->eot;
        }
        if (st == MOE_STATUS_OK) st = moe_tokenizer_encode(g->tok, d->text, d->len, 0, &ids, &n, &cap);
        d->ids = ids;
        d->n = n;
        d->cap = ids ? cap : 0;
        if (st != MOE_STATUS_OK) {
#pragma omp critical(tokenize_error)
            if (i < bt->bad) {
                bt->bad = i;
                snprintf(bt->msg, sizeof bt->msg, "%s: %s", moe_status_str(st), ids ? moe_last_error() : "out of memory");
            }
        }
    }
}

/* Starts the encoding of bt as OpenMP tasks of about 64 KB of text each. */
static void encode_tasks(const tokenizing *g, batch *bt) {
    bt->bad = bt->n;
    for (int i0 = 0, i1; i0 < bt->n; i0 = i1) {
        size_t bytes = 0;
        for (i1 = i0; i1 < bt->n && bytes < (1 << 16); i1++) bytes += bt->docs[i1].len + 16;
#pragma omp task firstprivate(i0, i1)
        encode_docs(g, bt, i0, i1);
    }
}

/* Appends the ids of the encoded batch to the shards, in order. */
static void write_batch(tokenizing *g, batch *bt) {
    if (bt->bad < bt->n) die(1, "tokenize: %s", bt->msg);
    int vocab = moe_tokenizer_vocab_size(g->tok);
    for (int i = 0; i < bt->n; i++) {
        doc *d = &bt->docs[i];
        for (size_t j = 0; j < d->n; j++)
            if (d->ids[j] < 0 || d->ids[j] >= vocab)
                die(1, "tokenize: the tokenizer gave id %d, outside its vocabulary of %d", d->ids[j], vocab);
        shard_write(g->w, d->ids, d->n);
        free(d->text);
        d->text = NULL;
        g->documents++;
        g->text_bytes += (int64_t)d->len;
    }
}

/* Reads, encodes and writes every document: one thread reads the next batch while the others
 * encode this one (as tasks), then this one is written, in input order. */
static void tokenize_all(tokenizing *g, reader *r) {
    batch a = {0}, b = {0}, *cur = &a, *next = &b;
#pragma omp parallel num_threads(g->threads)
#pragma omp single
    {
        read_batch(g, r, next);
        while (next->n > 0) {
            batch *t = cur;
            cur = next;
            next = t;
            encode_tasks(g, cur);
            read_batch(g, r, next);
#pragma omp taskwait
            write_batch(g, cur);
            progress(g, 0);
        }
    }
    for (int i = 0; i < a.cap; i++) free(a.docs[i].ids);
    for (int i = 0; i < b.cap; i++) free(b.docs[i].ids);
    free(a.docs);
    free(b.docs);
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
    tokenizing g = {.tok = t, .eot = moe_tokenizer_eot(t), .threads = threads, .max_docs = 256 * threads,
                    .max_bytes = (size_t)threads << 22, .tty = isatty(STDERR_FILENO), .w = &w}; // 4 MB a thread
    reader r = {.paths = paths, .n_paths = n_paths};
    if (!(w.buf = malloc((size_t)(1 << 16) * 4))) die(1, "out of memory");
    for (int i = 0; i < n_paths; i++) { // every input exists before anything is written
        struct stat st;
        if (stat(paths[i], &st) != 0) die(1, "cannot read '%s': %s", paths[i], strerror(errno));
        if (S_ISDIR(st.st_mode)) die(1, "tokenize: '%s' is a directory; name its files", paths[i]);
        g.input_total += st.st_size;
    }
    g.t0 = g.last_draw = now_seconds();
    tokenize_all(&g, &r);
    if (w.total == 0) die(1, "tokenize: the data holds no tokens (no documents, or only empty ones and no EOT token)");
    shards_finish(&w);
    write_sidecar(o, t, &w, g.documents);
    char *json = tokenizer_json(o->tokenizer), *cfg = tokenizer_config_beside(json), *dst = concat(o->out, ".tokenizer.json");
    copy_file(json, dst);
    free(dst);
    if (cfg) {
        dst = concat(o->out, ".tokenizer_config.json");
        copy_file(cfg, dst);
        free(dst);
    }
    progress(&g, 1);
    double s = now_seconds() - g.t0;
    printf("moe: tokenized %lld documents (%lld bytes of text) into %lld tokens (%s) in %d shard%s, %s_%06d.bin",
           (long long)g.documents, (long long)g.text_bytes, (long long)w.total, w.wide ? "uint32" : "uint16", w.n_shards,
           w.n_shards > 1 ? "s" : "", o->out, 0);
    if (w.n_shards > 1) printf(" to %s_%06d.bin", o->out, w.n_shards - 1);
    printf(", at %.2f MB/s; sidecar %s.json\n", (double)g.input_bytes / 1e6 / (s > 1e-9 ? s : 1e-9), o->out);
    free(r.line);
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
               "  moe tokenize --tokenizer hf/TinyLlama --data docs/*.jsonl b.txt --out data/tiny\n"
               "  moe train --data data/tiny_000000.bin --out runs/tiny --set vocab_size=32000\n");
}

const cli_command moe_cmd_tokenize = {
    "tokenize",
    "token ids of text, text of ids, token shards for training",
    "tokenize --tokenizer PATH (--ids FILE | --decode FILE | --data FILE [FILE...] --out PREFIX) [options]",
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
