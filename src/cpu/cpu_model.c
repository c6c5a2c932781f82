/*
 * cpu_model.c — the model's forward and backward passes on the CPU, block by block:
 *
 *   tokens (B,T) -> embedding -> L x [ x += attn(rmsnorm(x)); x += ffn_l(rmsnorm(x)) ]
 *                -> rmsnorm -> lm_head -> cross-entropy
 *
 * ffn_l is a dense SwiGLU (nn/) or an MoE layer (moe/). The forward saves each block's
 * activations in its slot of the plan (cpu_backend.c); with recompute, blocks of a kind share
 * one slot and backward redoes a block's forward just before its own backward. Backward
 * accumulates into the parameter gradients; activation gradients are scratch.
 */
#include "cpu/cpu.h"
#include "nn/nn.h"

#include <math.h>
#include <string.h>



moe__cpu_layer_w moe__cpu_layer_weights_at(const moe_model *m, float *base, int64_t start, int l) {
    const moe__layer_off *o = &m->lo[l];
#define AT(off) ((off) < 0 ? NULL : base + ((off) - start))
    moe__cpu_layer_w w = {AT(o->ln1), AT(o->wq), AT(o->wk), AT(o->wv), AT(o->wo), AT(o->ln2), AT(o->w1), AT(o->w3), AT(o->w2),
                          AT(o->bq), AT(o->bk), AT(o->bv), AT(o->qn), AT(o->kn),
                          {AT(o->wg), AT(o->wnoise), AT(o->bias), AT(o->ew1), AT(o->ew3), AT(o->ew2), AT(o->sw1),
                           AT(o->sw3), AT(o->sw2), AT(o->sg)}};
#undef AT
    return w;
}

moe__cpu_layer_w moe__cpu_layer_weights(const moe_model *m, float *base, int l) {
    return moe__cpu_layer_weights_at(m, base, 0, l);
}

/* bf16: routed expert e of the layer in the window, converted (moe__moe_dims.expert_ready). */
static void bf16_expert(void *ctx, int e) {
    moe_model *m = ctx;
    moe__cpu *s = moe__cpu_of(m);
    const moe__layer_off *o = &m->lo[s->win_layer];
    int64_t per = (int64_t)m->cfg.expert_hidden * m->cfg.n_embd, start = s->span[s->win_layer];
    const int64_t offs[3] = {o->ew1, o->ew3, o->ew2};
    for (int k = 0; k < 3; k++)
        moe__bf16_to_f32(s->win + (offs[k] - start) + e * per, s->w16 + offs[k] + e * per, per);
}

moe__cpu_layer_w moe__cpu_layer_fwd(moe_model *m, int l) {
    moe__cpu *s = moe__cpu_of(m);
    if (!s->w16) return moe__cpu_layer_weights(m, m->params, l);
    // every tensor of the layer but its routed experts, which bf16_expert converts when used
    s->win_layer = l;
    for (int i = 0; i < m->n_tensors; i++) {
        const moe_tensor_info *t = &m->tensors[i].info;
        if (t->layer == l && t->group != MOE_GROUP_EXPERT)
            moe__bf16_to_f32(s->win + (t->offset - s->span[l]), s->w16 + t->offset, t->numel);
    }
    return moe__cpu_layer_weights_at(m, s->win, s->span[l], l);
}

void moe__cpu_embed(const moe_model *m, float *x, const int *tokens, int64_t N) {
    const moe__cpu *s = moe__cpu_of(m);
    int C = m->cfg.n_embd;
    if (!s->w16) {
        moe__embedding_forward(x, m->params + m->off_embed, tokens, N, C);
        return;
    }
    for (int64_t n = 0; n < N; n++)
        moe__bf16_to_f32(x + n * C, s->w16 + m->off_embed + (int64_t)tokens[n] * C, C);
}

