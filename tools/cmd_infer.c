/*
 * cmd_infer.c — the commands that run a trained model forward over data: `moe eval` (loss, bits
 * per byte and per-expert loads on data), `moe route` (which experts take which tokens: by byte
 * class and by source file, with the mutual information between expert and group) and `moe
 * logits` (raw logits of one token sequence, for comparisons; or through the KV cache).
 * `moe sample` is cmd_sample.c.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


/* ---------------------------------------------------------------- eval */

/* A checkpoint, data, batching, JSON output: what eval and route take. */
typedef struct {
    const char *ckpt, *data, *device, *dtype, *max_memory;
    long batch, max_batches; /* max_batches 0: all */
    int json;
} data_opts;

/* The flag table of eval and route: the same flags and ranges, each command's own help. */
#define DATA_FLAGS(data_help, max_batches_help, json_help)                                                    \
    {                                                                                                          \
        {"--ckpt", CLI_STRING, "DIR", offsetof(data_opts, ckpt), .help = "run directory or .safetensors file", \
         .required = 1},                                                                                       \
        {"--data", CLI_STRING, "FILES", offsetof(data_opts, data), .help = data_help, .required = 1},          \
        {"--batch-size", CLI_INT, "B", offsetof(data_opts, batch),                                             \
         .help = "sequences per forward pass (default 8)", .lo = 1, .hi = 1 << 16},                            \
        {"--max-batches", CLI_INT, "N", offsetof(data_opts, max_batches), .help = max_batches_help, .lo = 0,   \
         .hi = 1 << 30},                                                                                       \
        {"--json", CLI_NONE, NULL, offsetof(data_opts, json), .help = json_help},                              \
        CLI_DEVICE_FLAGS(data_opts),                                                                           \
    }

static const cli_flag eval_flags[] =
    DATA_FLAGS("evaluation data: files, directories or glob patterns, comma-separated", "stop after N batches; 0 = all (default 0)",
               "one JSON object on stdout instead of text");

static const cli_flag route_flags[] =
    DATA_FLAGS("comma-separated; each entry (a file, directory or pattern) is a source group", "batches per file; 0 = all (default 16)",
               "one JSON object instead of tables");

/* The model at o->ckpt, sized for o->batch sequences, and the files of o->data (comma-separated)
 * in paths[0..n) (pointing into *list, to free). */
static moe_model *load_for_data(const data_opts *o, char **list, char **paths, int max, int *n) {
    moe_model *m;
    use_max_memory(o->max_memory);
    use_device_for(o->device, o->dtype, o->ckpt);
    check(moe_model_load(o->ckpt, (int)o->batch, &m));
    if (!(*list = strdup(o->data))) die(1, "out of memory");
    *n = split_list(*list, paths, max);
    return m;
}

/* What moe_evaluate measured. */
typedef struct {
    float loss;
    int64_t tokens, would_drop, assigned; /* assigned: routed expert assignments */
    int has_bytes;                        /* the text bytes of the targets are known */
    int64_t bytes;                        /* their count */
    const int64_t *loads;                 /* moe_model_total_experts(m), layer after layer */
    const char *source, *part;            /* the data and which part of it was evaluated */
} eval_result;

/* Bits per byte: the nats of every evaluated target (loss * tokens) in bits, over the bytes of
 * text those targets stand for. */
static double bits_per_byte(const eval_result *r) {
    return (double)r->loss * (double)r->tokens / log(2.0) / (double)r->bytes;
}

static void print_eval_json(const moe_model *m, const eval_result *r) {
    printf("{\"loss\":%.9g,\"perplexity\":%.9g,\"bits_per_token\":%.9g,\"tokens\":%lld,\"would_drop_frac\":%.6g,",
           r->loss, exp(r->loss), r->loss / log(2.0), (long long)r->tokens,
           r->assigned ? (double)r->would_drop / (double)r->assigned : 0.0);
    if (r->has_bytes) printf("\"bits_per_byte\":%.9g,\"bytes\":%lld,", bits_per_byte(r), (long long)r->bytes);
    else printf("\"bits_per_byte\":null,\"bytes\":null,");
    int64_t w, other;
    moe_model_memory(m, &w, &other);
    printf("\"weights_bytes\":%lld,\"activation_bytes\":%lld,\"data\":", (long long)w, (long long)other);
    json_string(stdout, r->source);
    printf(",\"data_part\":");
    json_string(stdout, r->part);
    printf(",\"layers\":[");
    const int64_t *loads = r->loads;
    for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
        const moe_layer_stats *ls = moe_model_layer_stats(m, i);
        printf("%s{\"layer\":%d,\"load\":[", i ? "," : "", ls->layer);
        for (int e = 0; e < ls->n_experts; e++) printf("%s%lld", e ? "," : "", (long long)loads[e]);
        printf("]}");
        loads += ls->n_experts;
    }
    printf("]}\n");
}

