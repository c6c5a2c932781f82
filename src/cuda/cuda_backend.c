/*
 * cuda_backend.c — the CUDA backend's ops table and memory plan: parameters and gradients in one
 * device allocation, the AdamW moments in another (training models only), and one arena for the
 * activations (the CPU's plan, moe__cpu_plan), CUB's dispatch scratch, the bf16 copies of a
 * product's inputs, cuBLAS's workspace and the step's scalars. The plan is sized on the host and
 * checked against the device's free memory before anything is allocated; nothing is allocated
 * after create and optimizer_create. The host views (m->params, m->grads, m->opt) are mirrors,
 * made current by to_host and read back by from_host.
 *
 * The optimizer side runs on the device: the gradient norm (per-tensor sums of squares in double,
 * in a fixed order, replicated and expert tensors apart as on the CPU), AdamW per tensor with its
 * group's learning rate and decay, and the zeroing of gradients. The aux-loss-free bias update
 * (E floats a layer, once a step) and the non-finite locator (only after a fault) work on host
 * copies with the CPU's own code.
 */
#include "cuda/cuda_backend.h"
#include "nn/nn.h"

#include <math.h>
#include <string.h>

#define ALIGN 256

static size_t up(size_t b) { return (b + ALIGN - 1) / ALIGN * ALIGN; }

/* Elements of the largest pair of inputs of any product in bf16 (both are rounded into the
 * scratch): every input is one of these sizes, so twice the largest bounds each pair. */
static size_t bf16_elems(const moe_model *m) {
    const moe_config *c = &m->cfg;
    int64_t N = (int64_t)m->max_batch * c->seq_len, C = c->n_embd, V = c->vocab_size, Fd = c->ffn_hidden;
    int64_t F = c->expert_hidden, SF = moe__shared_width(c), P = N * moe__model_max_slots(c, m->max_e);
    int64_t A = (int64_t)m->max_batch * c->n_head * c->seq_len * c->seq_len; // attention probabilities
    int64_t sizes[] = {N * V, V * C, N * C, C * C, N * Fd, Fd * C, P * F, P * C, F * C, N * SF, SF * C, A};
    int64_t mx = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) mx = sizes[i] > mx ? sizes[i] : mx;
    return (size_t)(2 * mx + MOE_CUDA_BF16_ALIGN); // the second input starts aligned
}

static size_t small_bytes(const moe_model *m) {
    return up((size_t)(1 + MOE_CUDA_LAYER_LOSSES * m->n_moe) * sizeof(float)) + up(2 * sizeof(double)) + up(moe__cuda_sumsq_scratch());
}

moe_status moe__cuda_plan_size(moe_model *m, size_t dispatch_bytes, int bf16, int training, moe__cuda_plan_bytes *out) {
    moe__cpu tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.resid = calloc((size_t)m->cfg.n_layer + 1, sizeof(float *));
    tmp.la = calloc((size_t)m->cfg.n_layer, sizeof(moe__cpu_layer_act));
    if (!tmp.resid || !tmp.la) {
        free(tmp.resid);
        free(tmp.la);
        return moe__err(MOE_STATUS_NOMEM, "out of memory (activation plan)");
    }
    void *saved = m->be_state; // the plan reads the layout through moe__cpu_of(m)
    m->be_state = &tmp;
    size_t acts = moe__cpu_plan(m, &tmp, NULL);
    m->be_state = saved;
    free(tmp.resid);
    free(tmp.la);
    memset(out, 0, sizeof *out);
    size_t P = (size_t)m->n_params * sizeof(float);
    out->params = up(P);
    out->grads = up(P);
    out->opt = training ? up(2 * P) : 0;
    out->acts = up(acts);
    out->dispatch = up(dispatch_bytes);
    out->bf16 = bf16 ? up(bf16_elems(m) * 2) : 0;
    out->workspace = up(moe__cuda_blas_workspace_bytes());
    out->small = small_bytes(m);
    out->reserve = (size_t)64 << 20;
    out->total = out->params + out->grads + out->opt + out->acts + out->dispatch + out->bf16 + out->workspace + out->small +
                 out->reserve;
    return MOE_STATUS_OK;
}