const float *moe__cpu_normf(const moe_model *m) {
    const moe__cpu *s = moe__cpu_of(m);
    return s->w16 ? s->normf : m->params + m->off_normf;
}

void moe__cpu_head(const moe_model *m, float *logits, const float *x, int64_t rows) {
    const moe__cpu *s = moe__cpu_of(m);
    int C = m->cfg.n_embd, V = m->cfg.vocab_size;
    if (!s->w16) {
        moe__matmul_forward(logits, x, m->params + m->off_lm, rows, C, V, 0);
        return;
    }
    for (int v0 = 0; v0 < V; v0 += MOE_CPU_HEAD_ROWS) { // a tile of the head's rows at a time, converted
        int n = V - v0 < MOE_CPU_HEAD_ROWS ? V - v0 : MOE_CPU_HEAD_ROWS;
        moe__bf16_to_f32(s->head_tile, s->w16 + m->off_lm + (int64_t)v0 * C, (int64_t)n * C);
        moe__gemm g = moe__linear_fwd(logits + v0, x, s->head_tile, rows, C, n, 0);
        g.ldc = V;
        moe__gemm_run(&g, 1);
    }
}

moe_status moe__cpu_fill_bf16(moe_model *m, const moe_model *src) {
    moe__cpu *s = moe__cpu_of(m);
    for (int i = 0; i < m->n_tensors; i++) {
        const moe_tensor_info *t = &m->tensors[i].info;
        const float *p = src->params + t->offset;
        uint16_t *d = s->w16 + t->offset;
#pragma omp parallel for schedule(static) if (t->numel > (1 << 16))
        for (int64_t j = 0; j < t->numel; j++) d[j] = moe__bf16(p[j]);
        moe__model_release(src, p, t->numel);
    }
    moe__bf16_to_f32(s->normf, s->w16 + m->off_normf, m->cfg.n_embd);
    return MOE_STATUS_OK;
}

moe__moe_dims moe__cpu_layer_dims(const moe_model *m, int l, int T, int training) {
    const moe_config *c = &m->cfg;
    moe__moe_dims d;
    memset(&d, 0, sizeof d);
    d.E = m->n_exp[l], d.K = c->top_k, d.F = c->expert_hidden, d.C = c->n_embd, d.T = T;
    d.SF = (int)moe__shared_width(c);
    d.shared_gate = c->shared_gate;
    d.routing = c->routing;
    d.score = c->router_score;
    d.norm_topk = c->norm_topk;
    d.n_group = c->n_group > 1 ? c->n_group : 0;
    d.topk_group = c->topk_group;
    d.group_score = c->group_score;
    d.route_scale = c->route_scale;
    d.drop_policy = c->drop_policy;
    d.capacity_factor = training ? c->capacity_factor : c->eval_capacity_factor;
    d.min_capacity = c->min_capacity;
    d.train_capacity_factor = c->capacity_factor;
    d.training = training;
    d.jitter_eps = c->jitter_eps;
    d.random_routing = c->random_routing;
    d.noise_seed = m->noise_seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(l + 1));
    d.prof = (double *)m->prof;
    d.ep = m->ep;
    d.El = d.E / m->ep;
    d.a2a_buf = moe__cpu_of(m)->a2a_buf;
    d.a2a_cnt = moe__cpu_of(m)->a2a_cnt;
    if (m->bf16) { // the CPU backend's bf16 weights
        d.expert_ready = bf16_expert;
        d.expert_ctx = (void *)m;
    }
    return d;
}