static void print_eval_text(const moe_model *m, const eval_result *r) {
    printf("data: %s: %s\n", r->source, r->part);
    printf("loss %.4f | perplexity %.3f | bits/token %.4f", r->loss, exp(r->loss), r->loss / log(2.0));
    if (r->has_bytes) printf(" | bits/byte %.4f | %lld tokens, %lld bytes\n", bits_per_byte(r), (long long)r->tokens,
                             (long long)r->bytes);
    else printf(" | %lld tokens\n", (long long)r->tokens);
    const int64_t *loads = r->loads;
    for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
        const moe_layer_stats *ls = moe_model_layer_stats(m, i);
        int64_t tot = 0;
        for (int e = 0; e < ls->n_experts; e++) tot += loads[e];
        printf("layer %2d load %%:", ls->layer);
        for (int e = 0; e < ls->n_experts; e++) printf(" %5.1f", tot ? 100.0 * (double)loads[e] / (double)tot : 0.0);
        printf(" | maxvio %.2f\n", moe_maxvio(loads, ls->n_experts));
        loads += ls->n_experts;
    }
    if (moe_model_n_moe_layers(m))
        printf("the training capacity factor %.2f would drop %.2f%% of assignments\n",
               moe_model_config(m)->capacity_factor,
               r->assigned ? 100.0 * (double)r->would_drop / (double)r->assigned : 0.0);
}

/* The text bytes that each token id stands for (0 for special tokens): from the checkpoint's
 * tokenizer, or 1 for byte-level text (vocab_size 256, no tokenizer); vocab_size of them, to
 * free. NULL when unknown: ids without a tokenizer, or data that the tokenizer did not make
 * (text read as bytes, a shard whose sidecar names another tokenizer; with a warning). */
static int *token_bytes(const char *ckpt, const moe_config *c, const moe_dataset *d) {
    moe_tokenizer *tok = ckpt_tokenizer(ckpt);
    if (!tok && c->vocab_size != 256) return NULL;
    for (int i = 0; tok && i < moe_dataset_n_files(d); i++) {
        shard_sidecar s;
        const char *why = NULL, *path = moe_dataset_file(d, i).path;
        if (moe_dataset_file(d, i).token_bytes == 1) why = "is text, read as bytes, not the ids of the checkpoint's tokenizer";
        else if (sidecar_read(path, &s)) {
            if (strcmp(s.hash, moe_tokenizer_hash(tok))) why = "was tokenized with another tokenizer than the checkpoint's";
            sidecar_free(&s);
        }
        if (why) {
            fprintf(stderr, "moe: warning: '%s' %s: no bits per byte\n", path, why);
            moe_tokenizer_free(tok);
            return NULL;
        }
    }
    int *bytes = malloc((size_t)c->vocab_size * sizeof(int)), tv = tok ? moe_tokenizer_vocab_size(tok) : 0;
    if (!bytes) die(1, "out of memory");
    for (int id = 0; id < c->vocab_size; id++) bytes[id] = !tok ? 1 : id < tv ? moe_tokenizer_token_bytes(tok, id) : 0;
    moe_tokenizer_free(tok);
    return bytes;
}

/* The text bytes of the targets of the windows moe_evaluate evaluated (r->tokens / seq_len of
 * them, where moe_evaluate_window puts them). */
static void count_bytes(const moe_dataset *d, int T, const int *bytes, eval_result *r) {
    int64_t n = moe_dataset_len(d), windows = r->tokens / T;
    int *tok = malloc((size_t)T * sizeof(int));
    if (!tok) die(1, "out of memory");
    r->bytes = 0;
    for (int64_t w = 0; w < windows; w++) {
        check(moe_dataset_read(d, moe_evaluate_window(n, T, windows, w) + 1, T, tok));
        for (int i = 0; i < T; i++) r->bytes += bytes[tok[i]];
    }
    free(tok);
    r->has_bytes = r->bytes > 0;
}

