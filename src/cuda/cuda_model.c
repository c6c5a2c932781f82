/*
 * cuda_model.c — the model's forward and backward passes on the GPU, block by block, in the
 * CPU's order (cpu/cpu_model.c) with the kernels of cuda/ and cuBLAS products:
 *
 *   tokens (B,T) -> embedding -> L x [ x += attn(rmsnorm(x)); x += ffn_l(rmsnorm(x)) ]
 *                -> rmsnorm -> lm_head -> cross-entropy
 *
 * The MoE layer, for every routing method: input jitter, router logits (an fp32 product in both
 * dtypes, as Megatron and DeepSeek keep the router; and the noise projection of noisy top-K),
 * scores and selection (router.cu), dispatch by a stable sort of the assignments by expert (CUB;
 * expert choice sorts each expert's tokens by score), a gather into expert-contiguous rows, one
 * SwiGLU per expert on its rows, the combine in slot order, and the shared experts as one SwiGLU
 * of width S*F on every token. With recompute, backward redoes a block's forward first, as the
 * CPU does.
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

static moe__cuda_route route_of(const moe__moe_cache *c) {
    moe__cuda_route r = {c->xr,    c->jit, c->logits, c->scores, c->probs, c->noise_raw, c->noise_eps, c->noisy, c->lse,
                         c->sel,   c->gate, c->row_of, c->load,  c->f,     c->seq_f,     c->imp,       c->loadest};
    return r;
}

static moe__cuda_route_dims route_dims(const moe__moe_dims *d, int64_t N) {
    moe__cuda_route_dims r = {N, d->T, d->C, d->E, d->K, moe__moe_slots(d), (int)moe__moe_effective_routing(d),
                              d->score == MOE_SCORE_SIGMOID, d->norm_topk, d->random_routing, d->training,
                              d->route_scale, d->jitter_eps, d->noise_seed};
    return r;
}

/* Layer slot's losses in the step's scalars: z, aux, seq_aux, importance, load. */
static float *layer_losses(moe__cuda *s, int slot) { return s->scal + 1 + MOE_CUDA_LAYER_LOSSES * slot; }

/* Router and dispatch of MoE layer l: routing, capacity, rows; the row counts read back. */
static moe_status route(moe_model *m, int l, const float *x, const moe__moe_dims *d, int64_t N, int *cap) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l);
    moe__moe_cache *mc = &s->act.la[l].mc;
    moe__cuda_route r = route_of(mc);
    moe__cuda_route_dims rd = route_dims(d, N);
    int E = d->E, C = d->C, routing = rd.routing;
    float *ls = layer_losses(s, m->moe_slot[l]);
    const float *xr = x;
    if (d->training && d->jitter_eps > 0.0f) {
        TRY(moe__cuda_jitter(&rd, &r, x));
        xr = mc->xr;
    }
    TRY(moe__cuda_matmul_forward(s->blas, 0, mc->logits, xr, w.moe.wg, N, C, E, 0)); // the router stays fp32
    if (routing == MOE_ROUTING_NOISY_TOPK) TRY(moe__cuda_matmul_forward(s->blas, 0, mc->noise_raw, xr, w.moe.wnoise, N, C, E, 0));
    TRY(moe__cuda_router_forward(&rd, &r, ls, w.moe.bias));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_ROUTER);
    if (routing == MOE_ROUTING_EXPERT_CHOICE) {
        *cap = moe__capacity(d, N, d->capacity_factor > 0.0f ? d->capacity_factor : 1.0f);
        TRY(moe__cuda_dispatch_ec(mc->row_of, mc->row_token, mc->offsets, mc->load, s->dispatch, s->dispatch_bytes,
                                  mc->scores, N, E, *cap));
    } else {
        *cap = routing == MOE_ROUTING_SOFT ? 0 : moe__capacity(d, N, d->capacity_factor);
        TRY(moe__cuda_dispatch(mc->row_of, mc->row_token, mc->offsets, mc->load, s->dispatch, s->dispatch_bytes, mc->sel,
                               mc->scores, N, E, rd.slots, *cap, d->drop_policy == MOE_DROP_PROBABILITY));
    }
    TRY(moe__cuda_router_losses_all(&rd, &r, ls + 1));
    // the row counts, the step's one wait inside a layer: offsets (E+1), then load (E)
    int64_t *h = layer_counts(m, l);
    TRY(moe__cuda_sync());
    TRY(moe__cuda_to_host(h, mc->offsets, (size_t)(E + 1) * sizeof(int64_t)));
    TRY(moe__cuda_to_host(h + E + 1, mc->load, (size_t)E * sizeof(int64_t)));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_DISPATCH); // the wait's idle device time is dispatch's
    return MOE_STATUS_OK;
}