void moe__cpu_qkv(const moe_model *m, const moe__cpu_layer_w *w, float *q, float *k, float *v, float *qr, float *kr,
                  float *rstdq, float *rstdk, const float *ln, int64_t N) {
    const moe_config *c = &m->cfg;
    int C = c->n_embd, KC = moe__kv_heads(c) * (C / c->n_head);
    float *pq = w->qn && qr ? qr : q, *pk = w->kn && kr ? kr : k;
    moe__matmul_forward(pq, ln, w->wq, N, C, C, 0);
    moe__matmul_forward(pk, ln, w->wk, N, C, KC, 0);
    moe__matmul_forward(v, ln, w->wv, N, C, KC, 0);
    if (w->bq) {
        moe__bias_forward(pq, w->bq, N, C);
        moe__bias_forward(pk, w->bk, N, KC);
        moe__bias_forward(v, w->bv, N, KC);
    }
    if (w->qn) { // OLMoE: each row's whole q (C) and k (KC), before the split into heads
        moe__rmsnorm_forward(q, rstdq, pq, w->qn, N, C, c->norm_eps);
        moe__rmsnorm_forward(k, rstdk, pk, w->kn, N, KC, c->norm_eps);
    }
}

/* One block: resid[l+1] = resid[l] + attn(...) + ffn(...), saving its activations in la[l] (in
 * recompute mode the slot shared by every block of its kind). Deterministic for a given thread
 * count and noise seed, so that backward can redo it bit for bit. Fails only as the MoE layer's
 * expert-parallel all-to-all does (moe__moe_forward). */
static moe_status block_forward(moe_model *m, int l, int B, int T, int training) {
    const moe_config *c = &m->cfg;
    moe__cpu *s = moe__cpu_of(m);
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, H = c->n_head;
    double *prof = m->prof, t = moe__prof_begin(prof);
    moe__cpu_layer_w w = moe__cpu_layer_fwd(m, l);
    moe__cpu_layer_act *a = &s->la[l];
    float *x = s->resid[l], *xo = s->resid[l + 1];
    moe__rmsnorm_forward(a->ln1, a->rstd1, x, w.ln1, N, C, c->norm_eps);
    int Hkv = moe__kv_heads(c), KC = Hkv * (C / H);
    moe__cpu_qkv(m, &w, a->q, a->k, a->v, a->qr, a->kr, a->rstdq, a->rstdk, a->ln1, N);
    moe__rope_forward(a->q, s->rope_cos, s->rope_sin, B, T, C, H);
    moe__rope_forward(a->k, s->rope_cos, s->rope_sin, B, T, KC, Hkv);
    if (a->att) moe__attention_forward(a->atty, a->att, a->q, a->k, a->v, B, T, C, H, Hkv);
    else moe__attention_forward_tiled(a->atty, s->att_scratch, s->att_threads, a->q, a->k, a->v, B, T, C, H, Hkv);
    memcpy(a->resid_mid, x, (size_t)N * C * sizeof(float));
    moe__matmul_forward(a->resid_mid, a->atty, w.wo, N, C, C, 1);
    moe__rmsnorm_forward(a->ln2, a->rstd2, a->resid_mid, w.ln2, N, C, c->norm_eps);
    memcpy(xo, a->resid_mid, (size_t)N * C * sizeof(float));
    moe__prof_end(prof, MOE_PHASE_ATTENTION, t);
    if (m->moe_slot[l] < 0) {
        t = moe__prof_begin(prof);
        moe__ffn_forward(xo, a->h1, a->h3, a->act, a->ln2, w.w1, w.w3, w.w2, N, C, c->ffn_hidden, 1);
        moe__prof_end(prof, MOE_PHASE_EXPERTS, t);
        return MOE_STATUS_OK;
    }
    moe__moe_dims dims = moe__cpu_layer_dims(m, l, T, training);
    moe_status st = moe__moe_forward(s->tmp, &a->mc, a->ln2, &w.moe, &dims, N);
    if (st != MOE_STATUS_OK) return moe__err(st, "layer %d: %s", l, moe_last_error());
    if (m->lean) moe__cpu_routes(&a->mc, moe__moe_slots(&dims) * N, s->routes[l]); // the shared slot is reused
    t = moe__prof_begin(prof);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * C; i++) xo[i] += s->tmp[i];
    moe__prof_end(prof, MOE_PHASE_COMBINE, t);
    return MOE_STATUS_OK;
}

