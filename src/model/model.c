/*
 * model.c — the decoder-only MoE transformer: tensor table, memory plan, forward and backward.
 *
 *   tokens (B,T) -> embedding -> L x [ x += attn(rmsnorm(x)); x += ffn_l(rmsnorm(x)) ]
 *                -> rmsnorm -> lm_head -> cross-entropy
 *
 * ffn_l is a dense SwiGLU or an MoE layer (moe_layer.c). Every parameter tensor is registered
 * once in build_table(): its Hugging Face checkpoint key, shape, group and offset; the parameter
 * and gradient buffers, checkpoints, weight-decay groups and tests all read that table.
 * Activations live in one buffer planned for (max_batch, seq_len); nothing is allocated in a
 * training step.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <math.h>
#include <string.h>

typedef enum { INIT_NORMAL, INIT_PROJ, INIT_ROUTER, INIT_ONE, INIT_ZERO } init_kind;

typedef struct {
    moe_tensor_info info;
    init_kind init;
} tensor;

/* Offsets (in floats) of one layer's tensors; -1 when absent. */
typedef struct {
    int64_t ln1, wq, wk, wv, wo, ln2;
    int64_t w1, w3, w2;                 /* dense FFN */
    int64_t wg, wnoise, bias;           /* MoE router, noise projection, selection bias */
    int64_t ew1, ew3, ew2;              /* routed experts */
    int64_t sw1, sw3, sw2;              /* shared experts */
} layer_off;

typedef struct {
    float *ln1, *wq, *wk, *wv, *wo, *ln2, *w1, *w3, *w2;
    moe__moe_weights moe;
} layer_w;

typedef struct {
    float *ln1, *rstd1, *q, *k, *v, *att, *atty, *resid_mid, *ln2, *rstd2;
    float *h1, *h3, *act;               /* dense FFN */
    moe__moe_cache mc;
} layer_act;

struct moe_model {
    moe_config cfg;
    int max_batch;
    int n_tensors;
    tensor *tensors;
    int64_t n_params;
    float *params, *grads;
    layer_off *lo;
    int64_t off_embed, off_normf, off_lm;
    int *moe_slot;                      /* layer -> index among MoE layers, or -1 */
    int *n_exp;                         /* layer -> routed experts (0 for dense layers) */
    int n_moe, max_e;
    int ep, ep_rank;                    /* expert parallelism: this rank holds experts [ep_rank*E/ep, +E/ep) */
    uint64_t noise_seed;                /* draws of the next training forward */
    /* activations and scratch: one allocation */
    char *arena;
    float **resid;                      /* L+1 arrays (N,C): input of each layer, then the output */
    layer_act *la;
    float *lnf, *rstdf, *logits, *dlogits, *row_loss, *rope_cos, *rope_sin, *tmp;
    float *dresid, *dln, *datty, *dq, *dk, *dv, *datt, *dact, *dh1, *dh3;
    moe__moe_scratch ms;
    float *a2a_buf;                     /* expert parallelism scratch (moe__moe_dims) */
    int64_t *a2a_cnt;
    int *tokens, *targets;
    /* last forward */
    int B, T, has_targets, training;
    moe_layer_stats *stats;
    int64_t *stats_load;
    double prof[MOE_PHASE_COUNT];
};

/* ---------------------------------------------------------------- tensor table */

static int64_t add_tensor(moe_model *m, moe_group group, init_kind init, int layer, const char *name, int ndim,
                          int64_t d0, int64_t d1, int64_t d2) {
    tensor *t = &m->tensors[m->n_tensors++];
    t->info.name = strdup(name);
    t->info.ndim = ndim;
    t->info.shape[0] = d0;
    t->info.shape[1] = d1;
    t->info.shape[2] = d2;
    t->info.numel = d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
    t->info.offset = m->n_params;
    t->info.group = group;
    t->info.layer = layer;
    t->init = init;
    m->n_params += t->info.numel;
    return t->info.offset;
}

