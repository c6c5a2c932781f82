/*
 * model.c — the decoder-only MoE transformer's definition and its public functions:
 *
 *   tokens (B,T) -> embedding -> L x [ x += attn(rmsnorm(x)); x += ffn_l(rmsnorm(x)) ]
 *                -> rmsnorm -> lm_head -> cross-entropy
 *
 * ffn_l is a dense SwiGLU or an MoE layer. Every parameter tensor is registered once in
 * build_table(): its Hugging Face checkpoint key, shape, group and offset; the parameter and
 * gradient buffers, checkpoints, weight-decay groups and tests all read that table. Running the
 * model (memory plan, forward, backward) is the backend's (model/backend.h; the CPU one in cpu/):
 * the functions here check their arguments and call it.
 */
#define _POSIX_C_SOURCE 200809L
#include "model/backend.h"
#include "dist/dist.h"

#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- tensor table */

static int64_t add_tensor(moe_model *m, moe_group group, moe__init_kind init, int layer, const char *name, int ndim,
                          int64_t d0, int64_t d1, int64_t d2) {
    moe__tensor *t = &m->tensors[m->n_tensors++];
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
    int64_t C = c->n_embd, V = c->vocab_size, F = c->expert_hidden, KC = (int64_t)moe__kv_heads(c) * (C / c->n_head);
    int64_t SF = moe__shared_width(c), Fd = c->ffn_hidden;
    m->tensors = calloc((size_t)L * 24 + 4, sizeof(moe__tensor));
    m->lo = calloc((size_t)L, sizeof(moe__layer_off));
    m->moe_slot = calloc((size_t)L, sizeof(int));
    m->n_exp = calloc((size_t)L, sizeof(int));
    if (!m->tensors || !m->lo || !m->moe_slot || !m->n_exp) return moe__err(MOE_STATUS_NOMEM, "out of memory (tensor table)");
    char name[160];
    m->off_embed = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, -1, "model.embed_tokens.weight", 2, V, C, 0);
    for (int l = 0; l < L; l++) {
        moe__layer_off *o = &m->lo[l];
        memset(o, 0xff, sizeof *o); // every offset -1 until registered
#define NAME(fmt) (snprintf(name, sizeof name, "model.layers.%d." fmt, l), name)
        o->ln1 = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ONE, l, NAME("input_layernorm.weight"), 1, C, 0, 0);
        o->wq = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("self_attn.q_proj.weight"), 2, C, C, 0);
        o->wk = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("self_attn.k_proj.weight"), 2, KC, C, 0);
        o->wv = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("self_attn.v_proj.weight"), 2, KC, C, 0);
        if (c->qkv_bias) { // Qwen2; no weight decay, as the norms
            o->bq = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ZERO, l, NAME("self_attn.q_proj.bias"), 1, C, 0, 0);
            o->bk = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ZERO, l, NAME("self_attn.k_proj.bias"), 1, KC, 0, 0);
            o->bv = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ZERO, l, NAME("self_attn.v_proj.bias"), 1, KC, 0, 0);
        }
        if (c->qk_norm) { // OLMoE: over the whole projections, not per head
            o->qn = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ONE, l, NAME("self_attn.q_norm.weight"), 1, C, 0, 0);
            o->kn = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ONE, l, NAME("self_attn.k_norm.weight"), 1, KC, 0, 0);
        }
        o->wo = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_PROJ, l, NAME("self_attn.o_proj.weight"), 2, C, C, 0);
        o->ln2 = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ONE, l, NAME("post_attention_layernorm.weight"), 1, C, 0, 0);
        if (moe_config_layer_is_moe(c, l)) {
            int64_t E = m->n_exp[l] = moe_config_layer_experts(c, l);
            m->max_e = (int)E > m->max_e ? (int)E : m->max_e;
            m->moe_slot[l] = m->n_moe++;
            o->wg = add_tensor(m, MOE_GROUP_ROUTER, MOE_INIT_ROUTER, l, NAME("block_sparse_moe.gate.weight"), 2, E, C, 0);
            if (c->routing == MOE_ROUTING_NOISY_TOPK) // Shazeer et al. initialise the noise weights to zero
                o->wnoise = add_tensor(m, MOE_GROUP_ROUTER, MOE_INIT_ZERO, l, NAME("block_sparse_moe.noise.weight"), 2, E, C, 0);
            if (c->bias_update_rate > 0.0f) // DeepSeek-V3's name for the aux-loss-free bias
                o->bias = add_tensor(m, MOE_GROUP_BUFFER, MOE_INIT_ZERO, l, NAME("block_sparse_moe.e_score_correction_bias"), 1, E, 0, 0);
            // with expert parallelism this rank stores its E/ep experts only
            if (E % m->ep != 0)
                return moe__err(MOE_STATUS_CONFIG, "config: layer %d has %lld experts, not divisible by the expert-parallel size %d",
                                l, (long long)E, m->ep);
            int64_t El = E / m->ep;
            o->ew1 = add_tensor(m, MOE_GROUP_EXPERT, MOE_INIT_NORMAL, l, NAME("block_sparse_moe.experts.w1.weight"), 3, El, F, C);
            o->ew3 = add_tensor(m, MOE_GROUP_EXPERT, MOE_INIT_NORMAL, l, NAME("block_sparse_moe.experts.w3.weight"), 3, El, F, C);
            o->ew2 = add_tensor(m, MOE_GROUP_EXPERT, MOE_INIT_PROJ, l, NAME("block_sparse_moe.experts.w2.weight"), 3, El, C, F);
            if (SF > 0) {
                o->sw1 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("block_sparse_moe.shared_experts.gate_proj.weight"), 2, SF, C, 0);
                o->sw3 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("block_sparse_moe.shared_experts.up_proj.weight"), 2, SF, C, 0);
                o->sw2 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_PROJ, l, NAME("block_sparse_moe.shared_experts.down_proj.weight"), 2, C, SF, 0);
                if (c->shared_gate)
                    o->sg = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("block_sparse_moe.shared_expert_gate.weight"), 2, 1, C, 0);
            }
        } else {
            m->moe_slot[l] = -1;
            o->w1 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("mlp.gate_proj.weight"), 2, Fd, C, 0);
            o->w3 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, l, NAME("mlp.up_proj.weight"), 2, Fd, C, 0);
            o->w2 = add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_PROJ, l, NAME("mlp.down_proj.weight"), 2, C, Fd, 0);
        }
