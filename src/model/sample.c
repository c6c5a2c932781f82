/*
 * sample.c — generation: the KV-cache generator (the backend's kv_create and decode behind the
 * public moe_generator), and sampling with it: temperature, top-k, then top-p (nucleus)
 * filtering of each next-token distribution, for a batch of prompts at once.
 *
 * The window. The next token's logits come from the cache: the last W tokens of the sequence,
 * at positions 0 .. W-1. W starts as the prompt (its last seq_len tokens) and grows by one per
 * token; when the cache is full (W = seq_len) and another token is needed, it restarts from the
 * last max(1, seq_len / 2) tokens, re-encoded at positions 0 ...: one prefill every seq_len / 2
 * tokens instead of a forward over seq_len tokens for each.
 */
#include "core/core.h"
#include "model/backend.h"

#include <math.h>
#include <string.h>

struct moe_generator {
    moe_model *m;
    void *kv;
    int batch;
    int *len;         /* (batch) cached positions of each sequence */
    int *seq, *pos;   /* (batch) scratch: the sequences of a step, their positions */
};

moe_status moe_generator_create(moe_model *m, int batch, moe_generator **out) {
    *out = NULL;
    if (batch < 1) return moe__err(MOE_STATUS_ARG, "generator: batch %d is not positive", batch);
    if (!m->be_state) return moe__err(MOE_STATUS_ARG, "generator: the model was loaded with max_batch 0 (its weights only)");
    if (!m->be->decode)
        return moe__err(MOE_STATUS_ARG, "generator: the %s backend cannot decode with a KV cache yet; load the model "
                                        "on the CPU (--device cpu)", m->be->name);
    if (m->ep > 1)
        return moe__err(MOE_STATUS_ARG, "generator: an expert-parallel model (ep %d) cannot decode; load it on one "
                                        "process", m->ep);
    moe_generator *g = calloc(1, sizeof *g);
    if (!g || !(g->len = calloc((size_t)batch, sizeof(int))) || !(g->seq = malloc((size_t)batch * sizeof(int))) ||
        !(g->pos = malloc((size_t)batch * sizeof(int)))) {
        moe_generator_free(g);
        return moe__err(MOE_STATUS_NOMEM, "out of memory (generator)");
    }
    g->m = m;
    g->batch = batch;
    moe_status st = m->be->kv_create(m, batch, &g->kv);
    if (st != MOE_STATUS_OK) {
        moe_generator_free(g);
        return st;
    }
    *out = g;
    return MOE_STATUS_OK;
}

void moe_generator_free(moe_generator *g) {
    if (!g) return;
    if (g->kv) g->m->be->kv_free(g->kv);
    free(g->len);
    free(g->seq);
    free(g->pos);
    free(g);
}

size_t moe_generator_bytes(const moe_generator *g) { return g->m->be->kv_bytes(g->kv); }
int moe_generator_len(const moe_generator *g, int seq) { return seq >= 0 && seq < g->batch ? g->len[seq] : -1; }

void moe_generator_reset(moe_generator *g, int seq) {
    if (seq >= 0 && seq < g->batch) g->len[seq] = 0;
}

static moe_status check_tokens(const moe_generator *g, const int *tokens, int n) {
    int V = g->m->cfg.vocab_size;
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return moe__err(MOE_STATUS_DATA, "generator: token %d (at %d) is outside the vocabulary (vocab_size %d)",
                            tokens[i], i, V);
    return MOE_STATUS_OK;
}

moe_status moe_generator_feed(moe_generator *g, int seq, const int *tokens, int n, float *logits, int all) {
    int T = g->m->cfg.seq_len;
    if (seq < 0 || seq >= g->batch) return moe__err(MOE_STATUS_ARG, "generator: sequence %d of %d", seq, g->batch);
    if (n < 1 || n > T - g->len[seq])
        return moe__err(MOE_STATUS_ARG, "generator: %d tokens after %d cached pass seq_len %d", n, g->len[seq], T);
    moe_status st = check_tokens(g, tokens, n);
    if (st == MOE_STATUS_OK) st = g->m->be->decode(g->m, g->kv, tokens, 1, n, &seq, &g->len[seq], logits, all);
    if (st == MOE_STATUS_OK) g->len[seq] += n;
    return st;
}