static moe_status build_table(moe_model *m) {
    const moe_config *c = &m->cfg;
    int L = c->n_layer;
    int64_t C = c->n_embd, V = c->vocab_size, F = c->expert_hidden;
    int64_t SF = (int64_t)c->n_shared * c->expert_hidden, Fd = c->ffn_hidden;
    m->tensors = calloc((size_t)L * 16 + 4, sizeof(tensor));
    m->lo = calloc((size_t)L, sizeof(layer_off));
    m->moe_slot = calloc((size_t)L, sizeof(int));
    m->n_exp = calloc((size_t)L, sizeof(int));
    if (!m->tensors || !m->lo || !m->moe_slot || !m->n_exp) return moe__err(MOE_STATUS_NOMEM, "out of memory (tensor table)");
    char name[160];
    m->off_embed = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, -1, "model.embed_tokens.weight", 2, V, C, 0);
    for (int l = 0; l < L; l++) {
        layer_off *o = &m->lo[l];
        memset(o, 0xff, sizeof *o); // every offset -1 until registered
#define NAME(fmt) (snprintf(name, sizeof name, "model.layers.%d." fmt, l), name)
        o->ln1 = add_tensor(m, MOE_GROUP_NORM, INIT_ONE, l, NAME("input_layernorm.weight"), 1, C, 0, 0);
        o->wq = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("self_attn.q_proj.weight"), 2, C, C, 0);
        o->wk = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("self_attn.k_proj.weight"), 2, C, C, 0);
        o->wv = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("self_attn.v_proj.weight"), 2, C, C, 0);
        o->wo = add_tensor(m, MOE_GROUP_DENSE, INIT_PROJ, l, NAME("self_attn.o_proj.weight"), 2, C, C, 0);
        o->ln2 = add_tensor(m, MOE_GROUP_NORM, INIT_ONE, l, NAME("post_attention_layernorm.weight"), 1, C, 0, 0);
        if (moe_config_layer_is_moe(c, l)) {
            int64_t E = m->n_exp[l] = moe_config_layer_experts(c, l);
            m->max_e = (int)E > m->max_e ? (int)E : m->max_e;
            m->moe_slot[l] = m->n_moe++;
            o->wg = add_tensor(m, MOE_GROUP_ROUTER, INIT_ROUTER, l, NAME("block_sparse_moe.gate.weight"), 2, E, C, 0);
            if (c->routing == MOE_ROUTING_NOISY_TOPK) // Shazeer et al. initialise the noise weights to zero
                o->wnoise = add_tensor(m, MOE_GROUP_ROUTER, INIT_ZERO, l, NAME("block_sparse_moe.noise.weight"), 2, E, C, 0);
            if (c->bias_update_rate > 0.0f) // DeepSeek-V3's name for the aux-loss-free bias
                o->bias = add_tensor(m, MOE_GROUP_BUFFER, INIT_ZERO, l, NAME("block_sparse_moe.e_score_correction_bias"), 1, E, 0, 0);
            // with expert parallelism this rank stores its E/ep experts only
            if (E % m->ep != 0)
                return moe__err(MOE_STATUS_CONFIG, "config: layer %d has %lld experts, not divisible by the expert-parallel size %d",
                                l, (long long)E, m->ep);
            int64_t El = E / m->ep;
            o->ew1 = add_tensor(m, MOE_GROUP_EXPERT, INIT_NORMAL, l, NAME("block_sparse_moe.experts.w1.weight"), 3, El, F, C);
            o->ew3 = add_tensor(m, MOE_GROUP_EXPERT, INIT_NORMAL, l, NAME("block_sparse_moe.experts.w3.weight"), 3, El, F, C);
            o->ew2 = add_tensor(m, MOE_GROUP_EXPERT, INIT_PROJ, l, NAME("block_sparse_moe.experts.w2.weight"), 3, El, C, F);
            if (SF > 0) {
                o->sw1 = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("block_sparse_moe.shared_experts.gate_proj.weight"), 2, SF, C, 0);
                o->sw3 = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("block_sparse_moe.shared_experts.up_proj.weight"), 2, SF, C, 0);
                o->sw2 = add_tensor(m, MOE_GROUP_DENSE, INIT_PROJ, l, NAME("block_sparse_moe.shared_experts.down_proj.weight"), 2, C, SF, 0);
            }
        } else {
            m->moe_slot[l] = -1;
            o->w1 = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("mlp.gate_proj.weight"), 2, Fd, C, 0);
            o->w3 = add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, l, NAME("mlp.up_proj.weight"), 2, Fd, C, 0);
            o->w2 = add_tensor(m, MOE_GROUP_DENSE, INIT_PROJ, l, NAME("mlp.down_proj.weight"), 2, C, Fd, 0);
        }
#undef NAME
    }
    m->off_normf = add_tensor(m, MOE_GROUP_NORM, INIT_ONE, -1, "model.norm.weight", 1, C, 0, 0);
    m->off_lm = c->tie_embeddings ? m->off_embed
                                  : add_tensor(m, MOE_GROUP_DENSE, INIT_NORMAL, -1, "lm_head.weight", 2, V, C, 0);
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].info.name) return moe__err(MOE_STATUS_NOMEM, "out of memory (tensor names)");
    return MOE_STATUS_OK;
}

static float *at(float *base, int64_t off) { return off < 0 ? NULL : base + off; }

static layer_w layer_weights(const moe_model *m, float *base, int l) {
    const layer_off *o = &m->lo[l];
    layer_w w = {at(base, o->ln1), at(base, o->wq), at(base, o->wk), at(base, o->wv), at(base, o->wo),
                 at(base, o->ln2), at(base, o->w1), at(base, o->w3), at(base, o->w2),
                 {at(base, o->wg), at(base, o->wnoise), at(base, o->bias), at(base, o->ew1), at(base, o->ew3),
                  at(base, o->ew2), at(base, o->sw1), at(base, o->sw3), at(base, o->sw2)}};
    return w;
}

