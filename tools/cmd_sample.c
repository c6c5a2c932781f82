/*
 * cmd_sample.c — `moe sample`: text from a prompt (bytes, or through the checkpoint's
 * tokenizer.json), or from a file of prompts, through the library's KV-cache generation
 * (moe_model_generate): streamed token by token, never half a UTF-8 sequence, stopped by EOS or
 * SIGINT (what was printed is kept), with --stats for the prefill and decode speeds.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- sample */

typedef struct {
    const char *ckpt, *prompt, *prompts, *device, *dtype, *max_memory;
    long tokens, top_k, seed, threads, batch; /* threads 0: OpenMP's default; batch 0: unset */
    double temperature, top_p;
    int ignore_eos, no_stream, stats;
} sample_opts;

#define OPT(field) offsetof(sample_opts, field)
static const cli_flag sample_flags[] = {
    {"--ckpt", CLI_STRING, "DIR", OPT(ckpt), .help = "run directory or .safetensors file", .required = 1},
    {"--prompt", CLI_STRING, "TEXT", OPT(prompt),
     .help = "prompt: encoded by DIR's tokenizer.json when it has one (with BOS\n"
             "where the tokenizer adds one), else bytes (vocab 256 models)"},
    {"--prompts", CLI_STRING, "FILE", OPT(prompts),
     .help = "one prompt a line (empty lines skipped), generated --batch at a time\n"
             "(default 8), each printed after '--- prompt I of M'"},
    {"--tokens", CLI_INT, "N", OPT(tokens), .help = "tokens to generate (default 200)", .lo = 0, .hi = 1000000},
    {"--temperature", CLI_REAL, "T", OPT(temperature), .help = "0 = greedy (default 0.8)", .lo = 0, .hi = 100},
    {"--top-k", CLI_INT, "K", OPT(top_k), .help = "keep the K most likely tokens; 0 = off (default 0)", .lo = 0,
     .hi = 1 << 20},
    {"--top-p", CLI_REAL, "P", OPT(top_p), .help = "nucleus filter; 1 = off (default 0.95)", .lo = 1e-6, .hi = 1},
    {"--seed", CLI_INT, "S", OPT(seed), .help = "sampling seed (default 42)", .lo = 0, .hi = INT_MAX},
    {"--batch", CLI_INT, "N", OPT(batch),
     .help = "N sequences at once: with --prompt, N samples of it (sample i draws\n"
             "from seed + i x 0x9e3779b97f4a7c15: sample 1 is --batch 1's), each\n"
             "printed whole after '--- sample I of N'; with --prompts, the group size",
     .lo = 1, .hi = 4096},
    {"--ignore-eos", CLI_NONE, NULL, OPT(ignore_eos), .help = "go on past the tokenizer's EOS token"},
    {"--no-stream", CLI_NONE, NULL, OPT(no_stream), .help = "print the text when it is complete, not token by token"},
    {"--stats", CLI_NONE, NULL, OPT(stats),
     .help = "print to stderr the prefill and decode speeds and the KV cache's size"},
    {"--threads", CLI_INT, "N", OPT(threads), .help = "OpenMP threads (default: OpenMP's)", .lo = 1, .hi = 4096},
    CLI_DEVICE_FLAGS(sample_opts),
};
#undef OPT

/* What a sample prints: the decoded text of the prompt and the new tokens (through the
 * checkpoint's tokenizer), else the prompt's bytes and each new token as a byte (vocab 256) or
 * " id". Streamed, it is written as the tokens come, never half a UTF-8 sequence: what the next
 * token may still change (an incomplete sequence, a trailing U+FFFD, an open run of byte-fallback
 * pieces) is held back. Through a
 * tokenizer only a window of the ids is decoded each time (as transformers' TextStreamer): once
 * all its text is out, the window restarts at the last id (when it decodes alone to the text's
 * non-empty end), whose text is counted as printed, so a token costs a decode of a few ids, not of the
 * whole sequence. */
typedef struct {
    const moe_tokenizer *tok;
    int vocab, stream;
    int *ids;                 /* the prompt's ids, then the new ones */
    size_t n, win, printed;   /* ids; the first id decoded (tokenizer); bytes of text already written */
    char *text;               /* the text so far: of ids[win..n) through the tokenizer, else all */
    size_t len, cap;
    double t_first, t_last;   /* when the first and the last new token came (seconds) */
    int64_t made;             /* new tokens, all sequences */
} sample_out;

static volatile sig_atomic_t sample_stop;
static void on_sample_signal(int sig) {
    (void)sig;
    sample_stop = 1;
}