moe_status moe__cuda_plan_fits(const moe__cuda_plan_bytes *b, size_t free_bytes, int index) {
    if (b->total <= free_bytes) return MOE_STATUS_OK;
    const double G = 1073741824.0;
    return moe__err(MOE_STATUS_NOMEM,
                    "--device cuda:%d: the memory plan needs %.3f GiB (%zu bytes: parameters %.3f, gradients %.3f, "
                    "AdamW moments %.3f, activations %.3f, scratch %.3f, kept for cuBLAS and CUB %.3f GiB) but the "
                    "device has %.3f GiB (%zu bytes) free; lower --batch-size or seq_len, or use --dtype fp32 to drop "
                    "the bf16 scratch",
                    index, b->total / G, b->total, b->params / G, b->grads / G, b->opt / G, b->acts / G,
                    (b->dispatch + b->bf16 + b->workspace + b->small) / G, b->reserve / G, free_bytes / G, free_bytes);
}

static void cuda_free(moe_model *m) {
    moe__cuda *s = moe__cuda_of(m);
    free(m->params);
    free(m->grads);
    free(m->opt);
    m->params = m->grads = m->opt = NULL;
    if (!s) return;
    moe__cuda_blas_free(s->blas);
    moe__cuda_prof_free(s->prof);
    moe__cuda_free(s->p); // s->g lies in the same allocation
    moe__cuda_free(s->opt);
    moe__cuda_free(s->arena);
    free(s->act.resid);
    free(s->act.la);
    free(s->h_scal);
    free(s->h_counts);
    free(s->h_logits);
    free(s);
    m->be_state = NULL;
}

/* Lays out the arena: the activations, then the backend's own buffers. */
static void carve(moe_model *m, moe__cuda *s, const moe__cuda_plan_bytes *b) {
    char *a = s->arena;
    moe__cpu_plan(m, &s->act, a);
    a += b->acts;
    s->dispatch = a, s->dispatch_bytes = b->dispatch, a += b->dispatch;
    s->bf16s = a, s->bf16_bytes = b->bf16, a += b->bf16;
    s->workspace = a, a += b->workspace;
    s->scal = (float *)a, a += up((size_t)(1 + MOE_CUDA_LAYER_LOSSES * m->n_moe) * sizeof(float));
    s->sumsq = (double *)a, a += up(2 * sizeof(double));
    s->sumsq_scratch = (double *)a;
}

static moe_status device_setup(moe_model *m, moe__cuda *s) {
    const moe_config *c = &m->cfg;
    char name[256];
    size_t free_b = 0, total_b = 0, disp = 0;
    moe_status st = moe__cuda_device_check(s->index, name, sizeof name, &free_b, &total_b);
    int64_t N = (int64_t)m->max_batch * c->seq_len;
    if (st == MOE_STATUS_OK && m->n_moe > 0) // the widest routing's assignments, or expert choice's sort
        st = moe__cuda_dispatch_scratch(&disp, N * moe__model_max_slots(c, m->max_e), m->max_e);
    if (st == MOE_STATUS_OK && m->n_moe > 0 && c->routing == MOE_ROUTING_EXPERT_CHOICE) {
        size_t ec = 0;
        st = moe__cuda_dispatch_ec_scratch(&ec, N, m->max_e);
        disp = ec > disp ? ec : disp;
    }
    moe__cuda_plan_bytes b;
    if (st == MOE_STATUS_OK) st = moe__cuda_plan_size(m, disp, s->bf16, 0, &b);
    if (st == MOE_STATUS_OK) st = moe__cuda_plan_fits(&b, free_b, s->index);
    if (st == MOE_STATUS_OK) st = moe__cuda_malloc((void **)&s->p, b.params + b.grads);
    if (st == MOE_STATUS_OK) st = moe__cuda_malloc((void **)&s->arena, b.total - b.params - b.grads - b.reserve);
    if (st != MOE_STATUS_OK) return st;
    s->g = (float *)((char *)s->p + b.params);
    carve(m, s, &b);
    st = moe__cuda_memset(s->p, 0, b.params + b.grads);
    // the RoPE tables, made on the host as the CPU makes them
    int64_t half = (int64_t)c->seq_len * (c->n_embd / c->n_head / 2);
    float *tab = malloc((size_t)(2 * half + 1) * sizeof(float));
    if (!tab) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    moe__rope_tables(tab, tab + half, c->seq_len, c->n_embd / c->n_head, c->rope_theta);
    if (st == MOE_STATUS_OK) st = moe__cuda_to_device(s->act.rope_cos, tab, (size_t)half * sizeof(float));
    if (st == MOE_STATUS_OK) st = moe__cuda_to_device(s->act.rope_sin, tab + half, (size_t)half * sizeof(float));
    free(tab);
    if (st == MOE_STATUS_OK)
        st = moe__cuda_blas_create(&s->blas, s->workspace, moe__cuda_blas_workspace_bytes(), s->bf16s, s->bf16_bytes);
    if (st == MOE_STATUS_OK) st = moe__cuda_prof_create(&s->prof, 64 + 16 * c->n_layer); // a pass's marks
    return st;
}