static moe__moe_dims moe_dims(const moe_model *m, int l, int T, int training) {
    const moe_config *c = &m->cfg;
    moe__moe_dims d;
    memset(&d, 0, sizeof d);
    d.E = m->n_exp[l], d.K = c->top_k, d.F = c->expert_hidden, d.S = c->n_shared, d.C = c->n_embd, d.T = T;
    d.routing = c->routing;
    d.score = c->router_score;
    d.norm_topk = c->norm_topk;
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
    d.a2a_buf = m->a2a_buf;
    d.a2a_cnt = m->a2a_cnt;
    return d;
}

/* Slots per token a layer may use in training (its widest routing). */
static int64_t max_slots(const moe_config *c, int E) {
    return c->routing == MOE_ROUTING_EXPERT_CHOICE || c->routing == MOE_ROUTING_SOFT ? E : c->top_k;
}

/* ---------------------------------------------------------------- memory plan */

typedef struct {
    char *base;      /* NULL while sizing */
    size_t off;
} planner;

static void *take(planner *p, size_t bytes) {
    size_t at_ = p->off;
    p->off += (bytes + 63) / 64 * 64;
    return p->base ? p->base + at_ : NULL;
}
#define TAKE_F(p, n) ((float *)take(p, (size_t)(n) * sizeof(float)))
#define TAKE_I(p, n) ((int *)take(p, (size_t)(n) * sizeof(int)))
#define TAKE_I64(p, n) ((int64_t *)take(p, (size_t)(n) * sizeof(int64_t)))

/* Saved activations of one block: a dense FFN (E = 0) or an MoE layer with E experts and P
 * assignments. */
static void plan_block(planner *p, layer_act *a, const moe_config *c, int64_t B, int64_t E, int64_t P, int ep) {
    int64_t T = c->seq_len, N = B * T, C = c->n_embd, H = c->n_head;
    int64_t F = c->expert_hidden, SF = (int64_t)c->n_shared * F, Fd = c->ffn_hidden;
    int noisy = c->routing == MOE_ROUTING_NOISY_TOPK, jitter = c->jitter_eps > 0.0f;
    a->ln1 = TAKE_F(p, N * C);
    a->rstd1 = TAKE_F(p, N);
    a->q = TAKE_F(p, N * C);
    a->k = TAKE_F(p, N * C);
    a->v = TAKE_F(p, N * C);
    a->att = TAKE_F(p, B * H * T * T);
    a->atty = TAKE_F(p, N * C);
    a->resid_mid = TAKE_F(p, N * C);
    a->ln2 = TAKE_F(p, N * C);
    a->rstd2 = TAKE_F(p, N);
    if (E == 0) {
        a->h1 = TAKE_F(p, N * Fd);
        a->h3 = TAKE_F(p, N * Fd);
        a->act = TAKE_F(p, N * Fd);
        return;
    }
    moe__moe_cache *mc = &a->mc;
    mc->xr = jitter ? TAKE_F(p, N * C) : NULL;
    mc->jit = jitter ? TAKE_F(p, N * C) : NULL;
    mc->logits = TAKE_F(p, N * E);
    mc->scores = TAKE_F(p, N * E);
    mc->probs = TAKE_F(p, N * E);
    mc->noise_raw = noisy ? TAKE_F(p, N * E) : NULL;
    mc->noise_eps = noisy ? TAKE_F(p, N * E) : NULL;
    mc->noisy = noisy ? TAKE_F(p, N * E) : NULL;
    mc->lse = TAKE_F(p, N);
    mc->sel = TAKE_I(p, P);
    mc->gate = TAKE_F(p, P);
    mc->row_of = TAKE_I(p, P);
    mc->row_token = TAKE_I(p, P);
    mc->offsets = TAKE_I64(p, E + 1);
    mc->load = TAKE_I64(p, E);
    mc->f = TAKE_F(p, E);
    mc->seq_f = TAKE_F(p, B * E);
    mc->imp = TAKE_F(p, E);
    mc->loadest = TAKE_F(p, E);
    mc->xe = TAKE_F(p, P * C);
    mc->ye = TAKE_F(p, P * C);
    int64_t PL = ep > 1 ? ep * P : P; // rows the experts of this rank may receive
    mc->h1 = TAKE_F(p, PL * F);
    mc->h3 = TAKE_F(p, PL * F);
    mc->act = TAKE_F(p, PL * F);
    if (ep > 1) {
        mc->xl = TAKE_F(p, PL * C);
        mc->yl = TAKE_F(p, PL * C);
        mc->perm = TAKE_I(p, PL);
        mc->loff = TAKE_I64(p, E / ep + 1);
        mc->send_rows = TAKE_I64(p, ep);
        mc->recv_rows = TAKE_I64(p, ep);
    }
    mc->sh1 = TAKE_F(p, N * SF);
    mc->sh3 = TAKE_F(p, N * SF);
    mc->sact = TAKE_F(p, N * SF);
    mc->scratch_idx = TAKE_I(p, 2 * (P > N ? P : N));
}