/* MoE layer l's routing statistics, as collect_stats and moe__dispatch make them on the CPU (the
 * loss values come with the forward's end). */
static void layer_stats(moe_model *m, int l, const moe__moe_dims *d, int64_t N, int cap) {
    const int64_t *off = layer_counts(m, l), *load = off + d->E + 1;
    moe_layer_stats *ls = &m->stats[m->moe_slot[l]];
    moe_routing routing = moe__moe_effective_routing(d);
    int64_t routed = 0, would = 0;
    int tcap = cap == 0 && routing != MOE_ROUTING_SOFT ? moe__capacity(d, N, d->train_capacity_factor) : 0;
    for (int e = 0; e < d->E; e++) {
        routed += load[e];
        if (tcap > 0 && load[e] > tcap) would += load[e] - tcap;
    }
    memcpy(ls->load, load, (size_t)d->E * sizeof(int64_t));
    ls->assignments = routed;
    ls->dropped = routed - off[d->E];
    ls->would_drop = would;
    ls->capacity = cap;
}

/* The MoE layer l's forward: y (N,C) = MoE(x); its routing statistics into m->stats. */
static moe_status moe_forward(moe_model *m, int l, float *y, const float *x, int B, int T, int training) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l);
    moe__moe_cache *mc = &s->act.la[l].mc;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, T, training);
    int64_t N = (int64_t)B * T;
    int E = d.E, C = d.C, F = d.F, slots = moe__moe_slots(&d), cap = 0;
    TRY(route(m, l, x, &d, N, &cap));
    const int64_t *off = layer_counts(m, l);
    TRY(moe__cuda_gather_rows(mc->xe, x, mc->row_token, off[E], C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_DISPATCH);
    for (int e = 0; e < E; e++) {
        int64_t r0 = off[e], ne = off[e + 1] - r0, wo = (int64_t)e * F * C;
        if (ne == 0) continue;
        TRY(ffn_forward(s, mc->ye + r0 * C, mc->h1 + r0 * F, mc->h3 + r0 * F, mc->act + r0 * F, mc->xe + r0 * C,
                        w.moe.w1 + wo, w.moe.w3 + wo, w.moe.w2 + wo, ne, C, F, 0));
    }
    moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
    TRY(moe__cuda_combine(y, mc->ye, mc->gate, mc->row_of, N, slots, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_COMBINE);
    if (d.SF > 0) TRY(ffn_forward(s, y, mc->sh1, mc->sh3, mc->sact, x, w.moe.sw1, w.moe.sw3, w.moe.sw2, N, C, d.SF, 1));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
    layer_stats(m, l, &d, N, cap);
    return MOE_STATUS_OK;
}

static moe_status moe_backward(moe_model *m, int l, float *dx, const float *dy, const float *x, int T,
                               const moe__cuda_loss_scales *lsc) {
    moe__cuda *s = moe__cuda_of(m);
    moe__cpu_layer_w w = moe__cpu_layer_weights(m, s->p, l), gw = moe__cpu_layer_weights(m, s->g, l);
    moe__moe_cache *mc = &s->act.la[l].mc;
    moe__moe_scratch *ms = &s->act.ms;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, T, m->training);
    int64_t N = (int64_t)m->B * T;
    int E = d.E, C = d.C, F = d.F, slots = moe__moe_slots(&d);
    const int64_t *off = layer_counts(m, l);
    if (d.SF > 0)
        TRY(ffn_backward(s, dx, gw.moe.sw1, gw.moe.sw3, gw.moe.sw2, dy, x, mc->sh1, mc->sh3, mc->sact, w.moe.sw1,
                         w.moe.sw3, w.moe.sw2, N, C, d.SF));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
    TRY(moe__cuda_combine_backward(ms->dye, ms->dgate, dy, mc->ye, mc->gate, mc->row_of, N, slots, C));
    TRY(moe__cuda_memset(ms->dxe, 0, (size_t)off[E] * C * sizeof(float)));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_COMBINE);
    for (int e = 0; e < E; e++) {
        int64_t r0 = off[e], ne = off[e + 1] - r0, wo = (int64_t)e * F * C;
        if (ne == 0) continue;
        TRY(ffn_backward(s, ms->dxe + r0 * C, gw.moe.w1 + wo, gw.moe.w3 + wo, gw.moe.w2 + wo, ms->dye + r0 * C,
                         mc->xe + r0 * C, mc->h1 + r0 * F, mc->h3 + r0 * F, mc->act + r0 * F, w.moe.w1 + wo,
                         w.moe.w3 + wo, w.moe.w2 + wo, ne, C, F));
    }
    moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
    TRY(moe__cuda_scatter_add(dx, ms->dxe, mc->row_of, N, slots, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_DISPATCH);
    // the router: logits = xr Wg^T (and noise_raw = xr Wn^T), xr = x * jit with jitter
    moe__cuda_route r = route_of(mc);
    moe__cuda_route_dims rd = route_dims(&d, N);
    TRY(moe__cuda_router_backward_all(&rd, &r, lsc, ms->dlogits, ms->dnoise, ms->gvec, ms->dgate));
    int jit = d.training && d.jitter_eps > 0.0f;
    const float *xr = jit ? mc->xr : x;
    float *dxr = jit ? ms->dxr : dx;
    if (jit) TRY(moe__cuda_memset(ms->dxr, 0, (size_t)N * C * sizeof(float)));
    TRY(moe__cuda_matmul_backward(s->blas, 0, dxr, gw.moe.wg, ms->dlogits, xr, w.moe.wg, N, C, E));
    if (rd.routing == MOE_ROUTING_NOISY_TOPK)
        TRY(moe__cuda_matmul_backward(s->blas, 0, dxr, gw.moe.wnoise, ms->dnoise, xr, w.moe.wnoise, N, C, E));
    if (jit) TRY(moe__cuda_jitter_backward(dx, ms->dxr, mc->jit, N * C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_ROUTER);
    return MOE_STATUS_OK;
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
    TRY(moe__cuda_attention_forward(s->blas, s->bf16, a->atty, a->att, a->q, a->k, a->v, B, T, C, H));
    TRY(moe__cuda_copy(a->resid_mid, x, NC));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->resid_mid, a->atty, w.wo, N, C, C, 1));
    TRY(moe__cuda_rmsnorm_forward(a->ln2, a->rstd2, a->resid_mid, w.ln2, N, C, c->norm_eps));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_ATTENTION);
    if (m->moe_slot[l] < 0) {
        TRY(moe__cuda_copy(xo, a->resid_mid, NC));
        TRY(ffn_forward(s, xo, a->h1, a->h3, a->act, a->ln2, w.w1, w.w3, w.w2, N, C, c->ffn_hidden, 1));
        moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
        return MOE_STATUS_OK;
    }
    TRY(moe_forward(m, l, a0->tmp, a->ln2, B, T, training));
    TRY(moe__cuda_add(xo, a->resid_mid, a0->tmp, N * C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_COMBINE);
    return MOE_STATUS_OK;
}

