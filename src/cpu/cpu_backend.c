/*
 * cpu_backend.c — the CPU backend's ops table and memory plan. The parameters, gradients and
 * AdamW moments are plain host buffers (so to_host and from_host copy nothing); activations and
 * scratch live in one buffer planned for (max_batch, seq_len) by two passes of the same code,
 * one that sizes and one that hands out the pointers. Nothing is allocated in a training step.
 */
#include "cpu/cpu.h"
#include "nn/nn.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Saved activations of one block: a dense FFN (E = 0) or an MoE layer of dims d with P
 * assignments. A lean (inference) block keeps no attention probabilities: attention goes through
 * the plan's per-thread tile of scores. */
static void plan_block(moe__planner *p, moe__cpu_layer_act *a, const moe_model *m, int64_t B,
                       const moe__moe_dims *d, int64_t P) {
    const moe_config *c = &m->cfg;
    int64_t T = c->seq_len, N = B * T, C = c->n_embd, H = c->n_head, Fd = c->ffn_hidden;
    int64_t KC = (int64_t)moe__kv_heads(c) * (C / H);
    a->ln1 = MOE_TAKE_F(p, N * C);
    a->rstd1 = MOE_TAKE_F(p, N);
    a->q = MOE_TAKE_F(p, N * C);
    a->k = MOE_TAKE_F(p, N * KC);
    a->v = MOE_TAKE_F(p, N * KC);
    if (c->qk_norm) {
        a->qr = MOE_TAKE_F(p, N * C);
        a->kr = MOE_TAKE_F(p, N * KC);
        a->rstdq = MOE_TAKE_F(p, N);
        a->rstdk = MOE_TAKE_F(p, N);
    }
    a->att = m->lean ? NULL : MOE_TAKE_F(p, B * H * T * T);
    a->atty = MOE_TAKE_F(p, N * C);
    a->resid_mid = MOE_TAKE_F(p, N * C);
    a->ln2 = MOE_TAKE_F(p, N * C);
    a->rstd2 = MOE_TAKE_F(p, N);
    if (!d) {
        a->h1 = MOE_TAKE_F(p, N * Fd);
        a->h3 = MOE_TAKE_F(p, N * Fd);
        a->act = MOE_TAKE_F(p, N * Fd);
        return;
    }
    moe__moe_plan_cache(p, &a->mc, d, N, P);
}

/* The dims of an MoE layer with E experts, for planning (full sequences, training): sizes depend
 * on the config and E only, not on which layer. */
static moe__moe_dims plan_dims(const moe_model *m, int E) {
    moe__moe_dims d = moe__cpu_layer_dims(m, 0, m->cfg.seq_len, 1);
    d.E = E;
    d.El = E / m->ep;
    return d;
}

/* The blocks' saved activations: one slot per block, or with recompute (and for a lean model,
 * which has no backward) one per kind of block, shared by all blocks of that kind (backward
 * redoes a block's forward from resid[l] just before its own backward). A lean model keeps each
 * MoE layer's routing apart (s->routes), for moe_model_routing. Returns the most assignments of
 * any layer. */
static int64_t plan_blocks(moe__planner *p, moe_model *m, moe__cpu *s, int64_t B) {
    const moe_config *c = &m->cfg;
    int64_t N = B * c->seq_len, PM = 0;
    for (int l = 0; l < c->n_layer; l++)
        if (m->moe_slot[l] >= 0) {
            int64_t P = moe__model_max_slots(c, m->n_exp[l]) * N;
            PM = P > PM ? P : PM;
            if (m->lean) s->routes[l] = MOE_TAKE_I(p, P);
        }
    if (c->recompute || m->lean) {
        moe__cpu_layer_act dense, moe;
        memset(&dense, 0, sizeof dense);
        memset(&moe, 0, sizeof moe);
        if (m->n_moe < c->n_layer) plan_block(p, &dense, m, B, NULL, 0);
        if (m->n_moe > 0) {
            moe__moe_dims d = plan_dims(m, m->max_e);
            plan_block(p, &moe, m, B, &d, PM);
        }
        for (int l = 0; l < c->n_layer; l++) s->la[l] = m->moe_slot[l] >= 0 ? moe : dense;
        return PM;
    }
    for (int l = 0; l < c->n_layer; l++) {
        if (m->moe_slot[l] < 0) {
            plan_block(p, &s->la[l], m, B, NULL, 0);
            continue;
        }
        moe__moe_dims d = plan_dims(m, m->n_exp[l]);
        plan_block(p, &s->la[l], m, B, &d, moe__model_max_slots(c, m->n_exp[l]) * N);
    }
    return PM;
}