static size_t plan(moe_model *m, char *base) {
    const moe_config *c = &m->cfg;
    planner p = {base, 0};
    int64_t B = m->max_batch, T = c->seq_len, N = B * T, C = c->n_embd, V = c->vocab_size, H = c->n_head;
    int64_t F = c->expert_hidden, SF = (int64_t)c->n_shared * F, Fd = c->ffn_hidden, EM = m->max_e;
    int64_t PM = 0; // the most assignments of any layer
    int noisy = c->routing == MOE_ROUTING_NOISY_TOPK, jitter = c->jitter_eps > 0.0f;
    for (int l = 0; l < c->n_layer; l++)
        if (m->moe_slot[l] >= 0 && max_slots(c, m->n_exp[l]) * N > PM) PM = max_slots(c, m->n_exp[l]) * N;
    for (int l = 0; l <= c->n_layer; l++) m->resid[l] = TAKE_F(&p, N * C);
    if (c->recompute) {
        // one block's activations for each kind of block, shared by all blocks of that kind:
        // backward recomputes a block's forward from resid[l] just before its own backward
        layer_act dense, moe;
        memset(&dense, 0, sizeof dense);
        memset(&moe, 0, sizeof moe);
        if (m->n_moe < c->n_layer) plan_block(&p, &dense, c, B, 0, 0, 1);
        if (m->n_moe > 0) plan_block(&p, &moe, c, B, EM, PM, m->ep);
        for (int l = 0; l < c->n_layer; l++) m->la[l] = m->moe_slot[l] >= 0 ? moe : dense;
    } else {
        for (int l = 0; l < c->n_layer; l++)
            plan_block(&p, &m->la[l], c, B, m->n_exp[l], m->moe_slot[l] >= 0 ? max_slots(c, m->n_exp[l]) * N : 0, m->ep);
    }
    m->lnf = TAKE_F(&p, N * C);
    m->rstdf = TAKE_F(&p, N);
    m->logits = TAKE_F(&p, N * V);
    m->dlogits = TAKE_F(&p, N * V);
    m->row_loss = TAKE_F(&p, N);
    m->rope_cos = TAKE_F(&p, T * (C / H / 2));
    m->rope_sin = TAKE_F(&p, T * (C / H / 2));
    m->tmp = TAKE_F(&p, N * C);
    m->dresid = TAKE_F(&p, N * C);
    m->dln = TAKE_F(&p, N * C);
    m->datty = TAKE_F(&p, N * C);
    m->dq = TAKE_F(&p, N * C);
    m->dk = TAKE_F(&p, N * C);
    m->dv = TAKE_F(&p, N * C);
    m->datt = TAKE_F(&p, B * H * T * T);
    int64_t hid = Fd;
    if (m->n_moe > 0) {
        int64_t PLM = m->ep > 1 ? m->ep * PM : PM;
        if (m->ep > 1) {
            m->a2a_buf = TAKE_F(&p, PLM * C);
            m->a2a_cnt = TAKE_I64(&p, 2 * (int64_t)m->ep * EM);
            m->ms.dyl = TAKE_F(&p, PLM * C);
            m->ms.dxl = TAKE_F(&p, PLM * C);
        }
        hid = PLM * F > N * hid ? PLM * F : N * hid;
        hid = N * SF > hid ? N * SF : hid;
        m->ms.dye = TAKE_F(&p, PM * C);
        m->ms.dxe = TAKE_F(&p, PM * C);
        m->ms.dgate = TAKE_F(&p, PM);
        m->ms.dlogits = TAKE_F(&p, N * EM);
        m->ms.dnoise = noisy ? TAKE_F(&p, N * EM) : NULL;
        m->ms.dxr = jitter ? TAKE_F(&p, N * C) : NULL;
        m->ms.gvec = TAKE_F(&p, 2 * EM);
    } else {
        hid = N * Fd;
    }
    m->dact = TAKE_F(&p, hid);
    m->dh1 = TAKE_F(&p, hid);
    m->dh3 = TAKE_F(&p, hid);
    m->ms.dact = m->dact;
    m->ms.dh1 = m->dh1;
    m->ms.dh3 = m->dh3;
    m->tokens = TAKE_I(&p, N);
    m->targets = TAKE_I(&p, N);
    int64_t total_e = 0;
    for (int l = 0; l < c->n_layer; l++) total_e += m->n_exp[l];
    m->stats_load = TAKE_I64(&p, total_e);
    return p.off;
}

/* ---------------------------------------------------------------- create / free */