/* Bytes of text[0..len) that no later token can change: up to the last complete UTF-8 sequence,
 * before a trailing U+FFFD (which the next byte-fallback token may complete). */
static size_t stable_prefix(const char *text, size_t len) {
    const unsigned char *u = (const unsigned char *)text;
    while (len >= 3 && u[len - 3] == 0xEF && u[len - 2] == 0xBF && u[len - 1] == 0xBD) len -= 3;
    // an incomplete sequence at the end: a lead byte of width w with fewer than w - 1 bytes after it
    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char b = u[len - back];
        if ((b & 0xC0) == 0x80) continue;
        int w = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
        if ((size_t)w > back) len -= back;
        break;
    }
    return len;
}

static void out_text_refresh(sample_out *so) {
    if (so->tok) {
        free(so->text);
        check(moe_tokenizer_decode(so->tok, so->ids + so->win, so->n - so->win, 1, &so->text, &so->len));
    }
}

/* Whether id is a byte-fallback piece, <0xXX>: a run of them decodes as its UTF-8 text only when
 * the whole run is valid (else one U+FFFD a byte), so a later byte can change all of it. */
static int byte_piece(const moe_tokenizer *t, int id) {
    const char *s = moe_tokenizer_token(t, id);
    return s && strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>';
}

static void out_flush(sample_out *so, int final) {
    out_text_refresh(so);
    size_t end = final ? so->len : stable_prefix(so->text, so->len);
    if (!final && so->tok && so->n > 0 && byte_piece(so->tok, so->ids[so->n - 1]))
        end = so->printed; // a run of bytes still open: held back until a token ends it
    if (end > so->printed) {
        fwrite(so->text + so->printed, 1, end - so->printed, stdout);
        so->printed = end;
    }
    fflush(stdout);
    // all of the window is out: restart it at its last id when that id alone decodes to the end of
    // the text, not to nothing (a special token, a lone space) and not differently (a byte of a
    // longer character): SentencePiece's stripped leading space then falls on text already printed
    if (so->tok && end == so->len && so->n - so->win > 1) {
        char *last = NULL;
        size_t ll = 0;
        check(moe_tokenizer_decode(so->tok, so->ids + so->n - 1, 1, 1, &last, &ll));
        if (ll > 0 && ll <= so->len && !memcmp(so->text + so->len - ll, last, ll)) {
            free(so->text);
            so->text = last, so->len = so->printed = ll, so->win = so->n - 1;
        } else {
            free(last);
        }
    }
}

static void out_push(sample_out *so, int token) {
    so->ids[so->n++] = token;
    if (so->tok) return;
    if (so->len + 16 > so->cap) {
        so->cap = 2 * so->cap + 64;
        if (!(so->text = realloc(so->text, so->cap))) die(1, "out of memory");
    }
    so->len += (size_t)(so->vocab == 256 ? snprintf(so->text + so->len, 16, "%c", token)
                                         : snprintf(so->text + so->len, 16, " %d", token));
}

static int on_sample_token(void *user, int seq, int token) {
    sample_out *so = user;
    (void)seq;
    so->t_last = now_seconds();
    if (so->made++ == 0) so->t_first = so->t_last;
    if (!so->stream) return sample_stop;
    out_push(so, token);
    out_flush(so, 0);
    return sample_stop;
}

/* --stats: the prefill (prompts to the first tokens) and the decode (the rest), and the cache. */
static void print_sample_stats(const moe_model *m, const sample_out *so, const moe_config *c, int B, int n_prompt,
                               double t0) {
    double pre = so->t_first - t0, dec = so->t_last - so->t_first;
    int64_t decoded = so->made - B;
    int kc = (c->n_kv_head ? c->n_kv_head : c->n_head) * (c->n_embd / c->n_head); // k and v: key/value heads only
    double kv = 2.0 * c->n_layer * B * c->seq_len * kc * sizeof(float);
    fprintf(stderr, "moe: prefill %d x %d tokens in %.1f ms (%.0f tokens/s, with the first token's sampling)\n", B,
            n_prompt, 1e3 * pre, pre > 0 ? (double)B * n_prompt / pre : 0.0);
    fprintf(stderr, "moe: decode %lld tokens in %.1f ms (%.1f tokens/s, %.2f ms per step of %d)\n", (long long)decoded,
            1e3 * dec, dec > 0 ? (double)decoded / dec : 0.0, decoded > 0 ? 1e3 * dec * B / (double)decoded : 0.0, B);
    fprintf(stderr, "moe: KV cache %.2f MiB (2 x %d layers x %d sequences x %d positions x %d floats)\n", kv / 1048576.0,
            c->n_layer, B, c->seq_len, kc);
    int64_t w, other;
    moe_model_memory(m, &w, &other);
    fprintf(stderr, "moe: model %.2f MiB of weights, %.2f MiB of activations (%d x %d tokens)\n", w / 1048576.0,
            other / 1048576.0, 1, c->seq_len);
}