#undef NAME
    }
    m->off_normf = add_tensor(m, MOE_GROUP_NORM, MOE_INIT_ONE, -1, "model.norm.weight", 1, C, 0, 0);
    m->off_lm = c->tie_embeddings ? m->off_embed
                                  : add_tensor(m, MOE_GROUP_DENSE, MOE_INIT_NORMAL, -1, "lm_head.weight", 2, V, C, 0);
    for (int i = 0; i < m->n_tensors; i++)
        if (!m->tensors[i].info.name) return moe__err(MOE_STATUS_NOMEM, "out of memory (tensor names)");
    return MOE_STATUS_OK;
}

int64_t moe__model_max_slots(const moe_config *c, int E) {
    return c->routing == MOE_ROUTING_EXPERT_CHOICE || c->routing == MOE_ROUTING_SOFT ? E : c->top_k;
}

/* ---------------------------------------------------------------- create / free */

/* Rows of an MoE layer are indexed by int (row_of, row_token, perm), and capacity selection
 * sorts twice as many: the assignments of max_batch sequences, slots per token (top_k for token
 * choice, E for expert choice and the soft mixture), times ep for the rows that a rank's experts
 * may receive from its expert-parallel group, must stay below INT32_MAX / 2. */
static moe_status check_rows(const moe_config *c, int max_batch, int ep) {
    int64_t slots = 0;
    for (int l = 0; l < c->n_layer; l++)
        if (moe_config_layer_is_moe(c, l)) {
            int64_t k = moe__model_max_slots(c, moe_config_layer_experts(c, l));
            slots = k > slots ? k : slots;
        }
    int64_t rows = (int64_t)max_batch * c->seq_len * slots * ep;
    if (ep > 1 && rows * c->n_embd > INT32_MAX) // MPI's int counts of the expert-parallel all-to-all
        return moe__err(MOE_STATUS_CONFIG,
                        "config: batch_size %d * seq_len %d * %lld slots per token * ep %d rows of n_embd %d = %lld "
                        "floats exceed an all-to-all's int counts (2^31 - 1); lower batch_size or seq_len",
                        max_batch, c->seq_len, (long long)slots, ep, c->n_embd, (long long)(rows * c->n_embd));
    if (rows <= INT32_MAX / 2) return MOE_STATUS_OK;
    char by_ep[32] = "";
    if (ep > 1) snprintf(by_ep, sizeof by_ep, " * ep %d", ep);
    return moe__err(MOE_STATUS_CONFIG,
                    "config: batch_size %d * seq_len %d * %lld slots per token%s = %lld expert rows is too large "
                    "(at most %d)",
                    max_batch, c->seq_len, (long long)slots, by_ep, (long long)rows, INT32_MAX / 2);
}

