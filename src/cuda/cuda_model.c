/*
 * cuda_model.c — the model's forward and backward passes on the GPU, block by block, in the
 * CPU's order (cpu/cpu_model.c) with the kernels of cuda/ and cuBLAS products:
 *
 *   tokens (B,T) -> embedding -> L x [ x += attn(rmsnorm(x)); x += ffn_l(rmsnorm(x)) ]
 *                -> rmsnorm -> lm_head -> cross-entropy
 *
 * The MoE layer (token-choice top-K): router logits (an fp32 product in both dtypes, as
 * Megatron and DeepSeek keep the router), top-K, dispatch by a stable sort of the assignments by
 * expert (CUB), a gather into expert-contiguous rows, one SwiGLU per expert on its rows, the
 * combine in slot order, and the shared experts as one SwiGLU of width S*F on every token.
 * The experts' row counts are the one thing read back inside a step (each expert's product needs
 * its row count on the host); the losses are read once at the end of the forward.
 *
 * Every launch is queued on the default stream; the first error stops the pass and is returned.
 */
#include "cuda/cuda_backend.h"

#include <math.h>
#include <string.h>

#define TRY(call)                                  \
    do {                                           \
        moe_status st_ = (call);                   \
        if (st_ != MOE_STATUS_OK) return st_;      \
    } while (0)

/* y (N,C) (+)= swiglu(x w1^T, x w3^T) w2^T; h1, h3, act (N,F) saved. */
static moe_status ffn_forward(moe__cuda *s, float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                              const float *w3, const float *w2, int64_t N, int C, int F, int accumulate) {
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, h1, x, w1, N, C, F, 0));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, h3, x, w3, N, C, F, 0));
    TRY(moe__cuda_swiglu_forward(act, h1, h3, N * F));
    return moe__cuda_matmul_forward(s->blas, s->bf16, y, act, w2, N, F, C, accumulate);
}

/* dx (N,C) += d x; dw1, dw3, dw2 accumulate; dact, dh1, dh3 (N,F) are scratch. */
static moe_status ffn_backward(moe__cuda *s, float *dx, float *dw1, float *dw3, float *dw2, const float *dy,
                               const float *x, const float *h1, const float *h3, const float *act, const float *w1,
                               const float *w3, const float *w2, int64_t N, int C, int F) {
    moe__cpu *a = &s->act;
    TRY(moe__cuda_memset(a->dact, 0, (size_t)N * F * sizeof(float)));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a->dact, dw2, dy, act, w2, N, F, C));
    TRY(moe__cuda_swiglu_backward(a->dh1, a->dh3, a->dact, h1, h3, N * F));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, dx, dw1, a->dh1, x, w1, N, C, F));
    return moe__cuda_matmul_backward(s->blas, s->bf16, dx, dw3, a->dh3, x, w3, N, C, F);
}

/* ---------------------------------------------------------------- the MoE layer */

static int64_t *layer_counts(moe_model *m, int l) {
    return moe__cuda_of(m)->h_counts + (size_t)m->moe_slot[l] * (2 * (size_t)m->max_e + 1);
}