/* A prompt's ids: through the tokenizer, else its bytes; *n of them, to free. */
static int *encode_prompt(const moe_tokenizer *tok, const moe_config *c, const char *text, size_t len, size_t *n) {
    int *ids = NULL;
    size_t cap = 0;
    *n = 0;
    if (tok) {
        check(moe_tokenizer_encode(tok, text, len, 1, &ids, n, &cap));
        if (*n == 0) die(1, "sample: the prompt '%.*s' encodes to no tokens", (int)(len < 40 ? len : 40), text);
        return ids;
    }
    if (c->vocab_size < 256) die(1, "sample: the model's vocab_size %d cannot encode a text prompt as bytes", c->vocab_size);
    if (!(ids = malloc((len ? len : 1) * sizeof(int)))) die(1, "out of memory");
    for (size_t i = 0; i < len; i++) ids[i] = (unsigned char)text[i];
    *n = len;
    return ids;
}

/* so set to a sequence's prompt (its text and ids), nothing printed yet. */
static void out_start(sample_out *so, const char *text, size_t tlen, const int *ids, size_t np) {
    memcpy(so->ids, ids, np * sizeof(int));
    so->n = np;
    so->win = so->printed = 0;
    if (so->tok) return;
    if (tlen + 64 > so->cap && !(so->text = realloc(so->text, (so->cap = tlen + 64)))) die(1, "out of memory");
    memcpy(so->text, text, (so->len = tlen));
}

/* The prompts: pointers and lengths, a growing list. */
typedef struct {
    const char **text;
    size_t *len;
    int n, cap;
} prompt_list;

static void prompt_add(prompt_list *p, const char *text, size_t len) {
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        if (!(p->text = realloc(p->text, (size_t)p->cap * sizeof *p->text)) ||
            !(p->len = realloc(p->len, (size_t)p->cap * sizeof *p->len)))
            die(1, "out of memory");
    }
    p->text[p->n] = text;
    p->len[p->n++] = len;
}

/* The prompts of --prompt (it, --batch times) or --prompts FILE (each non-empty line, pointing
 * into *buf, to free). */
static prompt_list prompt_texts(const sample_opts *o, char **buf) {
    prompt_list p = {0};
    *buf = NULL;
    if (!o->prompts) {
        for (long i = 0; i < (o->batch ? o->batch : 1); i++) prompt_add(&p, o->prompt, strlen(o->prompt));
        return p;
    }
    *buf = read_text(o->prompts, "prompts file");
    for (char *line = *buf, *end; *line; line = end + (*end != 0)) {
        end = strchr(line, '\n');
        if (!end) end = line + strlen(line);
        size_t l = (size_t)(end - line);
        if (l && line[l - 1] == '\r') l--;
        if (l) prompt_add(&p, line, l);
    }
    if (p.n == 0) die(2, "sample: --prompts '%s' holds no prompt (one a line)", o->prompts);
    return p;
}