moe_status moe_model_create(const moe_config *c, int max_batch, moe_model **out) {
    *out = NULL;
    moe_status st = moe_config_validate(c);
    if (st != MOE_STATUS_OK) return st;
    if (max_batch < 1) return moe__err(MOE_STATUS_ARG, "max_batch = %d must be at least 1", max_batch);
    if ((int64_t)max_batch * c->seq_len * c->top_k > INT32_MAX / 2)
        return moe__err(MOE_STATUS_CONFIG, "config: batch_size * seq_len * top_k = %lld is too large",
                        (long long)max_batch * c->seq_len * c->top_k);
    moe_model *m = calloc(1, sizeof *m);
    if (!m) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    m->cfg = *c;
    m->max_batch = max_batch;
    m->ep = moe__dist_get()->ep;
    m->ep_rank = moe__dist_get()->ep_rank;
    st = build_table(m);
    if (st != MOE_STATUS_OK) goto fail;
    m->params = moe__calloc((size_t)m->n_params * sizeof(float));
    m->grads = moe__calloc((size_t)m->n_params * sizeof(float));
    m->resid = calloc((size_t)c->n_layer + 1, sizeof(float *));
    m->la = calloc((size_t)c->n_layer, sizeof(layer_act));
    m->stats = calloc((size_t)(m->n_moe ? m->n_moe : 1), sizeof(moe_layer_stats));
    if (!m->params || !m->grads || !m->resid || !m->la || !m->stats) {
        st = moe__err(MOE_STATUS_NOMEM, "cannot allocate %lld parameters", (long long)m->n_params);
        goto fail;
    }
    size_t bytes = plan(m, NULL);
    m->arena = moe__calloc(bytes);
    if (!m->arena) {
        st = moe__err(MOE_STATUS_NOMEM, "cannot allocate %.1f MiB of activations (batch %d x seq_len %d)",
                      (double)bytes / 1048576.0, max_batch, c->seq_len);
        goto fail;
    }
    plan(m, m->arena);
    moe__rope_tables(m->rope_cos, m->rope_sin, c->seq_len, c->n_embd / c->n_head, c->rope_theta);
    int64_t off = 0;
    for (int l = 0, i = 0; l < c->n_layer; l++)
        if (m->moe_slot[l] >= 0) {
            m->stats[i].layer = l;
            m->stats[i].n_experts = m->n_exp[l];
            m->stats[i].load = m->stats_load + off;
            m->stats[i].bias = m->lo[l].bias >= 0 ? m->params + m->lo[l].bias : NULL;
            off += m->n_exp[l];
            i++;
        }
    *out = m;
    return MOE_STATUS_OK;
fail:
    moe_model_free(m);
    return st;
}

void moe_model_free(moe_model *m) {
    if (!m) return;
    if (m->tensors)
        for (int i = 0; i < m->n_tensors; i++) free((char *)m->tensors[i].info.name);
    free(m->tensors);
    free(m->lo);
    free(m->moe_slot);
    free(m->n_exp);
    free(m->params);
    free(m->grads);
    free(m->resid);
    free(m->la);
    free(m->stats);
    free(m->arena);
    free(m);
}

void moe_model_init(moe_model *m, uint64_t seed) {
    moe_rng r;
    moe__rng_seed(&r, seed);
    float proj_std = m->cfg.init_std / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_tensors; i++) {
        const tensor *t = &m->tensors[i];
        float *p = m->params + t->info.offset;
        float std = t->init == INIT_PROJ ? proj_std : t->init == INIT_ROUTER ? m->cfg.router_init_std : m->cfg.init_std;
        // an expert-parallel rank draws the whole stacked tensor and keeps its slice, so that
        // its experts equal those of the same seed on one process
        int64_t copies = t->info.group == MOE_GROUP_EXPERT ? m->ep : 1, keep = t->info.group == MOE_GROUP_EXPERT ? m->ep_rank : 0;
        for (int64_t k = 0; k < copies; k++)
            for (int64_t j = 0; j < t->info.numel; j++) {
                float v = t->init == INIT_ONE ? 1.0f : t->init == INIT_ZERO ? 0.0f : std * moe__rng_normal(&r);
                if (k == keep) p[j] = v;
            }
    }
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg; }
int moe_model_n_tensors(const moe_model *m) { return m->n_tensors; }
const moe_tensor_info *moe_model_tensor(const moe_model *m, int i) { return &m->tensors[i].info; }
float *moe_model_params(moe_model *m) { return m->params; }
float *moe_model_grads(moe_model *m) { return m->grads; }
int64_t moe_model_n_params(const moe_model *m) { return m->n_params; }
const float *moe_model_logits(const moe_model *m) { return m->logits; }
int moe_model_n_moe_layers(const moe_model *m) { return m->n_moe; }
const moe_layer_stats *moe_model_layer_stats(const moe_model *m, int i) { return &m->stats[i]; }

const moe_tensor_info *moe_model_find(const moe_model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].info.name, name)) return &m->tensors[i].info;
    return NULL;
}

int64_t moe_model_active_params(const moe_model *m) {
    // every parameter a token's forward pass multiplies by, except the embedding lookup;
    // of routed experts, K of E (all E for the soft mixture; on average K for expert choice)
    const moe_config *c = &m->cfg;
    int64_t n = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const moe_tensor_info *t = &m->tensors[i].info;
        if (t->offset == m->off_embed && !c->tie_embeddings) continue;
        if (t->group == MOE_GROUP_BUFFER) continue;
        int soft = c->routing == MOE_ROUTING_SOFT;
        n += t->group == MOE_GROUP_EXPERT && !soft ? t->numel / t->shape[0] * c->top_k : t->numel;
    }
    return n;
}