static int run_eval(void *opts) {
    const data_opts *o = opts;
    char *list, *paths[256];
    int n_paths;
    moe_model *m = load_for_data(o, &list, paths, 256, &n_paths);
    const moe_config *c = moe_model_config(m);
    moe_dataset *d;
    check(moe_dataset_load((const char *const *)paths, n_paths, c->vocab_size, &d));
    print_notices(d);
    int64_t total_e = moe_model_total_experts(m);
    int64_t *loads = calloc((size_t)(total_e ? total_e : 1), sizeof(int64_t));
    if (!loads) die(1, "out of memory");
    eval_result r = {.loads = loads};
    check(moe_evaluate(m, d, (int)o->batch, (int)o->max_batches, &r.loss, &r.tokens, loads, &r.would_drop));
    r.assigned = r.tokens * c->top_k * moe_model_n_moe_layers(m);
    int *bytes = token_bytes(o->ckpt, c, d);
    if (bytes) count_bytes(d, c->seq_len, bytes, &r);
    free(bytes);
    // which part of the data: the first windows, in file order
    char part[256];
    snprintf(part, sizeof part, "the first %lld of its %lld tokens (%lld windows of %d)", (long long)r.tokens,
             (long long)moe_dataset_len(d), (long long)(r.tokens / c->seq_len), c->seq_len);
    r.part = part;
    r.source = moe_dataset_source(d);
    if (o->json) print_eval_json(m, &r);
    else print_eval_text(m, &r);
    free(loads);
    moe_dataset_free(d);
    moe_model_free(m);
    free(list);
    return 0;
}

const cli_command moe_cmd_eval = {
    "eval",
    "loss and expert loads of a checkpoint on data",
    "eval --ckpt DIR --data FILE[,FILE...] [options]",
    "Mean cross-entropy of a checkpoint over non-overlapping seq_len windows of the data,\n"
    "with per-layer expert loads. Routing uses eval_capacity_factor (dropless by default) and\n"
    "reports what the training capacity would have dropped. Bits per byte (comparable across\n"
    "tokenizers) is the targets' cross-entropy in bits over the bytes of text they stand for:\n"
    "each token's bytes from the checkpoint's tokenizer.json (0 for special tokens), or one\n"
    "byte per token for byte-level text (vocab_size 256).\n",
    CLI_FLAGS(eval_flags),
    NULL,
    sizeof(data_opts),
    &(data_opts){.batch = 8},
    run_eval,
};

/* ---------------------------------------------------------------- route */

enum { CLS_LETTER, CLS_DIGIT, CLS_SPACE, CLS_PUNCT, CLS_OTHER, N_CLS };
static const char *const cls_names[N_CLS] = {"letter", "digit", "space", "punct", "other"};

static int byte_class(int t) {
    if ((t >= 'a' && t <= 'z') || (t >= 'A' && t <= 'Z')) return CLS_LETTER;
    if (t >= '0' && t <= '9') return CLS_DIGIT;
    if (t == ' ' || t == '\n' || t == '\t' || t == '\r') return CLS_SPACE;
    if (t >= 33 && t <= 126) return CLS_PUNCT;
    return CLS_OTHER;
}

/* Mutual information in bits between the row label and the expert, from counts (rows x E). */
static double mutual_info(const double *cnt, int rows, int E) {
    double tot = 0, mi = 0;
    for (int i = 0; i < rows * E; i++) tot += cnt[i];
    if (tot == 0) return 0;
    for (int r = 0; r < rows; r++) {
        double pr = 0;
        for (int e = 0; e < E; e++) pr += cnt[r * E + e];
        for (int e = 0; e < E; e++) {
            double pe = 0;
            for (int q = 0; q < rows; q++) pe += cnt[q * E + e];
            double j = cnt[r * E + e];
            if (j > 0) mi += j / tot * log2(j * tot / (pr * pe));
        }
    }
    return mi;
}

static void print_table(const char *title, const double *cnt, const char *const *names, int rows, int E, int json) {
    if (json) {
        printf("\"%s\":{", title);
        for (int r = 0; r < rows; r++) {
            printf("%s\"%s\":[", r ? "," : "", names[r]);
            for (int e = 0; e < E; e++) printf("%s%.0f", e ? "," : "", cnt[r * E + e]);
            printf("]");
        }
        printf("},\"%s_mutual_info_bits\":%.6f", title, mutual_info(cnt, rows, E));
        return;
    }
    printf("  by %s (%% of the group's assignments per expert)\n  %-14s", title, "");
    for (int e = 0; e < E; e++) printf(" %5d", e);
    printf(" |  tokens\n");
    for (int r = 0; r < rows; r++) {
        double tot = 0;
        for (int e = 0; e < E; e++) tot += cnt[r * E + e];
        if (tot == 0) continue;
        printf("  %-14.14s", names[r]);
        for (int e = 0; e < E; e++) printf(" %5.1f", 100.0 * cnt[r * E + e] / tot);
        printf(" | %7.0f\n", tot);
    }
    printf("  I(expert; %s) = %.3f bits\n", title, mutual_info(cnt, rows, E));
}