/* One moe_layer_stats per MoE layer, their loads in one array. */
static moe_status create_stats(moe_model *m) {
    int64_t total_e = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) total_e += m->n_exp[l];
    m->stats = calloc((size_t)(m->n_moe ? m->n_moe : 1), sizeof(moe_layer_stats));
    m->stats_load = calloc((size_t)(total_e ? total_e : 1), sizeof(int64_t));
    if (!m->stats || !m->stats_load) return moe__err(MOE_STATUS_NOMEM, "out of memory (routing statistics)");
    int64_t off = 0;
    for (int l = 0, i = 0; l < m->cfg.n_layer; l++)
        if (m->moe_slot[l] >= 0) {
            m->stats[i].layer = l;
            m->stats[i].n_experts = m->n_exp[l];
            m->stats[i].load = m->stats_load + off;
            m->stats[i].bias = m->lo[l].bias >= 0 ? m->params + m->lo[l].bias : NULL; // host view
            off += m->n_exp[l];
            i++;
        }
    return MOE_STATUS_OK;
}

moe_status moe_model_create(const moe_config *c, int max_batch, moe_model **out) {
    return moe__model_create(c, max_batch, 0, out);
}

void moe__model_release(const moe_model *m, const float *p, int64_t n) {
    moe__map_release(m->map, m->map_len, p, (size_t)n * sizeof(float));
}

moe_status moe__model_alloc_params(moe_model *m) {
    if (m->params) return MOE_STATUS_OK;
    m->params = moe__malloc((size_t)m->n_params * sizeof(float));
    return m->params ? MOE_STATUS_OK
                     : moe__err(MOE_STATUS_NOMEM, "cannot allocate %lld parameters (%.1f MiB)", (long long)m->n_params,
                                (double)m->n_params * 4.0 / 1048576.0);
}

moe_status moe__model_create(const moe_config *c, int max_batch, int flags, moe_model **out) {
    *out = NULL;
    moe_status st = moe_config_validate(c);
    if (st != MOE_STATUS_OK) return st;
    if (max_batch < 1) return moe__err(MOE_STATUS_ARG, "max_batch = %d must be at least 1", max_batch);
    if ((st = check_rows(c, max_batch, moe__dist_get()->ep)) != MOE_STATUS_OK) return st;
    const moe_device *dev = moe_device_selected();
    if ((st = moe_device_supports(dev, c)) != MOE_STATUS_OK) return st;
#ifndef MOE_HAVE_CUDA
    if (dev->kind != MOE_DEVICE_CPU) // moe_device_select refuses it first; a caller may not have called it
        return moe__err(MOE_STATUS_ARG, "--device cuda: this build has no CUDA (configure with -DMOE_CUDA=ON where nvcc is installed)");
#endif
    moe_model *m = calloc(1, sizeof *m);
    if (!m) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    m->cfg = *c;
    m->max_batch = max_batch;
    m->ep = moe__dist_get()->ep;
    m->ep_rank = moe__dist_get()->ep_rank;
#ifdef MOE_HAVE_CUDA
    m->be = dev->kind == MOE_DEVICE_CUDA ? &moe__backend_cuda : &moe__backend_cpu;
#else
    m->be = &moe__backend_cpu;
#endif
    // the CUDA backend keeps its training layout (and its own parameter buffers) for inference
    m->lean = (flags & MOE__MODEL_LEAN) && m->be == &moe__backend_cpu;
    m->defer_params = (flags & MOE__MODEL_DEFER_PARAMS) && m->be == &moe__backend_cpu;
    m->optim = (flags & MOE__MODEL_OPTIM) != 0;
    // --dtype bf16 on the CPU: bf16 weights, for inference only
    int cpu_bf16 = m->be == &moe__backend_cpu && dev->kind == MOE_DEVICE_CPU && dev->dtype == MOE_DTYPE_BF16 &&
                   !(flags & MOE__MODEL_TABLE);
    if (cpu_bf16 && !m->lean) {
        free(m);
        return moe__err(MOE_STATUS_ARG, "--dtype bf16 on the CPU keeps bf16 weights for inference (moe_model_load: "
                                        "sample, eval, logits, route); a trainable model computes in fp32");
    }
    m->bf16 = cpu_bf16;
    if (m->bf16) m->defer_params = 1;
    if (flags & MOE__MODEL_TABLE) m->be = &moe__backend_cpu, m->defer_params = 1; // nothing to create
    st = build_table(m);
    if (st == MOE_STATUS_OK && !(flags & MOE__MODEL_TABLE)) st = m->be->create(m);
    if (st == MOE_STATUS_OK) st = create_stats(m);
    if (st != MOE_STATUS_OK) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_STATUS_OK;
}