size_t moe__cpu_plan(moe_model *m, moe__cpu *s, char *base) {
    const moe_config *c = &m->cfg;
    moe__planner p = {base, 0};
    int64_t B = m->max_batch, T = c->seq_len, N = B * T, C = c->n_embd, V = c->vocab_size, H = c->n_head;
    int64_t hid = N * c->ffn_hidden;
    // a lean model keeps no layer's input for a backward: two residual streams, used in turn
    for (int l = 0; l <= c->n_layer; l++) s->resid[l] = !m->lean || l < 2 ? MOE_TAKE_F(&p, N * C) : s->resid[l % 2];
    int64_t PM = plan_blocks(&p, m, s, B);
    s->lnf = MOE_TAKE_F(&p, N * C);
    s->rstdf = MOE_TAKE_F(&p, N);
    s->logits = MOE_TAKE_F(&p, N * V);
    s->row_loss = MOE_TAKE_F(&p, N);
    s->rope_cos = MOE_TAKE_F(&p, T * (C / H / 2));
    s->rope_sin = MOE_TAKE_F(&p, T * (C / H / 2));
    s->tmp = MOE_TAKE_F(&p, N * C);
    s->tokens = MOE_TAKE_I(&p, N);
    s->targets = MOE_TAKE_I(&p, N);
    if (m->ep > 1) {
        s->a2a_buf = MOE_TAKE_F(&p, m->ep * PM * (C + 2)); // rows, and 2 floats a slot (moe_ep.c)
        s->a2a_cnt = MOE_TAKE_I64(&p, 2 * (int64_t)m->ep * (m->max_e + 1));
    }
    if (m->lean) { // no backward: the scores of one attention tile per thread instead
        s->att_scratch = MOE_TAKE_F(&p, (int64_t)s->att_threads * moe__attention_tile() * T);
        return p.off;
    }
    s->dlogits = MOE_TAKE_F(&p, N * V);
    s->dresid = MOE_TAKE_F(&p, N * C);
    s->dln = MOE_TAKE_F(&p, N * C);
    s->datty = MOE_TAKE_F(&p, N * C);
    int64_t KC = (int64_t)moe__kv_heads(c) * (C / H);
    s->dq = MOE_TAKE_F(&p, N * C);
    s->dk = MOE_TAKE_F(&p, N * KC);
    s->dv = MOE_TAKE_F(&p, N * KC);
    if (c->qk_norm) {
        s->dqr = MOE_TAKE_F(&p, N * C);
        s->dkr = MOE_TAKE_F(&p, N * KC);
    }
    s->datt = MOE_TAKE_F(&p, B * H * T * T);
    if (m->n_moe > 0) {
        moe__moe_dims d = plan_dims(m, m->max_e); // the scratch of the widest MoE layer
        moe__moe_plan_scratch(&p, &s->ms, &d, N, PM);
        int64_t h = moe__moe_hidden_scratch(&d, N, PM);
        hid = h > hid ? h : hid;
    }
    s->dact = MOE_TAKE_F(&p, hid);
    s->dh1 = MOE_TAKE_F(&p, hid);
    s->dh3 = MOE_TAKE_F(&p, hid);
    s->ms.dact = s->dact;
    s->ms.dh1 = s->dh1;
    s->ms.dh3 = s->dh3;
    return p.off;
}