/* Copies MoE layer l's routing statistics and losses of the forward into its moe_layer_stats. */
static void collect_stats(moe_model *m, int l) {
    const moe__moe_cache *mc = &moe__cpu_of(m)->la[l].mc;
    moe_layer_stats *st = &m->stats[m->moe_slot[l]];
    memcpy(st->load, mc->load, (size_t)m->n_exp[l] * sizeof(int64_t));
    st->dropped = mc->dropped;
    st->would_drop = mc->would_drop;
    st->assignments = mc->routed;
    st->capacity = mc->capacity;
    st->aux = mc->aux;
    st->z = mc->z;
    st->seq_aux = mc->seq_aux;
    st->importance = mc->imp_loss;
    st->load_loss = mc->load_loss;
}

moe_status moe__cpu_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                            moe_losses *out) {
    const moe_config *c = &m->cfg;
    moe__cpu *s = moe__cpu_of(m);
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, V = c->vocab_size;
    memcpy(s->tokens, tokens, (size_t)N * sizeof(int));
    if (targets) memcpy(s->targets, targets, (size_t)N * sizeof(int));
    double *prof = m->prof, t = moe__prof_begin(prof);
    moe__cpu_embed(m, s->resid[0], tokens, N);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    for (int l = 0; l < c->n_layer; l++) {
        moe_status st = block_forward(m, l, B, T, training);
        if (st != MOE_STATUS_OK) return st;
        if (m->moe_slot[l] >= 0) collect_stats(m, l);
    }
    t = moe__prof_begin(prof);
    moe__rmsnorm_forward(s->lnf, s->rstdf, s->resid[c->n_layer], moe__cpu_normf(m), N, C, c->norm_eps);
    moe__cpu_head(m, s->logits, s->lnf, N);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    if (!out) return MOE_STATUS_OK;
    float ce = targets ? moe__crossentropy(NULL, s->row_loss, s->logits, targets, N, V, 1.0f) : 0.0f;
    return moe__model_losses(m, targets != NULL, ce, out);
}

/* ---------------------------------------------------------------- backward */

