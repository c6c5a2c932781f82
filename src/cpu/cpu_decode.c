/*
 * cpu_decode.c — generation with a KV cache on the CPU: each layer keeps the keys and values of
 * every position of up to `batch` sequences, so that a new token costs one token's forward
 * pass. A call runs n new tokens of some sequences (a prompt, or one token of each) at their
 * next positions:
 *
 *   x = embed(tokens); per layer: ln1, q k v (rows; biases, QK-norm), RoPE at each row's position, k v stored,
 *   attention of each row over its sequence's cached positions up to its own, x += o-proj;
 *   x += ffn or MoE (dropless, token by token) of ln2(x); logits = lm_head(rmsnorm(x)).
 *
 * Every row is one token, so the products are the training forward's on fewer rows; attention
 * keeps one score vector of seq_len floats per thread, never a (T, T) matrix.
 */
#include "cpu/cpu.h"
#include "nn/nn.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int batch, T, N, threads;    /* sequences, positions, rows of the workspace, score vectors */
    float *k, *v;                /* (L, batch, T, C) */
    float *x, *ln, *q, *kn, *vn, *atty, *ln2, *y, *rstd, *h1, *h3, *act, *scores;
    int *pos;                    /* (N) each row's position */
    moe__moe_cache mc;           /* one MoE cache (forward only) shared by the layers */
    char *arena;
    size_t bytes;
} cpu_kv;

/* The plan of the cache and the workspace (with base NULL: only sizes). */
static size_t kv_plan(const moe_model *m, cpu_kv *s, char *base) {
    const moe_config *c = &m->cfg;
    moe__planner p = {base, 0};
    int64_t C = c->n_embd, N = s->N, L = c->n_layer, KC = (int64_t)moe__kv_heads(c) * (C / c->n_head);
    s->k = MOE_TAKE_F(&p, L * s->batch * s->T * KC); // key/value heads only (grouped-query attention)
    s->v = MOE_TAKE_F(&p, L * s->batch * s->T * KC);
    s->kn = MOE_TAKE_F(&p, N * KC);
    s->vn = MOE_TAKE_F(&p, N * KC);
    float **rows[] = {&s->x, &s->ln, &s->q, &s->atty, &s->ln2, &s->y};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) *rows[i] = MOE_TAKE_F(&p, N * C);
    s->rstd = MOE_TAKE_F(&p, N);
    if (m->n_moe < c->n_layer) {
        s->h1 = MOE_TAKE_F(&p, N * c->ffn_hidden);
        s->h3 = MOE_TAKE_F(&p, N * c->ffn_hidden);
        s->act = MOE_TAKE_F(&p, N * c->ffn_hidden);
    }
    s->scores = MOE_TAKE_F(&p, (int64_t)s->threads * s->T);
    s->pos = MOE_TAKE_I(&p, N);
    if (m->n_moe > 0) {
        moe__moe_dims d = moe__cpu_layer_dims(m, 0, 1, 0);
        d.E = m->max_e;
        d.El = m->max_e;
        moe__moe_plan_cache(&p, &s->mc, &d, N, moe__model_max_slots(c, m->max_e) * N);
    }
    return p.off;
}

moe_status moe__cpu_kv_create(moe_model *m, int batch, void **out) {
    *out = NULL;
    cpu_kv *s = calloc(1, sizeof *s);
    if (!s) return moe__err(MOE_STATUS_NOMEM, "out of memory (KV cache)");
    s->batch = batch;
    s->T = m->cfg.seq_len;
    s->N = batch > s->T ? batch : s->T;
    s->threads = 1;
#ifdef _OPENMP
    s->threads = omp_get_max_threads();
#endif
    s->bytes = kv_plan(m, s, NULL);
    if (!(s->arena = moe__malloc(s->bytes))) {
        size_t bytes = s->bytes;
        free(s);
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate a KV cache and workspace of %.1f MiB (%d sequences of %d positions)",
                        (double)bytes / 1048576.0, batch, m->cfg.seq_len);
    }
    kv_plan(m, s, s->arena);
    *out = s;
    return MOE_STATUS_OK;
}

void moe__cpu_kv_free(void *kv) {
    cpu_kv *s = kv;
    if (!s) return;
    free(s->arena);
    free(s);
}

size_t moe__cpu_kv_bytes(const void *kv) { return ((const cpu_kv *)kv)->bytes; }