void moe_model_free(moe_model *m) {
    if (!m) return;
    if (m->be) m->be->free(m);
    if (m->tensors)
        for (int i = 0; i < m->n_tensors; i++) free((char *)m->tensors[i].info.name);
    free(m->tensors);
    free(m->lo);
    free(m->moe_slot);
    free(m->n_exp);
    free(m->stats);
    free(m->stats_load);
    free(m);
}

void moe_model_init(moe_model *m, uint64_t seed) {
    moe__rng r;
    moe__rng_seed(&r, seed);
    float proj_std = m->cfg.init_std / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int i = 0; i < m->n_tensors; i++) {
        const moe__tensor *t = &m->tensors[i];
        float *p = m->params + t->info.offset;
        float std = t->init == MOE_INIT_PROJ ? proj_std : t->init == MOE_INIT_ROUTER ? m->cfg.router_init_std : m->cfg.init_std;
        // an expert-parallel rank draws the whole stacked tensor and keeps its slice, so that
        // its experts equal those of the same seed on one process
        int64_t copies = t->info.group == MOE_GROUP_EXPERT ? m->ep : 1, keep = t->info.group == MOE_GROUP_EXPERT ? m->ep_rank : 0;
        for (int64_t k = 0; k < copies; k++)
            for (int64_t j = 0; j < t->info.numel; j++) {
                float v = t->init == MOE_INIT_ONE ? 1.0f : t->init == MOE_INIT_ZERO ? 0.0f : std * moe__rng_normal(&r);
                if (k == keep) p[j] = v;
            }
    }
    m->be->from_host(m, MOE_BUF_PARAMS);
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg; }
int moe_model_n_tensors(const moe_model *m) { return m->n_tensors; }
const moe_tensor_info *moe_model_tensor(const moe_model *m, int i) { return &m->tensors[i].info; }
float *moe_model_params(moe_model *m) {
    return !m->bf16 && m->be->to_host(m, MOE_BUF_PARAMS) == MOE_STATUS_OK ? m->params : NULL;
}
float *moe_model_grads(moe_model *m) { return m->be->to_host(m, MOE_BUF_GRADS) == MOE_STATUS_OK ? m->grads : NULL; }
int64_t moe_model_n_params(const moe_model *m) { return m->n_params; }
void moe_model_memory(const moe_model *m, int64_t *weights, int64_t *other) {
    *weights = m->mem_weights ? m->mem_weights : m->n_params * (int64_t)sizeof(float);
    *other = m->mem_other;
}
int moe_model_n_moe_layers(const moe_model *m) { return m->n_moe; }
const moe_layer_stats *moe_model_layer_stats(const moe_model *m, int i) { return &m->stats[i]; }

int64_t moe_model_total_experts(const moe_model *m) {
    int64_t n = 0;
    for (int i = 0; i < m->n_moe; i++) n += m->stats[i].n_experts;
    return n;
}

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


/* ---------------------------------------------------------------- running: the backend */