/* Routed assignments counted by group. MoE layer l's tables start at its first expert's offset
 * off among all layers' experts: by_cls + N_CLS * off is (N_CLS, E_l), by_src + n_src * off is
 * (n_src, E_l). */
typedef struct {
    int n_src;
    double *by_cls, *by_src;
} route_counts;

/* Runs the windows of source file `src` (at most o->batch * max_batches of them) through the
 * model and counts where each token's assignments went. tok and routes are scratch. */
static void route_source(moe_model *m, const data_opts *o, long max_batches, const char *path, int src,
                         route_counts *rc, int *tok, int *routes) {
    const moe_config *c = moe_model_config(m);
    int T = c->seq_len;
    moe_dataset *d;
    check(moe_dataset_load(&path, 1, c->vocab_size, &d));
    int64_t windows = moe_dataset_len(d) / T;
    if (windows > o->batch * max_batches) windows = o->batch * max_batches;
    if (windows < 1) die(1, "route: '%s' is shorter than one sequence of %d tokens", path, T);
    for (int64_t w0 = 0; w0 < windows; w0 += o->batch) {
        int B = windows - w0 < o->batch ? (int)(windows - w0) : (int)o->batch;
        check(moe_dataset_read(d, w0 * T, (int64_t)B * T, tok));
        check(moe_model_forward(m, tok, NULL, B, T, 0, NULL));
        for (int l = 0, off = 0; l < moe_model_n_moe_layers(m); off += moe_model_layer_stats(m, l)->n_experts, l++) {
            int E = moe_model_layer_stats(m, l)->n_experts, slots;
            check(moe_model_routing(m, l, routes, &slots));
            double *cls = rc->by_cls + (int64_t)N_CLS * off, *srcs = rc->by_src + (int64_t)rc->n_src * off;
            for (int64_t n = 0; n < (int64_t)B * T; n++)
                for (int s = 0; s < slots; s++) {
                    int e = routes[n * slots + s];
                    if (e < 0) continue;
                    cls[byte_class(tok[n]) * E + e] += 1;
                    srcs[src * E + e] += 1;
                }
        }
    }
    moe_dataset_free(d);
}

static void print_route(const moe_model *m, const route_counts *rc, const char *const *names, int json) {
    if (json) printf("{\"layers\":[");
    for (int l = 0, off = 0; l < moe_model_n_moe_layers(m); off += moe_model_layer_stats(m, l)->n_experts, l++) {
        int E = moe_model_layer_stats(m, l)->n_experts, layer = moe_model_layer_stats(m, l)->layer;
        const double *cls = rc->by_cls + (int64_t)N_CLS * off, *srcs = rc->by_src + (int64_t)rc->n_src * off;
        if (json) {
            printf("%s{\"layer\":%d,", l ? "," : "", layer);
            print_table("class", cls, cls_names, N_CLS, E, 1);
            printf(",");
            print_table("source", srcs, names, rc->n_src, E, 1);
            printf("}");
        } else {
            printf("layer %d (%d experts)\n", layer, E);
            if (moe_model_config(m)->vocab_size == 256) print_table("class", cls, cls_names, N_CLS, E, 0);
            if (rc->n_src > 1) print_table("source", srcs, names, rc->n_src, E, 0);
        }
    }
    if (json) printf("]}\n");
}

static int run_route(void *opts) {
    const data_opts *o = opts;
    char *list, *paths[256];
    const char *names[256];
    route_counts rc;
    moe_model *m = load_for_data(o, &list, paths, 256, &rc.n_src);
    int nm = moe_model_n_moe_layers(m), T = moe_model_config(m)->seq_len, max_e = 0;
    if (nm == 0) die(1, "route: the model has no MoE layers");
    for (int i = 0; i < rc.n_src; i++) names[i] = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
    for (int i = 0; i < nm; i++)
        max_e = moe_model_layer_stats(m, i)->n_experts > max_e ? moe_model_layer_stats(m, i)->n_experts : max_e;
    int64_t total_e = moe_model_total_experts(m);
    rc.by_cls = calloc((size_t)(N_CLS * total_e), sizeof(double));
    rc.by_src = calloc((size_t)(rc.n_src * total_e), sizeof(double));
    int *tok = malloc((size_t)o->batch * T * sizeof(int)), *routes = malloc((size_t)o->batch * T * max_e * sizeof(int));
    if (!rc.by_cls || !rc.by_src || !tok || !routes) die(1, "out of memory");
    long max_batches = o->max_batches > 0 ? o->max_batches : (1L << 30);
    for (int src = 0; src < rc.n_src; src++) route_source(m, o, max_batches, paths[src], src, &rc, tok, routes);
    print_route(m, &rc, names, o->json);
    free(rc.by_cls);
    free(rc.by_src);
    free(tok);
    free(routes);
    free(list);
    moe_model_free(m);
    return 0;
}