moe_status moe__cpu_backward(moe_model *m, float grad_scale) {
    moe__cpu *s = moe__cpu_of(m);
    const moe_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->n_embd, V = c->vocab_size, H = c->n_head;
    int64_t N = (int64_t)B * T;
    size_t NC = (size_t)N * C * sizeof(float);
    float *g = m->grads;
    double *prof = m->prof, t = moe__prof_begin(prof);
    // loss = mean_n ce_n: dlogits = scale (softmax - onehot) / N
    moe__crossentropy(s->dlogits, s->row_loss, s->logits, s->targets, N, V, grad_scale);
    // logits = lnf @ lm^T
    memset(s->dln, 0, NC);
    moe__matmul_backward(s->dln, g + m->off_lm, s->dlogits, s->lnf, m->params + m->off_lm, N, C, V);
    memset(s->dresid, 0, NC);
    moe__rmsnorm_backward(s->dresid, g + m->off_normf, s->dln, s->resid[c->n_layer], m->params + m->off_normf,
                          s->rstdf, N, C);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    float per_layer = m->n_moe ? grad_scale / (float)m->n_moe : 0.0f;
    moe__moe_loss_scales ls = {per_layer * c->aux_loss_coef, per_layer * c->z_loss_coef,
                               per_layer * c->seq_aux_loss_coef, per_layer * c->importance_loss_coef,
                               per_layer * c->load_loss_coef};
    for (int l = c->n_layer - 1; l >= 0; l--) {
        moe__cpu_layer_w w = moe__cpu_layer_weights(m, m->params, l);
        moe__cpu_layer_w gw = moe__cpu_layer_weights(m, g, l);
        moe__cpu_layer_act *a = &s->la[l];
        // recompute: refills la[l] (and rewrites resid[l+1])
        moe_status st = c->recompute ? block_forward(m, l, B, T, m->training) : MOE_STATUS_OK;
        if (st != MOE_STATUS_OK) return st;
        // xo = resid_mid + ffn(ln2): dresid holds d xo and becomes d resid_mid
        memset(s->dln, 0, NC);
        t = moe__prof_begin(prof);
        if (m->moe_slot[l] < 0)
            moe__ffn_backward(s->dln, gw.w1, gw.w3, gw.w2, s->dact, s->dh1, s->dh3, s->dresid, a->ln2, a->h1, a->h3,
                              a->act, w.w1, w.w3, w.w2, N, C, c->ffn_hidden);
        else {
            moe__moe_dims dims = moe__cpu_layer_dims(m, l, T, m->training);
            st = moe__moe_backward(s->dln, &gw.moe, &s->ms, s->dresid, a->ln2, &w.moe, &a->mc, &dims, N, &ls);
            if (st != MOE_STATUS_OK) return moe__err(st, "layer %d: %s", l, moe_last_error());
        }
        if (m->moe_slot[l] < 0) moe__prof_end(prof, MOE_PHASE_EXPERTS, t);
        t = moe__prof_begin(prof);
        moe__rmsnorm_backward(s->dresid, gw.ln2, s->dln, a->resid_mid, w.ln2, a->rstd2, N, C);
        // resid_mid = x + atty @ wo^T
        memset(s->datty, 0, NC);
        moe__matmul_backward(s->datty, gw.wo, s->dresid, a->atty, w.wo, N, C, C);
        int Hkv = moe__kv_heads(c), KC = Hkv * (C / H);
        memset(s->dq, 0, NC);
        memset(s->dk, 0, (size_t)N * KC * sizeof(float));
        memset(s->dv, 0, (size_t)N * KC * sizeof(float));
        moe__attention_backward(s->dq, s->dk, s->dv, s->datt, s->datty, a->q, a->k, a->v, a->att, B, T, C, H, Hkv);
        moe__rope_backward(s->dq, s->rope_cos, s->rope_sin, B, T, C, H);
        moe__rope_backward(s->dk, s->rope_cos, s->rope_sin, B, T, KC, Hkv);
        float *dq = s->dq, *dk = s->dk; // d of the projections (before QK-norm)
        if (w.qn) {
            memset(s->dqr, 0, NC);
            memset(s->dkr, 0, (size_t)N * KC * sizeof(float));
            moe__rmsnorm_backward(s->dqr, gw.qn, s->dq, a->qr, w.qn, a->rstdq, N, C);
            moe__rmsnorm_backward(s->dkr, gw.kn, s->dk, a->kr, w.kn, a->rstdk, N, KC);
            dq = s->dqr, dk = s->dkr;
        }
        if (w.bq) {
            moe__bias_backward(gw.bq, dq, N, C);
            moe__bias_backward(gw.bk, dk, N, KC);
            moe__bias_backward(gw.bv, s->dv, N, KC);
        }
        memset(s->dln, 0, NC);
        moe__matmul_backward(s->dln, gw.wq, dq, a->ln1, w.wq, N, C, C);
        moe__matmul_backward(s->dln, gw.wk, dk, a->ln1, w.wk, N, C, KC);
        moe__matmul_backward(s->dln, gw.wv, s->dv, a->ln1, w.wv, N, C, KC);
        moe__rmsnorm_backward(s->dresid, gw.ln1, s->dln, s->resid[l], w.ln1, a->rstd1, N, C);
        moe__prof_end(prof, MOE_PHASE_ATTENTION, t);
    }
    t = moe__prof_begin(prof);
    moe__embedding_backward(g + m->off_embed, s->dresid, s->tokens, N, C);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    return MOE_STATUS_OK;
}