/* The MoE layer l's forward: y (N,C) = MoE(x); its routing statistics into m->stats. */
static moe_status moe_forward(moe_model *m, int l, float *y, const float *x, int B, int T, int training) {
    moe__cuda *s = moe__cuda_of(m);
    const moe_config *c = &m->cfg;
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l);
    moe__moe_cache *mc = &s->act.la[l].mc;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, T, training);
    int64_t N = (int64_t)B * T;
    int E = d.E, K = d.K, C = d.C, F = d.F, slot = m->moe_slot[l];
    float *scal = s->scal + 1 + 3 * slot; // aux, z, seq_aux
    TRY(moe__cuda_matmul_forward(s->blas, 0, mc->logits, x, w.moe.wg, N, C, E, 0));
    TRY(moe__cuda_router_topk(scal + 1, mc->lse, mc->scores, mc->probs, mc->sel, mc->gate, mc->row_of, mc->logits,
                              w.moe.bias, N, E, K, d.score == MOE_SCORE_SIGMOID, d.norm_topk, d.route_scale));
    int cap = moe__capacity(&d, N, d.capacity_factor);
    TRY(moe__cuda_dispatch(mc->row_of, mc->row_token, mc->offsets, mc->load, s->dispatch, s->dispatch_bytes, mc->sel,
                           mc->scores, N, E, K, cap, d.drop_policy == MOE_DROP_PROBABILITY));
    TRY(moe__cuda_router_losses(scal, scal + 2, mc->f, mc->seq_f, mc->load, mc->probs, mc->sel, N, T, E, K));
    // the row counts, the step's one wait inside a layer: offsets (E+1), then load (E)
    int64_t *h = layer_counts(m, l);
    TRY(moe__cuda_sync());
    TRY(moe__cuda_to_host(h, mc->offsets, (size_t)(E + 1) * sizeof(int64_t)));
    TRY(moe__cuda_to_host(h + E + 1, mc->load, (size_t)E * sizeof(int64_t)));
    const int64_t *off = h, *load = h + E + 1;
    TRY(moe__cuda_gather_rows(mc->xe, x, mc->row_token, off[E], C));
    for (int e = 0; e < E; e++) {
        int64_t r0 = off[e], ne = off[e + 1] - r0, wo = (int64_t)e * F * C;
        if (ne == 0) continue;
        TRY(ffn_forward(s, mc->ye + r0 * C, mc->h1 + r0 * F, mc->h3 + r0 * F, mc->act + r0 * F, mc->xe + r0 * C,
                        w.moe.w1 + wo, w.moe.w3 + wo, w.moe.w2 + wo, ne, C, F, 0));
    }
    TRY(moe__cuda_combine(y, mc->ye, mc->gate, mc->row_of, N, K, C));
    if (d.S > 0) TRY(ffn_forward(s, y, mc->sh1, mc->sh3, mc->sact, x, w.moe.sw1, w.moe.sw3, w.moe.sw2, N, C, d.S * F, 1));
    // statistics, as collect_stats on the CPU (the loss values come with the forward's end)
    moe_layer_stats *ls = &m->stats[slot];
    int64_t routed = 0, would = 0;
    int tcap = cap == 0 ? moe__capacity(&d, N, c->capacity_factor) : 0;
    for (int e = 0; e < E; e++) {
        routed += load[e];
        if (tcap > 0 && load[e] > tcap) would += load[e] - tcap;
    }
    memcpy(ls->load, load, (size_t)E * sizeof(int64_t));
    ls->assignments = routed;
    ls->dropped = routed - off[E];
    ls->would_drop = would;
    ls->capacity = cap;
    ls->importance = ls->load_loss = 0.0f;
    return MOE_STATUS_OK;
}

static moe_status moe_backward(moe_model *m, int l, float *dx, const float *dy, const float *x, int T,
                               const moe__moe_loss_scales *lsc) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l), gw = moe__cpu_layer_weights(m, s->g, l);
    moe__moe_cache *mc = &s->act.la[l].mc;
    moe__moe_scratch *ms = &s->act.ms;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, T, m->training);
    int64_t N = (int64_t)m->B * T;
    int E = d.E, K = d.K, C = d.C, F = d.F;
    const int64_t *off = layer_counts(m, l);
    if (d.S > 0)
        TRY(ffn_backward(s, dx, gw.moe.sw1, gw.moe.sw3, gw.moe.sw2, dy, x, mc->sh1, mc->sh3, mc->sact, w.moe.sw1,
                         w.moe.sw3, w.moe.sw2, N, C, d.S * F));
    TRY(moe__cuda_combine_backward(ms->dye, ms->dgate, dy, mc->ye, mc->gate, mc->row_of, N, K, C));
    TRY(moe__cuda_memset(ms->dxe, 0, (size_t)off[E] * C * sizeof(float)));
    for (int e = 0; e < E; e++) {
        int64_t r0 = off[e], ne = off[e + 1] - r0, wo = (int64_t)e * F * C;
        if (ne == 0) continue;
        TRY(ffn_backward(s, ms->dxe + r0 * C, gw.moe.w1 + wo, gw.moe.w3 + wo, gw.moe.w2 + wo, ms->dye + r0 * C,
                         mc->xe + r0 * C, mc->h1 + r0 * F, mc->h3 + r0 * F, mc->act + r0 * F, w.moe.w1 + wo,
                         w.moe.w3 + wo, w.moe.w2 + wo, ne, C, F));
    }
    TRY(moe__cuda_scatter_add(dx, ms->dxe, mc->row_of, N, K, C));
    TRY(moe__cuda_router_backward(ms->dlogits, ms->dgate, mc->logits, mc->lse, mc->scores, mc->probs, mc->sel, mc->f,
                                  mc->seq_f, N, T, E, K, d.score == MOE_SCORE_SIGMOID, d.norm_topk, d.route_scale,
                                  lsc->aux, lsc->seq_aux, lsc->z));
    return moe__cuda_matmul_backward(s->blas, 0, dx, gw.moe.wg, ms->dlogits, x, w.moe.wg, N, C, E);
}