static void cpu_free(moe_model *m) {
    moe__cpu *s = moe__cpu_of(m);
    if (m->map) munmap(m->map, m->map_len); // the parameters lie in the checkpoint's mapping
    else free(m->params);
    free(m->grads);
    free(m->opt);
    m->params = m->grads = m->opt = NULL;
    m->map = NULL;
    if (!s) return;
    free(s->resid);
    free(s->la);
    free(s->routes);
    free(s->w16);
    free(s->win);
    free(s->normf);
    free(s->head_tile);
    free(s->span);
    free(s->arena);
    free(s);
    m->be_state = NULL;
}

static moe_status cpu_create(moe_model *m) {
    const moe_config *c = &m->cfg;
    moe__cpu *s = calloc(1, sizeof *s);
    m->be_state = s;
    if (!s) return moe__err(MOE_STATUS_NOMEM, "out of memory (activation plan)");
    s->resid = calloc((size_t)c->n_layer + 1, sizeof(float *));
    s->la = calloc((size_t)c->n_layer, sizeof(moe__cpu_layer_act));
    s->routes = calloc((size_t)c->n_layer, sizeof(int *));
    if (!s->resid || !s->la || !s->routes) return moe__err(MOE_STATUS_NOMEM, "out of memory (activation plan)");
    s->att_threads = 1;
#ifdef _OPENMP
    s->att_threads = omp_get_max_threads();
#endif
    // bf16 weights: each layer's span converted into a window before its forward
    int64_t widest = 0;
    if (m->bf16) {
        if (!(s->span = calloc((size_t)c->n_layer + 1, sizeof(int64_t)))) return moe__err(MOE_STATUS_NOMEM, "out of memory");
        for (int l = 0; l <= c->n_layer; l++) s->span[l] = l < c->n_layer ? INT64_MAX : 0;
        for (int i = 0; i < m->n_tensors; i++) { // a layer's tensors are contiguous in the table
            const moe_tensor_info *t = &m->tensors[i].info;
            if (t->layer < 0) continue;
            s->span[t->layer] = t->offset < s->span[t->layer] ? t->offset : s->span[t->layer];
            s->span[t->layer + 1] = t->offset + t->numel > s->span[t->layer + 1] ? t->offset + t->numel : s->span[t->layer + 1];
        }
        for (int l = 0; l < c->n_layer; l++) widest = s->span[l + 1] - s->span[l] > widest ? s->span[l + 1] - s->span[l] : widest;
    }
    // everything the model will hold, against what is available, before any of it is allocated
    size_t bytes = moe__cpu_plan(m, s, NULL);
    int64_t w = m->n_params * (int64_t)sizeof(float), held = m->bf16 ? w / 2 + 4 * (widest + MOE_CPU_HEAD_ROWS * c->n_embd) : w;
    int64_t need = held + (m->lean ? 0 : w) + (m->optim ? 2 * w : 0) + (int64_t)bytes;
    char what[256];
    snprintf(what, sizeof what, "the model (%.2f GiB of %s weights%s%s, %.2f GiB of activations for %d x %d tokens)",
             (double)held / 1073741824.0, m->bf16 ? "bf16" : "fp32", m->lean ? "" : ", as much of gradients",
             m->optim ? ", twice that of AdamW moments" : "", (double)bytes / 1073741824.0, m->max_batch, c->seq_len);
    moe_status st = moe__mem_check(need, what,
                                   m->lean ? (m->bf16 ? "a smaller --batch-size, a shorter seq_len, or a machine with more memory"
                                                      : "--dtype bf16 (half the weights), a smaller --batch-size, a "
                                                        "shorter seq_len, or a machine with more memory")
                                           : "recompute=1 (one block's activations), a smaller batch_size or seq_len, or "
                                             "more ranks under mpirun with --ep (each holds E/ep of the experts)");
    if (st != MOE_STATUS_OK) return st;
    m->mem_weights = held;
    m->mem_other = need - held;
    if (m->bf16 && (!(s->w16 = moe__malloc((size_t)m->n_params * 2)) || !(s->win = moe__malloc((size_t)widest * 4 + 64)) ||
                    !(s->normf = moe__malloc((size_t)c->n_embd * 4)) ||
                    !(s->head_tile = moe__malloc((size_t)MOE_CPU_HEAD_ROWS * c->n_embd * 4))))
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate %lld bf16 parameters", (long long)m->n_params);
    if (!m->defer_params) m->params = moe__calloc((size_t)m->n_params * sizeof(float));
    if (!m->lean) m->grads = moe__calloc((size_t)m->n_params * sizeof(float));
    if ((!m->defer_params && !m->params) || (!m->lean && !m->grads))
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate %lld parameters", (long long)m->n_params);
    s->arena = moe__calloc(bytes);
    if (!s->arena)
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate %.1f MiB of activations (batch %d x seq_len %d)",
                        (double)bytes / 1048576.0, m->max_batch, c->seq_len);
    moe__cpu_plan(m, s, s->arena);
    moe__rope_tables(s->rope_cos, s->rope_sin, c->seq_len, c->n_embd / c->n_head, c->rope_theta);
    return MOE_STATUS_OK;
}