static int run_sample(void *opts) {
    const sample_opts *o = opts;
#ifdef _OPENMP
    if (o->threads) omp_set_num_threads((int)o->threads);
#endif
    if (!o->prompt == !o->prompts) die(2, "sample: give --prompt TEXT or --prompts FILE (one of them)");
    if (o->prompt && strlen(o->prompt) == 0) die(2, "sample: --prompt is empty; give at least one character");
    char *buf;
    prompt_list pl = prompt_texts(o, &buf);
    const char **texts = pl.text;
    size_t *tlens = pl.len;
    int M = pl.n, G = o->prompts ? (o->batch ? (int)o->batch : 8) : M;
    if (G > M) G = M;
    moe_model *m;
    use_max_memory(o->max_memory);
    use_device_for(o->device, o->dtype, o->ckpt);
    check(moe_model_load(o->ckpt, 1, &m));
    const moe_config *c = moe_model_config(m);
    moe_tokenizer *tok = ckpt_tokenizer(o->ckpt);
    if (tok && moe_tokenizer_vocab_size(tok) > c->vocab_size)
        die(1, "sample: the checkpoint's tokenizer has %d ids, more than the model's vocab_size %d",
            moe_tokenizer_vocab_size(tok), c->vocab_size);
    int **ids = malloc((size_t)M * sizeof *ids), *lens = malloc((size_t)M * sizeof *lens);
    if (!ids || !lens) die(1, "out of memory");
    size_t longest = 0;
    for (int i = 0; i < M; i++) {
        size_t np;
        ids[i] = i && !o->prompts ? ids[0] : encode_prompt(tok, c, texts[i], tlens[i], &np); // --batch: one prompt
        if (i && !o->prompts) np = (size_t)lens[0];
        if (np > (size_t)(INT_MAX / 2) - (size_t)o->tokens) die(2, "sample: a prompt is too long");
        lens[i] = (int)np;
        longest = np > longest ? np : longest;
    }
    int *out = malloc((size_t)G * o->tokens * sizeof(int) + 1), *n_out = malloc((size_t)G * sizeof(int));
    sample_out so = {.tok = tok, .vocab = c->vocab_size, .stream = !o->no_stream && M == 1,
                     .ids = malloc((longest + (size_t)o->tokens) * sizeof(int) + 1)};
    if (!out || !n_out || !so.ids) die(1, "out of memory");
    moe_sampling s = moe_sampling_default();
    s.temperature = (float)o->temperature;
    s.top_k = (int)o->top_k;
    s.top_p = (float)o->top_p;
    s.eos = tok && !o->ignore_eos ? moe_tokenizer_eos(tok) : -1;
    s.on_token = on_sample_token;
    s.user = &so;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sample_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old);
    out_start(&so, texts[0], tlens[0], ids[0], (size_t)lens[0]);
    if (so.stream) out_flush(&so, 0); // the prompt first, streamed at once
    double t0 = now_seconds();
    for (int g0 = 0; g0 < M && !sample_stop; g0 += G) {
        int B = M - g0 < G ? M - g0 : G;
        s.seed = (uint64_t)o->seed + 0x9e3779b97f4a7c15ULL * (uint64_t)g0; // sample i draws from seed + i x the constant
        check(moe_model_generate(m, B, (const int *const *)(ids + g0), lens + g0, (int)o->tokens, &s, out, n_out));
        for (int b = 0; b < B; b++) {
            if (!so.stream) {
                if (M > 1) printf("--- %s %d of %d\n", o->prompts ? "prompt" : "sample", g0 + b + 1, M);
                out_start(&so, texts[g0 + b], tlens[g0 + b], ids[g0 + b], (size_t)lens[g0 + b]);
                for (int i = 0; i < n_out[b]; i++) out_push(&so, out[(int64_t)b * o->tokens + i]);
            }
            out_flush(&so, 1);
            putchar('\n');
        }
    }
    sigaction(SIGINT, &old, NULL);
    if (o->stats && so.made > 0) print_sample_stats(m, &so, c, G, lens[0], t0);
    fflush(stdout);
    for (int i = 0; i < M; i++)
        if (i == 0 || o->prompts) free(ids[i]);
    free(ids);
    free(lens);
    free(texts);
    free(tlens);
    free(buf);
    free(so.ids);
    free(so.text);
    free(out);
    free(n_out);
    moe_tokenizer_free(tok);
    moe_model_free(m);
    if (sample_stop) {
        fprintf(stderr, "moe: stopped by SIGINT\n");
        return 130;
    }
    return 0;
}

const cli_command moe_cmd_sample = {
    "sample",
    "generate text from a checkpoint",
    "sample --ckpt DIR (--prompt TEXT | --prompts FILE) [options]",
    "Generates text from a checkpoint (DIR/model.safetensors, or the file itself). When DIR\n"
    "(or the file's directory) holds tokenizer.json (moe train copies the run's tokenizer\n"
    "there), the prompt is encoded with it and the output is the decoded text of the prompt\n"
    "and the generated tokens, up to the tokenizer's EOS, without special tokens; otherwise\n"
    "the prompt is bytes and each generated token a byte (vocab 256) or an id.\n"
    "Tokens are printed as they are made (never half a UTF-8 sequence; Ctrl-C keeps what was\n"
    "printed), up to the tokenizer's EOS unless --ignore-eos. Each layer keeps a KV cache, so\n"
    "a token costs one token's forward pass; routing is dropless, token by token. Past seq_len\n"
    "the window restarts from its last seq_len/2 tokens (docs/moe.md#generation). The CPU\n"
    "backend decodes; --device cuda is refused until the GPU backend does.\n",
    CLI_FLAGS(sample_flags),
    NULL,
    sizeof(sample_opts),
    &(sample_opts){.tokens = 200, .temperature = 0.8, .top_p = 0.95, .seed = 42},
    run_sample,
};