const cli_command moe_cmd_route = {
    "route",
    "which experts take which tokens: by byte class and by source",
    "route --ckpt DIR --data FILE[,FILE...] [options]",
    "Expert specialisation report: which experts take which tokens, per MoE layer, by byte\n"
    "class of the token (letter, digit, space, punctuation, other; byte-level models) and by\n"
    "source file. Each row is the share (%) of that group's routed assignments going to each\n"
    "expert; the last column is the mutual information I(expert; group) in bits (0 = no\n"
    "specialisation). Routing as at evaluation (eval_capacity_factor).\n",
    CLI_FLAGS(route_flags),
    NULL,
    sizeof(data_opts),
    &(data_opts){.batch = 8, .max_batches = 16},
    run_route,
};

/* ---------------------------------------------------------------- logits */

typedef struct {
    const char *ckpt, *tokens, *out, *device, *dtype, *max_memory;
    int kv_cache;
} logits_opts;

#define OPT(field) offsetof(logits_opts, field)
static const cli_flag logits_flags[] = {
    {"--ckpt", CLI_STRING, "DIR", OPT(ckpt), .help = "run directory or .safetensors file", .required = 1},
    {"--tokens", CLI_STRING, "FILE", OPT(tokens), .help = "token ids, whitespace-separated (at most seq_len)",
     .required = 1},
    {"--out", CLI_STRING, "FILE", OPT(out), .help = "where to write the logits", .required = 1},
    {"--kv-cache", CLI_NONE, NULL, OPT(kv_cache),
     .help = "through the KV cache, one token at a time (as moe sample decodes)"},
    CLI_DEVICE_FLAGS(logits_opts),
};
#undef OPT

static int run_logits(void *opts) {
    const logits_opts *o = opts;
    moe_model *m;
    use_max_memory(o->max_memory);
    use_device_for(o->device, o->dtype, o->ckpt);
    check(moe_model_load(o->ckpt, 1, &m));
    const moe_config *c = moe_model_config(m);
    char *text = read_text(o->tokens, "token file");
    int *tok = malloc((size_t)c->seq_len * sizeof(int)), T = 0;
    char err[512];
    if (!tok) die(1, "out of memory");
    if (moe_arg_tokens(text, o->tokens, c->vocab_size, c->seq_len, tok, &T, err, sizeof err) != 0)
        die(2, "logits: %s", err);
    free(text);
    size_t n = (size_t)T * c->vocab_size;
    const float *logits;
    float *cached = NULL;
    if (o->kv_cache) {
        moe_generator *g;
        check(moe_generator_create(m, 1, &g));
        if (!(cached = malloc(n * sizeof(float)))) die(1, "out of memory");
        for (int i = 0; i < T; i++) check(moe_generator_feed(g, 0, tok + i, 1, cached + (size_t)i * c->vocab_size, 0));
        moe_generator_free(g);
        logits = cached;
    } else {
        check(moe_model_forward(m, tok, NULL, 1, T, 0, NULL));
        logits = moe_model_logits(m);
    }
    if (!logits) die(1, "logits: %s", moe_last_error());
    FILE *f = make_parent(o->out) == 0 ? fopen(o->out, "wb") : NULL;
    if (!f || fwrite(logits, sizeof(float), n, f) != n || fclose(f) != 0)
        die(1, "logits: cannot write '%s'", o->out);
    free(cached);
    free(tok);
    moe_model_free(m);
    return 0;
}

const cli_command moe_cmd_logits = {
    "logits",
    "raw logits of a token sequence, for comparisons",
    "logits --ckpt DIR --tokens FILE --out FILE",
    "Writes the model's logits (inference routing) for one sequence of token ids (whitespace-\n"
    "separated in --tokens) as float32 little-endian (T, V) to --out: for comparisons with other\n"
    "implementations (tests/hf/check_export.py).\n",
    CLI_FLAGS(logits_flags),
    NULL,
    sizeof(logits_opts),
    &(logits_opts){0},
    run_logits,
};