/* ---------------------------------------------------------------- blocks */

static moe_status block_forward(moe_model *m, int l, int B, int T, int training) {
    const moe_config *c = &m->cfg;
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu *a0 = &s->act;
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, H = c->n_head;
    size_t NC = (size_t)N * C * sizeof(float);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l);
    moe__cpu_layer_act *a = &a0->la[l];
    float *x = a0->resid[l], *xo = a0->resid[l + 1];
    TRY(moe__cuda_rmsnorm_forward(a->ln1, a->rstd1, x, w.ln1, N, C, c->norm_eps));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->q, a->ln1, w.wq, N, C, C, 0));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->k, a->ln1, w.wk, N, C, C, 0));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->v, a->ln1, w.wv, N, C, C, 0));
    TRY(moe__cuda_rope_forward(a->q, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_rope_forward(a->k, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_attention_forward(a->atty, a->att, a->q, a->k, a->v, B, T, C, H));
    TRY(moe__cuda_copy(a->resid_mid, x, NC));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->resid_mid, a->atty, w.wo, N, C, C, 1));
    TRY(moe__cuda_rmsnorm_forward(a->ln2, a->rstd2, a->resid_mid, w.ln2, N, C, c->norm_eps));
    if (m->moe_slot[l] < 0) {
        TRY(moe__cuda_copy(xo, a->resid_mid, NC));
        return ffn_forward(s, xo, a->h1, a->h3, a->act, a->ln2, w.w1, w.w3, w.w2, N, C, c->ffn_hidden, 1);
    }
    TRY(moe_forward(m, l, a0->tmp, a->ln2, B, T, training));
    return moe__cuda_add(xo, a->resid_mid, a0->tmp, N * C);
}

/* The losses of the forward, read back once: the cross-entropy and each MoE layer's aux, z and
 * sequence losses (into m->stats, then moe__model_losses). */
static moe_status read_losses(moe_model *m, int targets, moe_losses *out) {
    moe__cuda *s = moe__cuda_of(m);
    TRY(moe__cuda_sync());
    TRY(moe__cuda_to_host(s->h_scal, s->scal, (size_t)(1 + 3 * m->n_moe) * sizeof(float)));
    for (int i = 0; i < m->n_moe; i++) {
        moe_layer_stats *st = &m->stats[i];
        st->aux = s->h_scal[1 + 3 * i];
        st->z = s->h_scal[2 + 3 * i];
        st->seq_aux = s->h_scal[3 + 3 * i];
    }
    return out ? moe__model_losses(m, targets, s->h_scal[0], out) : MOE_STATUS_OK;
}

moe_status moe__cuda_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                             moe_losses *out) {
    const moe_config *c = &m->cfg;
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu *a = &s->act;
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, V = c->vocab_size;
    if (s->err != MOE_STATUS_OK) return moe__err(s->err, "the GPU failed earlier: %s", moe_last_error());
    TRY(moe__cuda_to_device(a->tokens, tokens, (size_t)N * sizeof(int)));
    if (targets) TRY(moe__cuda_to_device(a->targets, targets, (size_t)N * sizeof(int)));
    TRY(moe__cuda_embedding_forward(a->resid[0], s->p + m->off_embed, a->tokens, N, C));
    for (int l = 0; l < c->n_layer; l++) TRY(block_forward(m, l, B, T, training));
    TRY(moe__cuda_rmsnorm_forward(a->lnf, a->rstdf, a->resid[c->n_layer], s->p + m->off_normf, N, C, c->norm_eps));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->logits, a->lnf, s->p + m->off_lm, N, C, V, 0));
    if (targets) TRY(moe__cuda_crossentropy(s->scal, NULL, a->row_loss, a->logits, a->targets, N, V, 1.0f));
    return read_losses(m, targets != NULL, out);
}