/* One token of each of the n sequences seq[0..n) (into g->seq: it may be g->seq), all in one
 * decode; logits (n,V) in that order. */
static moe_status step_some(moe_generator *g, int n, const int *seq, const int *tokens, float *logits) {
    int T = g->m->cfg.seq_len;
    for (int i = 0; i < n; i++)
        if (g->len[seq[i]] >= T) return moe__err(MOE_STATUS_ARG, "generator: sequence %d is full (seq_len %d)", seq[i], T);
    moe_status st = check_tokens(g, tokens, n);
    if (st != MOE_STATUS_OK) return st;
    for (int i = 0; i < n; i++) g->seq[i] = seq[i], g->pos[i] = g->len[seq[i]];
    st = g->m->be->decode(g->m, g->kv, tokens, n, 1, g->seq, g->pos, logits, 0);
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) g->len[g->seq[i]]++;
    return st;
}

moe_status moe_generator_step(moe_generator *g, const int *tokens, float *logits) {
    for (int b = 0; b < g->batch; b++) g->seq[b] = b;
    return step_some(g, g->batch, g->seq, tokens, logits);
}

/* ---------------------------------------------------------------- sampling */

typedef struct {
    float p;
    int i;
} prob_idx;

static int by_prob_desc(const void *a, const void *b) {
    const prob_idx *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->i - y->i;
}

/* The next token from logits l (V): greedy at temperature 0, else drawn after the filters. */
static int pick(const float *l, int V, const moe_sampling *o, moe__rng *r, prob_idx *pi) {
    int next = 0;
    if (o->temperature == 0.0f) {
        for (int i = 1; i < V; i++)
            if (l[i] > l[next]) next = i;
        return next;
    }
    float maxv = l[0];
    for (int i = 1; i < V; i++) maxv = l[i] > maxv ? l[i] : maxv;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        pi[i].p = expf((l[i] - maxv) / o->temperature);
        pi[i].i = i;
        sum += pi[i].p;
    }
    for (int i = 0; i < V; i++) pi[i].p = (float)(pi[i].p / sum);
    qsort(pi, (size_t)V, sizeof *pi, by_prob_desc);
    int keep = o->top_k > 0 && o->top_k < V ? o->top_k : V;
    // nucleus: the smallest prefix whose mass reaches top_p
    double cum = 0;
    for (int i = 0; i < keep; i++) {
        cum += pi[i].p;
        if (cum >= o->top_p) {
            keep = i + 1;
            break;
        }
    }
    double mass = 0;
    for (int i = 0; i < keep; i++) mass += pi[i].p;
    double u = moe__rng_uniform(r) * mass, acc = 0;
    next = pi[keep - 1].i;
    for (int i = 0; i < keep; i++) {
        acc += pi[i].p;
        if (u < acc) return pi[i].i;
    }
    return next;
}

moe_sampling moe_sampling_default(void) {
    return (moe_sampling){.temperature = 0.8f, .top_k = 0, .top_p = 0.95f, .seed = 42, .eos = -1};
}

/* Sequence b's window restarted from the last `keep` tokens of its history hist[0..n): the cache
 * refilled, its last logits into l. */
static moe_status refill(moe_generator *g, int b, const int *hist, int n, int keep, float *l) {
    moe_generator_reset(g, b);
    return moe_generator_feed(g, b, hist + n - keep, keep, l, 0);
}