moe_status moe__model_losses(const moe_model *m, int targets, float ce, moe_losses *out) {
    const moe_config *c = &m->cfg;
    double sums[5] = {0.0, 0.0, 0.0, 0.0, 0.0}; // aux, z, seq_aux, importance, load
    for (int i = 0; i < m->n_moe; i++) {
        const moe_layer_stats *st = &m->stats[i];
        sums[0] += st->aux, sums[1] += st->z, sums[2] += st->seq_aux, sums[3] += st->importance, sums[4] += st->load_loss;
    }
    memset(out, 0, sizeof *out);
    if (m->n_moe) {
        out->aux = (float)(sums[0] / m->n_moe);
        out->z = (float)(sums[1] / m->n_moe);
        out->seq_aux = (float)(sums[2] / m->n_moe);
        out->importance = (float)(sums[3] / m->n_moe);
        out->load = (float)(sums[4] / m->n_moe);
    }
    if (targets) {
        out->ce = ce;
        out->total = out->ce + c->aux_loss_coef * out->aux + c->z_loss_coef * out->z +
                     c->seq_aux_loss_coef * out->seq_aux + c->importance_loss_coef * out->importance +
                     c->load_loss_coef * out->load;
    }
    if (!isfinite(out->ce) || !isfinite(out->aux) || !isfinite(out->z))
        return moe__err(MOE_STATUS_NUMERIC, "forward: loss is not finite (ce %g, aux %g, z %g)", out->ce,
                        out->aux, out->z);
    return MOE_STATUS_OK;
}

moe_status moe_model_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                             moe_losses *out) {
    const moe_config *c = &m->cfg;
    if (!m->be_state)
        return moe__err(MOE_STATUS_ARG, "forward: the model was loaded with max_batch 0 (its weights only)");
    if (B < 1 || B > m->max_batch || T < 1 || T > c->seq_len)
        return moe__err(MOE_STATUS_ARG, "forward: batch %d x %d exceeds the planned %d x %d", B, T, m->max_batch,
                        c->seq_len);
    int64_t N = (int64_t)B * T;
    int V = c->vocab_size;
    for (int64_t n = 0; n < N; n++) {
        if (tokens[n] < 0 || tokens[n] >= V || (targets && (targets[n] < 0 || targets[n] >= V)))
            return moe__err(MOE_STATUS_DATA, "forward: token %d at position %lld is outside the vocabulary [0, %d)",
                            targets && (targets[n] < 0 || targets[n] >= V) ? targets[n] : tokens[n], (long long)n, V);
    }
    m->B = B;
    m->T = T;
    m->has_targets = targets != NULL;
    m->training = training;
    return m->be->forward(m, tokens, targets, B, T, training, out);
}

moe_status moe_model_backward(moe_model *m, float grad_scale) {
    if (m->lean)
        return moe__err(MOE_STATUS_ARG, "backward: this model was loaded for inference (moe_model_load): it has no "
                                        "gradients; create one with moe_model_create to train");
    if (!m->has_targets) return moe__err(MOE_STATUS_ARG, "backward: the last forward had no targets");
    return m->be->backward(m, grad_scale);
}

void moe_model_zero_grad(moe_model *m) {
    if (m->be_state && !m->lean) m->be->zero_grad(m); // an inference model has no gradients
}
const float *moe_model_logits(const moe_model *m) { return m->be_state ? m->be->logits((moe_model *)m) : NULL; }

moe_status moe_model_routing(const moe_model *m, int i, int *out, int *slots) {
    *slots = 0;
    if (i < 0 || i >= m->n_moe)
        return moe__err(MOE_STATUS_ARG, "routing: MoE layer %d does not exist (the model has %d MoE layers)", i, m->n_moe);
    if (m->cfg.recompute) // the blocks share one activation slot: only the last one's routing is there
        return moe__err(MOE_STATUS_CONFIG,
                        "routing: a model created with recompute keeps no per-layer routing (its MoE layers share "
                        "one activation slot); create it with recompute off");
    if (!m->be_state) return moe__err(MOE_STATUS_ARG, "routing: the model was loaded with max_batch 0 (its weights only)");
    moe_status st = m->be->routing(m, i, out, slots);
    if (st != MOE_STATUS_OK) *slots = 0;
    return st;
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