static moe_status cuda_create(moe_model *m) {
    const moe_config *c = &m->cfg;
    const moe_device *d = moe_device_selected();
    moe__cuda *s = calloc(1, sizeof *s);
    m->be_state = s;
    if (!s) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    s->bf16 = d->dtype == MOE_DTYPE_BF16;
    s->index = d->index;
    m->params = moe__calloc((size_t)m->n_params * sizeof(float));
    m->grads = moe__calloc((size_t)m->n_params * sizeof(float));
    s->act.resid = calloc((size_t)c->n_layer + 1, sizeof(float *));
    s->act.la = calloc((size_t)c->n_layer, sizeof(moe__cpu_layer_act));
    s->h_scal = calloc((size_t)(1 + MOE_CUDA_LAYER_LOSSES * m->n_moe), sizeof(float));
    s->h_counts = calloc((size_t)(m->n_moe ? m->n_moe : 1) * (2 * (size_t)m->max_e + 1), sizeof(int64_t));
    if (!m->params || !m->grads || !s->act.resid || !s->act.la || !s->h_scal || !s->h_counts)
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate the host views of %lld parameters", (long long)m->n_params);
    return device_setup(m, s);
}

static moe_status cuda_optimizer_create(moe_model *m) {
    moe__cuda *s = moe__cuda_of(m);
    if (s->opt) return MOE_STATUS_OK;
    size_t bytes = (size_t)m->n_params * 2 * sizeof(float);
    char name[256];
    size_t free_b = 0, total_b = 0;
    moe_status st = moe__cuda_device_check(s->index, name, sizeof name, &free_b, &total_b);
    if (st != MOE_STATUS_OK) return st;
    if (bytes > free_b)
        return moe__err(MOE_STATUS_NOMEM,
                        "--device cuda:%d: the AdamW moments need %.3f GiB (%zu bytes) but the device has %.3f GiB "
                        "(%zu bytes) free after the model's plan; lower --batch-size or seq_len",
                        s->index, bytes / 1073741824.0, bytes, free_b / 1073741824.0, free_b);
    m->opt = moe__calloc(bytes);
    if (!m->opt) return moe__err(MOE_STATUS_NOMEM, "cannot allocate optimizer state for %lld parameters", (long long)m->n_params);
    if ((st = moe__cuda_malloc((void **)&s->opt, bytes)) != MOE_STATUS_OK) return st;
    return moe__cuda_memset(s->opt, 0, bytes);
}

/* ---------------------------------------------------------------- host views */

/* Keeps the first device error of an op that cannot return one: the next forward, backward or
 * to_host returns it. */
static void sticky(moe_model *m, moe_status st) {
    if (st != MOE_STATUS_OK && moe__cuda_of(m)->err == MOE_STATUS_OK) moe__cuda_of(m)->err = st;
}

static void buffer(moe_model *m, moe__buf b, float **host, float **dev, size_t *bytes) {
    moe__cuda *s = moe__cuda_of(m);
    *bytes = (size_t)m->n_params * sizeof(float) * (b == MOE_BUF_OPT ? 2 : 1);
    *host = b == MOE_BUF_PARAMS ? m->params : b == MOE_BUF_GRADS ? m->grads : m->opt;
    *dev = b == MOE_BUF_PARAMS ? s->p : b == MOE_BUF_GRADS ? s->g : s->opt;
}

static moe_status cuda_to_host(moe_model *m, moe__buf b) {
    moe__cuda *s = moe__cuda_of(m);
    if (s->err != MOE_STATUS_OK) // an optimizer step failed: its buffers are not to be saved
        return moe__err(s->err, "the GPU failed earlier: %s", moe_last_error());
    float *h, *d;
    size_t bytes;
    buffer(m, b, &h, &d, &bytes);
    if (!h || !d) return MOE_STATUS_OK; // no optimizer state yet
    moe_status st = moe__cuda_sync();
    return st == MOE_STATUS_OK ? moe__cuda_to_host(h, d, bytes) : st;
}