void moe_model_zero_grad(moe_model *m) { memset(m->grads, 0, (size_t)m->n_params * sizeof(float)); }

/* ---------------------------------------------------------------- forward */

/* One block: resid[l+1] = resid[l] + attn(...) + ffn(...), saving its activations in la[l] (in
 * recompute mode the slot shared by every block of its kind). Deterministic for a given thread
 * count and noise seed, so that backward can redo it bit for bit. */
static void block_forward(moe_model *m, int l, int B, int T, int training) {
    const moe_config *c = &m->cfg;
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, H = c->n_head;
    double *prof = m->prof, t = moe__prof_begin(prof);
    layer_w w = layer_weights(m, m->params, l);
    layer_act *a = &m->la[l];
    float *x = m->resid[l], *xo = m->resid[l + 1];
    moe__rmsnorm_forward(a->ln1, a->rstd1, x, w.ln1, N, C, c->norm_eps);
    moe__matmul_forward(a->q, a->ln1, w.wq, N, C, C, 0);
    moe__matmul_forward(a->k, a->ln1, w.wk, N, C, C, 0);
    moe__matmul_forward(a->v, a->ln1, w.wv, N, C, C, 0);
    moe__rope_forward(a->q, m->rope_cos, m->rope_sin, B, T, C, H);
    moe__rope_forward(a->k, m->rope_cos, m->rope_sin, B, T, C, H);
    moe__attention_forward(a->atty, a->att, a->q, a->k, a->v, B, T, C, H);
    memcpy(a->resid_mid, x, (size_t)N * C * sizeof(float));
    moe__matmul_forward(a->resid_mid, a->atty, w.wo, N, C, C, 1);
    moe__rmsnorm_forward(a->ln2, a->rstd2, a->resid_mid, w.ln2, N, C, c->norm_eps);
    memcpy(xo, a->resid_mid, (size_t)N * C * sizeof(float));
    moe__prof_end(prof, MOE_PHASE_ATTENTION, t);
    if (m->moe_slot[l] < 0) {
        t = moe__prof_begin(prof);
        moe__ffn_forward(xo, a->h1, a->h3, a->act, a->ln2, w.w1, w.w3, w.w2, N, C, c->ffn_hidden, 1);
        moe__prof_end(prof, MOE_PHASE_EXPERTS, t);
        return;
    }
    moe__moe_dims dims = moe_dims(m, l, T, training);
    moe__moe_forward(m->tmp, &a->mc, a->ln2, &w.moe, &dims, N);
    t = moe__prof_begin(prof);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * C; i++) xo[i] += m->tmp[i];
    moe__prof_end(prof, MOE_PHASE_COMBINE, t);
}