/* ---------------------------------------------------------------- backward */

static moe_status block_backward(moe_model *m, int l, const moe__moe_loss_scales *ls) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu *a0 = &s->act;
    const moe_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->n_embd, H = c->n_head;
    int64_t N = (int64_t)B * T;
    size_t NC = (size_t)N * C * sizeof(float);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l), gw = moe__cpu_layer_weights(m, s->g, l);
    moe__cpu_layer_act *a = &a0->la[l];
    // xo = resid_mid + ffn(ln2): dresid holds d xo and becomes d resid_mid
    TRY(moe__cuda_memset(a0->dln, 0, NC));
    if (m->moe_slot[l] < 0)
        TRY(ffn_backward(s, a0->dln, gw.w1, gw.w3, gw.w2, a0->dresid, a->ln2, a->h1, a->h3, a->act, w.w1, w.w3, w.w2, N,
                         C, c->ffn_hidden));
    else
        TRY(moe_backward(m, l, a0->dln, a0->dresid, a->ln2, T, ls));
    TRY(moe__cuda_rmsnorm_backward(a0->dresid, gw.ln2, a0->dln, a->resid_mid, w.ln2, a->rstd2, N, C));
    // resid_mid = x + atty wo^T
    TRY(moe__cuda_memset(a0->datty, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->datty, gw.wo, a0->dresid, a->atty, w.wo, N, C, C));
    TRY(moe__cuda_memset(a0->dq, 0, NC));
    TRY(moe__cuda_memset(a0->dk, 0, NC));
    TRY(moe__cuda_memset(a0->dv, 0, NC));
    TRY(moe__cuda_attention_backward(a0->dq, a0->dk, a0->dv, a0->datt, a0->datty, a->q, a->k, a->v, a->att, B, T, C, H));
    TRY(moe__cuda_rope_backward(a0->dq, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_rope_backward(a0->dk, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_memset(a0->dln, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wq, a0->dq, a->ln1, w.wq, N, C, C));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wk, a0->dk, a->ln1, w.wk, N, C, C));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wv, a0->dv, a->ln1, w.wv, N, C, C));
    return moe__cuda_rmsnorm_backward(a0->dresid, gw.ln1, a0->dln, a0->resid[l], w.ln1, a->rstd1, N, C);
}

moe_status moe__cuda_backward(moe_model *m, float grad_scale) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu *a = &s->act;
    const moe_config *c = &m->cfg;
    int C = c->n_embd, V = c->vocab_size;
    int64_t N = (int64_t)m->B * m->T;
    size_t NC = (size_t)N * C * sizeof(float);
    float *g = s->g;
    if (s->err != MOE_STATUS_OK) return moe__err(s->err, "the GPU failed earlier: %s", moe_last_error());
    // loss = mean_n ce_n: dlogits = scale (softmax - onehot) / N
    TRY(moe__cuda_crossentropy(s->scal, a->dlogits, a->row_loss, a->logits, a->targets, N, V, grad_scale));
    TRY(moe__cuda_memset(a->dln, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a->dln, g + m->off_lm, a->dlogits, a->lnf, s->p + m->off_lm, N, C, V));
    TRY(moe__cuda_memset(a->dresid, 0, NC));
    TRY(moe__cuda_rmsnorm_backward(a->dresid, g + m->off_normf, a->dln, a->resid[c->n_layer], s->p + m->off_normf,
                                   a->rstdf, N, C));
    float per_layer = m->n_moe ? grad_scale / (float)m->n_moe : 0.0f;
    moe__moe_loss_scales ls = {per_layer * c->aux_loss_coef, per_layer * c->z_loss_coef,
                               per_layer * c->seq_aux_loss_coef, 0.0f, 0.0f};
    for (int l = c->n_layer - 1; l >= 0; l--) TRY(block_backward(m, l, &ls));
    TRY(moe__cuda_embedding_backward(g + m->off_embed, a->dresid, a->tokens, N, C));
    return MOE_STATUS_OK;
}