static moe_status cuda_from_host(moe_model *m, moe__buf b) {
    float *h, *d;
    size_t bytes;
    buffer(m, b, &h, &d, &bytes);
    if (!h || !d) return MOE_STATUS_OK;
    moe_status st = moe__cuda_to_device(d, h, bytes);
    sticky(m, st);
    return st;
}

static const float *cuda_logits(moe_model *m) {
    moe__cuda *s = moe__cuda_of(m);
    size_t n = (size_t)m->B * m->T * m->cfg.vocab_size;
    if (!s->h_logits) s->h_logits = malloc((size_t)m->max_batch * m->cfg.seq_len * m->cfg.vocab_size * sizeof(float));
    if (!s->h_logits) {
        moe__err(MOE_STATUS_NOMEM, "out of memory (a host copy of the logits)");
        return NULL;
    }
    if (moe__cuda_sync() != MOE_STATUS_OK ||
        moe__cuda_to_host(s->h_logits, s->act.logits, n * sizeof(float)) != MOE_STATUS_OK)
        return NULL;
    return s->h_logits;
}

static moe_status cuda_routing(const moe_model *m, int i, int *out, int *slots) {
    int l = m->stats[i].layer;
    const moe__moe_cache *c = &moe__cuda_of(m)->act.la[l].mc;
    moe__moe_dims d = moe__cpu_layer_dims(m, l, m->T, m->training);
    *slots = moe__moe_slots(&d);
    int64_t P = (int64_t)*slots * m->B * m->T;
    if (!out || P == 0) return MOE_STATUS_OK;
    int *row = malloc((size_t)P * sizeof(int));
    if (!row) return moe__err(MOE_STATUS_NOMEM, "routing of MoE layer %d: cannot allocate %lld ints", i, (long long)P);
    moe_status st = moe__cuda_sync();
    if (st == MOE_STATUS_OK) st = moe__cuda_to_host(out, c->sel, (size_t)P * sizeof(int));
    if (st == MOE_STATUS_OK) st = moe__cuda_to_host(row, c->row_of, (size_t)P * sizeof(int));
    for (int64_t a = 0; st == MOE_STATUS_OK && a < P; a++)
        if (row[a] < 0) out[a] = -1;
    free(row);
    return st == MOE_STATUS_OK ? st : moe__err(st, "routing of MoE layer %d: %s", i, moe_last_error());
}

/* ---------------------------------------------------------------- optimizer */

static void cuda_zero_grad(moe_model *m) {
    sticky(m, moe__cuda_memset(moe__cuda_of(m)->g, 0, (size_t)m->n_params * sizeof(float)));
}

static float cuda_grad_norm(moe_model *m) {
    moe__cuda *s = moe__cuda_of(m);
    moe_status st = moe__cuda_memset(s->sumsq, 0, 2 * sizeof(double));
    for (int i = 0; i < m->n_tensors && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *ti = &m->tensors[i].info;
        if (ti->group == MOE_GROUP_BUFFER) continue;
        double *acc = s->sumsq + (ti->group == MOE_GROUP_EXPERT);
        st = moe__cuda_sumsq(acc, s->sumsq_scratch, s->g + ti->offset, ti->numel);
    }
    double ss[2] = {NAN, NAN};
    if (st == MOE_STATUS_OK) st = moe__cuda_sync();
    if (st == MOE_STATUS_OK) st = moe__cuda_to_host(ss, s->sumsq, sizeof ss);
    sticky(m, st);
    return st == MOE_STATUS_OK ? (float)sqrt(ss[0] + ss[1]) : NAN; // a device error stops the step
}

static void cuda_adamw(moe_model *m, int64_t step, float lr, const moe_config *c, float norm) {
    moe__cuda *s = moe__cuda_of(m);
    int64_t P = m->n_params;
    float clip = 1.0f; // as moe__cpu_adamw: clip_grad_norm_ scales by max_norm / (norm + 1e-6) below 1
    if (c->grad_clip > 0.0f) {
        float coef = c->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) clip = coef;
    }
    int64_t tstep = step + 1;
    float bc1 = 1.0f - powf(c->beta1, (float)tstep), bc2 = 1.0f - powf(c->beta2, (float)tstep);
    moe_status st = MOE_STATUS_OK;
    for (int i = 0; i < m->n_tensors && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *ti = &m->tensors[i].info;
        if (ti->group == MOE_GROUP_BUFFER) continue;
        float tlr = lr * (ti->group == MOE_GROUP_EXPERT ? c->expert_lr_mult
                          : ti->group == MOE_GROUP_ROUTER ? c->router_lr_mult : 1.0f);
        float wd = ti->group == MOE_GROUP_NORM ? 0.0f : c->weight_decay;
        int64_t o = ti->offset;
        st = moe__cuda_adamw(s->p + o, s->opt + o, s->opt + P + o, s->g + o, ti->numel, clip, c->beta1, c->beta2,
                             c->adam_eps, 1.0f - tlr * wd, tlr / bc1, sqrtf(bc2));
    }
    // the step ends here: waiting costs nothing (the next forward's token copy would wait) and
    // the trainer's optimizer time then holds the update's device time
    if (st == MOE_STATUS_OK) st = moe__cuda_sync();
    sticky(m, st);
}