/* Causal attention of N rows over their sequences' cached keys and values: row r of sequence
 * seq[r / n] at position pos[r] attends to positions 0 .. pos[r] of layer l. */
static void attend(cpu_kv *s, const moe_model *m, int l, int B, int n, const int *seq) {
    const moe_config *c = &m->cfg;
    int C = c->n_embd, H = c->n_head, D = C / H, T = s->T, G = H / moe__kv_heads(c), KC = moe__kv_heads(c) * D;
    float scale = 1.0f / sqrtf((float)D);
    int64_t rows = (int64_t)B * n;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(s->threads) if (rows * H > 1)
    for (int64_t r = 0; r < rows; r++)
        for (int h = 0; h < H; h++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            int64_t base = ((int64_t)l * s->batch + seq[r / n]) * T * KC + (int64_t)(h / G) * D;
            moe__attention_row(s->atty + r * C + (int64_t)h * D, s->scores + (int64_t)tid * T, s->q + r * C + (int64_t)h * D,
                               s->k + base, s->v + base, s->pos[r] + 1, KC, D, scale);
        }
}

moe_status moe__cpu_decode(moe_model *m, void *kv, const int *tokens, int B, int n, const int *seq, const int *pos,
                           float *logits, int all) {
    const moe_config *c = &m->cfg;
    moe__cpu *cs = moe__cpu_of(m);
    cpu_kv *s = kv;
    int C = c->n_embd, H = c->n_head, T = s->T, Hkv = moe__kv_heads(c), KC = Hkv * (C / H);
    int64_t N = (int64_t)B * n;
    moe__cpu_embed(m, s->x, tokens, N);
    for (int64_t r = 0; r < N; r++) s->pos[r] = pos[r / n] + (int)(r % n);
    for (int l = 0; l < c->n_layer; l++) {
        moe__cpu_layer_w w = moe__cpu_layer_fwd(m, l);
        moe__rmsnorm_forward(s->ln, s->rstd, s->x, w.ln1, N, C, c->norm_eps);
        moe__cpu_qkv(m, &w, s->q, s->kn, s->vn, NULL, NULL, s->rstd, s->rstd, s->ln, N);
        moe__rope_rows(s->q, cs->rope_cos, cs->rope_sin, N, C, H, s->pos);
        moe__rope_rows(s->kn, cs->rope_cos, cs->rope_sin, N, KC, Hkv, s->pos);
        for (int64_t r = 0; r < N; r++) {
            int64_t at = (((int64_t)l * s->batch + seq[r / n]) * T + s->pos[r]) * KC;
            memcpy(s->k + at, s->kn + r * KC, (size_t)KC * sizeof(float));
            memcpy(s->v + at, s->vn + r * KC, (size_t)KC * sizeof(float));
        }
        attend(s, m, l, B, n, seq);
        moe__matmul_forward(s->x, s->atty, w.wo, N, C, C, 1); // the residual stream, in place: no backward
        moe__rmsnorm_forward(s->ln2, s->rstd, s->x, w.ln2, N, C, c->norm_eps);
        if (m->moe_slot[l] < 0) {
            moe__ffn_forward(s->x, s->h1, s->h3, s->act, s->ln2, w.w1, w.w3, w.w2, N, C, c->ffn_hidden, 1);
            continue;
        }
        moe__moe_dims d = moe__cpu_layer_dims(m, l, n, 0);
        d.capacity_factor = 0.0f; // decoding is dropless: each token's routing is its own
        moe_status st = moe__moe_forward(s->y, &s->mc, s->ln2, &w.moe, &d, N);
        if (st != MOE_STATUS_OK) return moe__err(st, "layer %d: %s", l, moe_last_error());
#pragma omp parallel for schedule(static) if (N * C > 4096)
        for (int64_t i = 0; i < N * C; i++) s->x[i] += s->y[i];
    }
    // the final norm and the head: every row, or each sequence's last
    int64_t rows = all ? N : B;
    if (!all)
        for (int b = 0; b < B; b++) memmove(s->x + (int64_t)b * C, s->x + ((int64_t)b * n + n - 1) * C, (size_t)C * sizeof(float));
    moe__rmsnorm_forward(s->ln, s->rstd, s->x, moe__cpu_normf(m), rows, C, c->norm_eps);
    moe__cpu_head(m, logits, s->ln, rows);
    return MOE_STATUS_OK;
}