moe_status moe_model_generate(moe_model *m, int batch, const int *const *prompts, const int *n_prompt, int n_new,
                              const moe_sampling *o, int *out, int *n_out) {
    const moe_config *c = moe_model_config(m);
    int V = c->vocab_size, T = c->seq_len, half = T / 2 > 0 ? T / 2 : 1;
    if (batch < 1 || n_new < 0) return moe__err(MOE_STATUS_ARG, "generate: batch %d, %d new tokens", batch, n_new);
    for (int b = 0; b < batch; b++)
        if (n_prompt[b] < 1) return moe__err(MOE_STATUS_ARG, "generate: prompt %d is empty", b);
    if (!(o->temperature >= 0.0f) || !(o->top_p > 0.0f && o->top_p <= 1.0f) || o->top_k < 0)
        return moe__err(MOE_STATUS_ARG, "generate: temperature %g, top_k %d, top_p %g out of range", o->temperature,
                        o->top_k, o->top_p);
    moe_generator *g;
    moe_status st = moe_generator_create(m, batch, &g);
    if (st != MOE_STATUS_OK) return st;
    int64_t hl = 0;
    for (int b = 0; b < batch; b++) hl += n_prompt[b] + n_new;
    int *hist = malloc((size_t)hl * sizeof(int)), **h = malloc((size_t)batch * sizeof(int *));
    int *hn = calloc((size_t)batch, sizeof(int)), *next = malloc((size_t)batch * sizeof(int));
    int *live = malloc((size_t)batch * sizeof(int)), *sel = malloc((size_t)batch * sizeof(int));
    float *logits = malloc((size_t)batch * V * sizeof(float)), *step = malloc((size_t)batch * V * sizeof(float));
    prob_idx *pi = malloc((size_t)V * sizeof(prob_idx));
    moe__rng *rng = malloc((size_t)batch * sizeof(moe__rng));
    if (!hist || !h || !hn || !next || !live || !sel || !logits || !step || !pi || !rng) {
        st = moe__err(MOE_STATUS_NOMEM, "generate: out of memory");
        goto done;
    }
    // prompts: each sequence's last seq_len tokens, prefilled alone
    for (int b = 0, at = 0; b < batch && st == MOE_STATUS_OK; at += n_prompt[b] + n_new, b++) {
        h[b] = hist + at;
        memcpy(h[b], prompts[b], (size_t)n_prompt[b] * sizeof(int));
        hn[b] = n_prompt[b];
        n_out[b] = 0;
        live[b] = n_new > 0;
        moe__rng_seed(&rng[b], o->seed + 0x9e3779b97f4a7c15ULL * (uint64_t)b); // sequence 0: the seed itself
        int keep = hn[b] < T ? hn[b] : T;
        st = refill(g, b, h[b], hn[b], keep, logits + (int64_t)b * V);
    }
    for (int i = 0; i < n_new && st == MOE_STATUS_OK; i++) {
        int any = 0, stop = 0;
        for (int b = 0; b < batch; b++) {
            if (!live[b]) continue;
            next[b] = pick(logits + (int64_t)b * V, V, o, &rng[b], pi);
            h[b][hn[b]++] = next[b];
            out[(int64_t)b * n_new + n_out[b]++] = next[b];
            if (o->on_token && o->on_token(o->user, b, next[b])) stop = 1;
            if (next[b] == o->eos || n_out[b] == n_new) live[b] = 0;
            any |= live[b];
        }
        if (!any || stop) break;
        // the next logits: a live sequence whose window is full restarts it (a prefill of its
        // own); the other live ones take their token all in one step
        int n = 0;
        for (int b = 0; b < batch && st == MOE_STATUS_OK; b++) {
            if (!live[b]) continue;
            if (moe_generator_len(g, b) >= T) st = refill(g, b, h[b], hn[b], half, logits + (int64_t)b * V);
            else sel[n] = b, next[n++] = h[b][hn[b] - 1];
        }
        if (st == MOE_STATUS_OK && n > 0) st = step_some(g, n, sel, next, step);
        for (int k = n - 1; k >= 0 && st == MOE_STATUS_OK; k--) // rows to their sequences
            memcpy(logits + (int64_t)sel[k] * V, step + (int64_t)k * V, (size_t)V * sizeof(float));
    }
done:
    moe_generator_free(g);
    free(hist);
    free(h);
    free(hn);
    free(next);
    free(live);
    free(sel);
    free(logits);
    free(step);
    free(pi);
    free(rng);
    return st;
}

moe_status moe_model_sample(moe_model *m, const int *prompt, int n_prompt, int *out, int n_new, float temperature,
                            int top_k, float top_p, uint64_t seed) {
    if (n_prompt < 1) return moe__err(MOE_STATUS_ARG, "sample: the prompt is empty");
    moe_sampling o = moe_sampling_default();
    o.temperature = temperature;
    o.top_k = top_k;
    o.top_p = top_p;
    o.seed = seed;
    int n_out;
    moe_status st = moe_model_generate(m, 1, &prompt, &n_prompt, n_new, &o, out, &n_out);
    return st;
}