/* On host copies of the biases, with the CPU's rule: E floats a layer, once a step. */
static void cuda_bias_update(moe_model *m, const int64_t *loads, float rate) {
    moe__cuda *s = moe__cuda_of(m);
    int64_t off = 0;
    moe_status st = moe__cuda_sync();
    for (int i = 0; i < m->n_moe && st == MOE_STATUS_OK; i++) {
        const moe_layer_stats *ls = &m->stats[i];
        int64_t o = m->lo[ls->layer].bias;
        size_t bytes = (size_t)ls->n_experts * sizeof(float);
        if (ls->bias) {
            st = moe__cuda_to_host(m->params + o, s->p + o, bytes);
            if (st != MOE_STATUS_OK) break;
            moe__router_bias_update(m->params + o, loads + off, ls->n_experts, rate);
            st = moe__cuda_to_device(s->p + o, m->params + o, bytes);
        }
        off += ls->n_experts;
    }
    sticky(m, st);
}

/* Where the first non-finite value is: parameters and gradients on their host views, the
 * activations block by block from device copies, as the CPU looks. */
static int cuda_locate_nonfinite(const moe_model *cm, char *where, size_t n) {
    moe_model *m = (moe_model *)cm;
    moe__cuda *s = moe__cuda_of(m);
    if (cuda_to_host(m, MOE_BUF_PARAMS) != MOE_STATUS_OK || cuda_to_host(m, MOE_BUF_GRADS) != MOE_STATUS_OK) {
        snprintf(where, n, "unknown: the device failed (%s)", moe_last_error());
        return MOE_NONFINITE_ACT;
    }
    int kind = moe__nonfinite_params(m, where, n);
    if (kind) return kind;
    const moe_config *c = &m->cfg;
    int64_t NC = (int64_t)m->B * m->T * c->n_embd, NV = (int64_t)m->B * m->T * c->vocab_size;
    float *h = malloc((size_t)(NV > NC ? NV : NC) * sizeof(float) + 1);
    for (int l = 0; h && l < c->n_layer && m->B > 0; l++) {
        const float *parts[2] = {s->act.la[l].resid_mid, s->act.resid[l + 1]};
        for (int k = 0; k < 2; k++)
            if (moe__cuda_to_host(h, parts[k], (size_t)NC * sizeof(float)) == MOE_STATUS_OK &&
                moe__first_nonfinite(h, NC) >= 0) {
                snprintf(where, n, "activations: the %s output of layer %d",
                         k == 0 ? "attention" : m->moe_slot[l] >= 0 ? "MoE" : "FFN", l);
                free(h);
                return MOE_NONFINITE_ACT;
            }
    }
    if (h && m->B > 0 && moe__cuda_to_host(h, s->act.logits, (size_t)NV * sizeof(float)) == MOE_STATUS_OK &&
        moe__first_nonfinite(h, NV) >= 0) {
        snprintf(where, n, "activations: the logits (lm_head)");
        free(h);
        return MOE_NONFINITE_ACT;
    }
    free(h);
    return moe__nonfinite_grads(m, where, n);
}

const moe__backend moe__backend_cuda = {
    .name = "cuda",
    .create = cuda_create,
    .free = cuda_free,
    .optimizer_create = cuda_optimizer_create,
    .forward = moe__cuda_forward,
    .backward = moe__cuda_backward,
    .zero_grad = cuda_zero_grad,
    .logits = cuda_logits,
    .routing = cuda_routing,
    .grad_norm = cuda_grad_norm,
    .adamw = cuda_adamw,
    .bias_update = cuda_bias_update,
    .locate_nonfinite = cuda_locate_nonfinite,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
};