/* The losses of the forward, read back once: the cross-entropy and each MoE layer's aux, z and
 * sequence losses (into m->stats, then moe__model_losses). */
static moe_status read_losses(moe_model *m, int targets, moe_losses *out) {
    moe__cuda *s = moe__cuda_of(m);
    TRY(moe__cuda_sync());
    moe__cuda_prof_collect(s->prof, m->prof);
    TRY(moe__cuda_to_host(s->h_scal, s->scal, (size_t)(1 + MOE_CUDA_LAYER_LOSSES * m->n_moe) * sizeof(float)));
    for (int i = 0; i < m->n_moe; i++) {
        moe_layer_stats *st = &m->stats[i];
        const float *v = s->h_scal + 1 + MOE_CUDA_LAYER_LOSSES * i;
        st->z = v[0], st->aux = v[1], st->seq_aux = v[2], st->importance = v[3], st->load_loss = v[4];
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
    moe__cuda_prof_mark(s->prof, -1);
    TRY(moe__cuda_embedding_forward(a->resid[0], s->p + m->off_embed, a->tokens, N, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_HEAD);
    for (int l = 0; l < c->n_layer; l++) TRY(block_forward(m, l, B, T, training));
    TRY(moe__cuda_rmsnorm_forward(a->lnf, a->rstdf, a->resid[c->n_layer], s->p + m->off_normf, N, C, c->norm_eps));
    TRY(moe__cuda_matmul_forward(s->blas, s->bf16, a->logits, a->lnf, s->p + m->off_lm, N, C, V, 0));
    if (targets) TRY(moe__cuda_crossentropy(s->scal, NULL, a->row_loss, a->logits, a->targets, N, V, 1.0f));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_HEAD);
    return read_losses(m, targets != NULL, out);
}

/* ---------------------------------------------------------------- backward */

static moe_status block_backward(moe_model *m, int l, const moe__cuda_loss_scales *ls) {
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
    if (m->moe_slot[l] < 0) {
        TRY(ffn_backward(s, a0->dln, gw.w1, gw.w3, gw.w2, a0->dresid, a->ln2, a->h1, a->h3, a->act, w.w1, w.w3, w.w2, N,
                         C, c->ffn_hidden));
        moe__cuda_prof_mark(s->prof, MOE_PHASE_EXPERTS);
    } else {
        TRY(moe_backward(m, l, a0->dln, a0->dresid, a->ln2, T, ls));
    }
    TRY(moe__cuda_rmsnorm_backward(a0->dresid, gw.ln2, a0->dln, a->resid_mid, w.ln2, a->rstd2, N, C));
    // resid_mid = x + atty wo^T
    TRY(moe__cuda_memset(a0->datty, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->datty, gw.wo, a0->dresid, a->atty, w.wo, N, C, C));
    TRY(moe__cuda_memset(a0->dq, 0, NC));
    TRY(moe__cuda_memset(a0->dk, 0, NC));
    TRY(moe__cuda_memset(a0->dv, 0, NC));
    TRY(moe__cuda_attention_backward(s->blas, s->bf16, a0->dq, a0->dk, a0->dv, a0->datt, a0->datty, a->q, a->k, a->v, a->att, B, T, C, H));
    TRY(moe__cuda_rope_backward(a0->dq, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_rope_backward(a0->dk, a0->rope_cos, a0->rope_sin, B, T, C, H));
    TRY(moe__cuda_memset(a0->dln, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wq, a0->dq, a->ln1, w.wq, N, C, C));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wk, a0->dk, a->ln1, w.wk, N, C, C));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a0->dln, gw.wv, a0->dv, a->ln1, w.wv, N, C, C));
    TRY(moe__cuda_rmsnorm_backward(a0->dresid, gw.ln1, a0->dln, a0->resid[l], w.ln1, a->rstd1, N, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_ATTENTION);
    return MOE_STATUS_OK;
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
    moe__cuda_prof_mark(s->prof, -1);
    TRY(moe__cuda_crossentropy(s->scal, a->dlogits, a->row_loss, a->logits, a->targets, N, V, grad_scale));
    TRY(moe__cuda_memset(a->dln, 0, NC));
    TRY(moe__cuda_matmul_backward(s->blas, s->bf16, a->dln, g + m->off_lm, a->dlogits, a->lnf, s->p + m->off_lm, N, C, V));
    TRY(moe__cuda_memset(a->dresid, 0, NC));
    TRY(moe__cuda_rmsnorm_backward(a->dresid, g + m->off_normf, a->dln, a->resid[c->n_layer], s->p + m->off_normf,
                                   a->rstdf, N, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_HEAD);
    float per_layer = m->n_moe ? grad_scale / (float)m->n_moe : 0.0f;
    moe__cuda_loss_scales ls = {per_layer * c->aux_loss_coef, per_layer * c->z_loss_coef,
                                per_layer * c->seq_aux_loss_coef, per_layer * c->importance_loss_coef,
                                per_layer * c->load_loss_coef};
    for (int l = c->n_layer - 1; l >= 0; l--) {
        if (c->recompute) TRY(block_forward(m, l, m->B, m->T, m->training)); // refills the shared slot
        TRY(block_backward(m, l, &ls));
    }
    TRY(moe__cuda_embedding_backward(g + m->off_embed, a->dresid, a->tokens, N, C));
    moe__cuda_prof_mark(s->prof, MOE_PHASE_HEAD);
    // the gradient norm waits for this anyway: waiting here keeps its time out of the optimizer's
    TRY(moe__cuda_sync());
    moe__cuda_prof_collect(s->prof, m->prof);
    return MOE_STATUS_OK;
}