moe_status moe_model_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                             moe_losses *out) {
    const moe_config *c = &m->cfg;
    if (B < 1 || B > m->max_batch || T < 1 || T > c->seq_len)
        return moe__err(MOE_STATUS_ARG, "forward: batch %d x %d exceeds the planned %d x %d", B, T, m->max_batch,
                        c->seq_len);
    int64_t N = (int64_t)B * T;
    int C = c->n_embd, V = c->vocab_size;
    for (int64_t n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V || (targets && (targets[n] < 0 || targets[n] >= V)))
            return moe__err(MOE_STATUS_DATA, "forward: token %d at position %lld is outside the vocabulary [0, %d)",
                            targets && (targets[n] < 0 || targets[n] >= V) ? targets[n] : tokens[n], (long long)n, V);
    }
    memcpy(m->tokens, tokens, (size_t)N * sizeof(int));
    if (targets) memcpy(m->targets, targets, (size_t)N * sizeof(int));
    m->B = B;
    m->T = T;
    m->has_targets = targets != NULL;
    m->training = training;
    const float *wte = m->params + m->off_embed;
    // x_n = wte[token_n]
    double *prof = m->prof, t = moe__prof_begin(prof);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) memcpy(m->resid[0] + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    double aux = 0.0, z = 0.0, seq = 0.0, imp = 0.0, ld = 0.0;
    for (int l = 0; l < c->n_layer; l++) {
        block_forward(m, l, B, T, training);
        int s = m->moe_slot[l];
        if (s < 0) continue;
        const layer_act *a = &m->la[l];
        moe_layer_stats *st = &m->stats[s];
        memcpy(st->load, a->mc.load, (size_t)m->n_exp[l] * sizeof(int64_t));
        st->dropped = a->mc.dropped;
        st->would_drop = a->mc.would_drop;
        st->assignments = a->mc.routed;
        st->capacity = a->mc.capacity;
        st->aux = a->mc.aux;
        st->z = a->mc.z;
        st->seq_aux = a->mc.seq_aux;
        st->importance = a->mc.imp_loss;
        st->load_loss = a->mc.load_loss;
        aux += a->mc.aux;
        z += a->mc.z;
        seq += a->mc.seq_aux;
        imp += a->mc.imp_loss;
        ld += a->mc.load_loss;
    }
    t = moe__prof_begin(prof);
    moe__rmsnorm_forward(m->lnf, m->rstdf, m->resid[c->n_layer], m->params + m->off_normf, N, C, c->norm_eps);
    moe__matmul_forward(m->logits, m->lnf, m->params + m->off_lm, N, C, V, 0);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    if (out) {
        memset(out, 0, sizeof *out);
        if (m->n_moe) {
            out->aux = (float)(aux / m->n_moe);
            out->z = (float)(z / m->n_moe);
            out->seq_aux = (float)(seq / m->n_moe);
            out->importance = (float)(imp / m->n_moe);
            out->load = (float)(ld / m->n_moe);
        }
        if (targets) {
            out->ce = moe__crossentropy(NULL, m->row_loss, m->logits, targets, N, V, 1.0f);
            out->total = out->ce + c->aux_loss_coef * out->aux + c->z_loss_coef * out->z +
                         c->seq_aux_loss_coef * out->seq_aux + c->importance_loss_coef * out->importance +
                         c->load_loss_coef * out->load;
        }
        if (!isfinite(out->ce) || !isfinite(out->aux) || !isfinite(out->z))
            return moe__err(MOE_STATUS_NUMERIC, "forward: loss is not finite (ce %g, aux %g, z %g)", out->ce,
                            out->aux, out->z);
    }
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- backward */

moe_status moe_model_backward(moe_model *m, float grad_scale) {
    if (!m->has_targets) return moe__err(MOE_STATUS_ARG, "backward: the last forward had no targets");
    const moe_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->n_embd, V = c->vocab_size, H = c->n_head;
    int64_t N = (int64_t)B * T;
    size_t NC = (size_t)N * C * sizeof(float);
    float *g = m->grads;
    double *prof = m->prof, t = moe__prof_begin(prof);
    // loss = mean_n ce_n: dlogits = scale (softmax - onehot) / N
    moe__crossentropy(m->dlogits, m->row_loss, m->logits, m->targets, N, V, grad_scale);
    // logits = lnf @ lm^T
    memset(m->dln, 0, NC);
    moe__matmul_backward(m->dln, g + m->off_lm, m->dlogits, m->lnf, m->params + m->off_lm, N, C, V);
    memset(m->dresid, 0, NC);
    moe__rmsnorm_backward(m->dresid, g + m->off_normf, m->dln, m->resid[c->n_layer], m->params + m->off_normf,
                          m->rstdf, N, C);
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    float per_layer = m->n_moe ? grad_scale / (float)m->n_moe : 0.0f;
    moe__moe_loss_scales ls = {per_layer * c->aux_loss_coef, per_layer * c->z_loss_coef,
                               per_layer * c->seq_aux_loss_coef, per_layer * c->importance_loss_coef,
                               per_layer * c->load_loss_coef};
    for (int l = c->n_layer - 1; l >= 0; l--) {
        layer_w w = layer_weights(m, m->params, l);
        layer_w gw = layer_weights(m, g, l);
        layer_act *a = &m->la[l];
        if (c->recompute) block_forward(m, l, B, T, m->training); // refills la[l]; resid[l+1] is rewritten
        // xo = resid_mid + ffn(ln2): dresid holds d xo and becomes d resid_mid
        memset(m->dln, 0, NC);
        t = moe__prof_begin(prof);
        if (m->moe_slot[l] < 0)
            moe__ffn_backward(m->dln, gw.w1, gw.w3, gw.w2, m->dact, m->dh1, m->dh3, m->dresid, a->ln2, a->h1, a->h3,
                              a->act, w.w1, w.w3, w.w2, N, C, c->ffn_hidden);
        else {
            moe__moe_dims dims = moe_dims(m, l, T, m->training);
            moe__moe_backward(m->dln, &gw.moe, &m->ms, m->dresid, a->ln2, &w.moe, &a->mc, &dims, N, &ls);
        }
        if (m->moe_slot[l] < 0) moe__prof_end(prof, MOE_PHASE_EXPERTS, t);
        t = moe__prof_begin(prof);
        moe__rmsnorm_backward(m->dresid, gw.ln2, m->dln, a->resid_mid, w.ln2, a->rstd2, N, C);
        // resid_mid = x + atty @ wo^T
        memset(m->datty, 0, NC);
        moe__matmul_backward(m->datty, gw.wo, m->dresid, a->atty, w.wo, N, C, C);
        memset(m->dq, 0, NC);
        memset(m->dk, 0, NC);
        memset(m->dv, 0, NC);
        moe__attention_backward(m->dq, m->dk, m->dv, m->datt, m->datty, a->q, a->k, a->v, a->att, B, T, C, H);
        moe__rope_backward(m->dq, m->rope_cos, m->rope_sin, B, T, C, H);
        moe__rope_backward(m->dk, m->rope_cos, m->rope_sin, B, T, C, H);
        memset(m->dln, 0, NC);
        moe__matmul_backward(m->dln, gw.wq, m->dq, a->ln1, w.wq, N, C, C);
        moe__matmul_backward(m->dln, gw.wk, m->dk, a->ln1, w.wk, N, C, C);
        moe__matmul_backward(m->dln, gw.wv, m->dv, a->ln1, w.wv, N, C, C);
        moe__rmsnorm_backward(m->dresid, gw.ln1, m->dln, m->resid[l], w.ln1, a->rstd1, N, C);
        moe__prof_end(prof, MOE_PHASE_ATTENTION, t);
    }
    t = moe__prof_begin(prof);
    // x_n = wte[token_n]: parallel over channels so each gradient row is summed in token order
    float *gwte = g + m->off_embed;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++)
        for (int64_t n = 0; n < N; n++) gwte[(int64_t)m->tokens[n] * C + i] += m->dresid[n * C + i];
    moe__prof_end(prof, MOE_PHASE_HEAD, t);
    return MOE_STATUS_OK;
}