static moe_status cpu_optimizer_create(moe_model *m) {
    if (!m->opt) m->opt = moe__calloc((size_t)m->n_params * 2 * sizeof(float));
    return m->opt ? MOE_STATUS_OK
                  : moe__err(MOE_STATUS_NOMEM, "cannot allocate optimizer state for %lld parameters", (long long)m->n_params);
}

static const float *cpu_logits(moe_model *m) { return moe__cpu_of(m)->logits; }

static moe_status cpu_routing(const moe_model *m, int i, int *out, int *slots) {
    int l = m->stats[i].layer;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, m->T, m->training);
    *slots = moe__moe_slots(&d);
    int64_t P = (int64_t)*slots * m->B * m->T;
    if (out && m->lean) memcpy(out, moe__cpu_of(m)->routes[l], (size_t)P * sizeof(int));
    if (out && !m->lean) moe__cpu_routes(&moe__cpu_of(m)->la[l].mc, P, out);
    return MOE_STATUS_OK;
}

void moe__cpu_routes(const moe__moe_cache *c, int64_t P, int *out) {
    for (int64_t a = 0; a < P; a++) out[a] = c->row_of[a] >= 0 ? c->sel[a] : -1;
}

const moe__moe_cache *moe__cpu_moe_cache(const moe_model *m, int l) {
    return m->moe_slot[l] >= 0 ? &moe__cpu_of(m)->la[l].mc : NULL;
}

/* The host views are the buffers themselves. */
static moe_status cpu_sync(moe_model *m, moe__buf b) {
    (void)m;
    (void)b;
    return MOE_STATUS_OK;
}

const moe__backend moe__backend_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .free = cpu_free,
    .optimizer_create = cpu_optimizer_create,
    .forward = moe__cpu_forward,
    .backward = moe__cpu_backward,
    .zero_grad = moe__cpu_zero_grad,
    .logits = cpu_logits,
    .routing = cpu_routing,
    .grad_norm = moe__cpu_grad_norm,
    .adamw = moe__cpu_adamw,
    .bias_update = moe__cpu_bias_update,
    .locate_nonfinite = moe__cpu_locate_nonfinite,
    .kv_create = moe__cpu_kv_create,
    .kv_free = moe__cpu_kv_free,
    .kv_bytes = moe__cpu_kv_bytes,
    .decode = moe__cpu_decode,
    .to_host = cpu_sync,
    .from_host = cpu_sync,
};