void moe__model_set_noise_seed(moe_model *m, uint64_t seed) { m->noise_seed = seed; }
void moe__model_ep(const moe_model *m, int *ep, int *rank) {
    *ep = m->ep;
    *rank = m->ep_rank;
}

void moe_model_profile(const moe_model *m, double *out) { memcpy(out, m->prof, sizeof m->prof); }
void moe_model_profile_reset(moe_model *m) { memset(m->prof, 0, sizeof m->prof); }
double *moe__model_prof(moe_model *m) { return m->prof; }

const char *moe_phase_name(moe_phase p) {
    static const char *const names[MOE_PHASE_COUNT] = {"attention", "router", "dispatch", "experts",
                                                       "combine", "optimizer", "head"};
    return (int)p >= 0 && p < MOE_PHASE_COUNT ? names[p] : "?";
}

int moe_model_routing(const moe_model *m, int i, int *out) {
    int l = m->stats[i].layer;
    if (m->cfg.recompute) return -1; // the blocks share one activation slot
    moe__moe_dims d = moe_dims(m, l, m->T, m->training);
    int slots = moe__moe_slots(&d);
    const moe__moe_cache *c = &m->la[l].mc;
    int64_t P = (int64_t)slots * m->B * m->T;
    for (int64_t a = 0; a < P; a++) out[a] = c->row_of[a] >= 0 ? c->sel[a] : -1;
    return slots;
}

/* ---------------------------------------------------------------- test access */

/* For tests: the MoE cache of layer l (NULL for a dense layer). */
const moe__moe_cache *moe__model_moe_cache(const moe_model *m, int l) {
    return m->moe_slot[l] >= 0 ? &m->la[l].mc : NULL;
}

/* ---------------------------------------------------------------- numerical faults */

static int64_t first_nonfinite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

int moe__model_locate_nonfinite(const moe_model *m, char *where, size_t n) {
    const moe_config *c = &m->cfg;
    for (int i = 0; i < m->n_tensors; i++) { // a parameter: it came from an earlier update
        const moe_tensor_info *t = &m->tensors[i].info;
        int64_t k = first_nonfinite(m->params + t->offset, t->numel);
        if (k >= 0) {
            snprintf(where, n, "parameter '%s' (layer %d), element %lld = %g", t->name, t->layer, (long long)k,
                     m->params[t->offset + k]);
            return MOE_NONFINITE_PARAM;
        }
    }
    int64_t NC = (int64_t)m->B * m->T * c->n_embd;
    for (int l = 0; l < c->n_layer && m->B > 0; l++) { // the forward, block by block
        if (!c->recompute && first_nonfinite(m->la[l].resid_mid, NC) >= 0) {
            snprintf(where, n, "activations: the attention output of layer %d", l);
            return MOE_NONFINITE_ACT;
        }
        if (first_nonfinite(m->resid[l + 1], NC) >= 0) {
            snprintf(where, n, "activations: the %s output of layer %d", m->moe_slot[l] >= 0 ? "MoE" : "FFN", l);
            return MOE_NONFINITE_ACT;
        }
    }
    if (m->B > 0 && first_nonfinite(m->logits, (int64_t)m->B * m->T * c->vocab_size) >= 0) {
        snprintf(where, n, "activations: the logits (lm_head)");
        return MOE_NONFINITE_ACT;
    }
    for (int i = m->n_tensors - 1; i >= 0; i--) { // gradients, in the order backward makes them
        const moe_tensor_info *t = &m->tensors[i].info;
        if (t->group == MOE_GROUP_BUFFER) continue;
        int64_t k = first_nonfinite(m->grads + t->offset, t->numel);
        if (k >= 0) {
            snprintf(where, n, "gradient of '%s' (layer %d), element %lld = %g", t->name, t->layer, (long long)k,
                     m->grads[t->offset + k]);
            return MOE_NONFINITE_GRAD;
        }
    }
    return 0;
}
