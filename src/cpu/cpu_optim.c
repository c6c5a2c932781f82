/*
 * cpu_optim.c — the CPU backend's optimizer side: the global gradient norm (as
 * torch.nn.utils.clip_grad_norm_, summed in a fixed order), AdamW with decoupled weight decay (as
 * torch.optim.AdamW; none on norms) and per-group learning-rate multipliers, the aux-loss-free
 * bias update of every MoE layer, and the locator of the first non-finite value.
 */
#include "cpu/cpu.h"
#include "dist/dist.h"

#include <math.h>
#include <string.h>

void moe__cpu_zero_grad(moe_model *m) {
    // in chunks over the threads: one core alone cannot clear memory as fast as all of them
    enum { CHUNK = 1 << 18 };
    int64_t n = m->n_params, chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < chunks; i++) {
        int64_t a = i * CHUNK, b = a + CHUNK < n ? a + CHUNK : n;
        memset(m->grads + a, 0, (size_t)(b - a) * sizeof(float));
    }
}

float moe__cpu_grad_norm(moe_model *m) {
    // per tensor, in fixed chunks added in order, so the value does not depend on the thread
    // count; with expert parallelism each rank holds some experts: their squares are summed over
    // the ep group, the replicated tensors count once
    enum { NORM_CHUNK = 16384, NORM_ROUND = 1024 };
    float *g = m->grads;
    double ss = 0.0, ss_exp = 0.0;
    for (int ti_ = 0; ti_ < m->n_tensors; ti_++) {
        const moe_tensor_info *ti = &m->tensors[ti_].info;
        if (ti->group == MOE_GROUP_BUFFER) continue;
        int64_t o = ti->offset, e = ti->offset + ti->numel;
        double *acc_t = ti->group == MOE_GROUP_EXPERT ? &ss_exp : &ss;
        for (int64_t r0 = o; r0 < e; r0 += (int64_t)NORM_CHUNK * NORM_ROUND) {
            double part[NORM_ROUND];
            int64_t left = e - r0, nchunks = (left + NORM_CHUNK - 1) / NORM_CHUNK;
            if (nchunks > NORM_ROUND) nchunks = NORM_ROUND;
#pragma omp parallel for schedule(static)
            for (int64_t ci = 0; ci < nchunks; ci++) {
                int64_t a = r0 + ci * NORM_CHUNK, b = a + NORM_CHUNK < e ? a + NORM_CHUNK : e;
                double acc = 0.0;
#pragma omp simd reduction(+ : acc)
                for (int64_t i = a; i < b; i++) acc += (double)g[i] * g[i];
                part[ci] = acc;
            }
            for (int64_t ci = 0; ci < nchunks; ci++) *acc_t += part[ci];
        }
    }
    if (moe__dist_get()->ep > 1) moe__dist_allreduce_f64(MOE_COMM_EP, &ss_exp, 1);
    return (float)sqrt(ss + ss_exp);
}

void moe__cpu_adamw_tensor(float *restrict p, float *restrict m, float *restrict v, const float *restrict g, int64_t n,
                           float clip, float b1, float b2, float eps, float decay, float step_size, float sqrt_bc2) {
    // constants in arguments and restrict pointers: the loop vectorises
#pragma omp parallel for simd schedule(static)
    for (int64_t j = 0; j < n; j++) {
        float gj = g[j] * clip;
        float mo = b1 * m[j] + (1.0f - b1) * gj, va = b2 * v[j] + (1.0f - b2) * gj * gj;
        m[j] = mo;
        v[j] = va;
        p[j] = p[j] * decay - step_size * mo / (sqrtf(va) / sqrt_bc2 + eps);
    }
}

void moe__cpu_adamw(moe_model *m, int64_t step, float lr, const moe_config *c, float norm) {
    int64_t P = m->n_params;
    float *g = m->grads, *p = m->params, *opt = m->opt;
    // clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1
    float clip = 1.0f;
    if (c->grad_clip > 0.0f) {
        float coef = c->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) clip = coef;
    }
    // AdamW, per tensor for its group's learning rate and decay
    int64_t tstep = step + 1;
    float bc1 = 1.0f - powf(c->beta1, (float)tstep), bc2 = 1.0f - powf(c->beta2, (float)tstep);
    float *mom = opt, *var = opt + P;
    for (int i = 0; i < m->n_tensors; i++) {
        const moe_tensor_info *ti = &m->tensors[i].info;
        if (ti->group == MOE_GROUP_BUFFER) continue; // updated by its own rule, not by gradients
        float tlr = lr * (ti->group == MOE_GROUP_EXPERT ? c->expert_lr_mult
                          : ti->group == MOE_GROUP_ROUTER ? c->router_lr_mult : 1.0f);
        float wd = ti->group == MOE_GROUP_NORM ? 0.0f : c->weight_decay;
        float step_size = tlr / bc1, sqrt_bc2 = sqrtf(bc2);
        moe__cpu_adamw_tensor(p + ti->offset, mom + ti->offset, var + ti->offset, g + ti->offset, ti->numel, clip,
                              c->beta1, c->beta2, c->adam_eps, 1.0f - tlr * wd, step_size, sqrt_bc2);
    }
}

void moe__cpu_bias_update(moe_model *m, const int64_t *loads, float rate) {
    int64_t off = 0;
    for (int i = 0; i < m->n_moe; i++) {
        const moe_layer_stats *st = &m->stats[i];
        if (st->bias) moe__router_bias_update(m->params + m->lo[st->layer].bias, loads + off, st->n_experts, rate);
        off += st->n_experts;
    }
}

/* ---------------------------------------------------------------- numerical faults */

int64_t moe__first_nonfinite(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

int moe__nonfinite_params(const moe_model *m, char *where, size_t n) {
    for (int i = 0; i < m->n_tensors; i++) { // a parameter: it came from an earlier update
        const moe_tensor_info *t = &m->tensors[i].info;
        int64_t k = moe__first_nonfinite(m->params + t->offset, t->numel);
        if (k >= 0) {
            snprintf(where, n, "parameter '%s' (layer %d), element %lld = %g", t->name, t->layer, (long long)k,
                     m->params[t->offset + k]);
            return MOE_NONFINITE_PARAM;
        }
    }
    return 0;
}

int moe__nonfinite_grads(const moe_model *m, char *where, size_t n) {
    if (!m->grads) return 0; // an inference model
    for (int i = m->n_tensors - 1; i >= 0; i--) { // gradients, in the order backward makes them
        const moe_tensor_info *t = &m->tensors[i].info;
        if (t->group == MOE_GROUP_BUFFER) continue;
        int64_t k = moe__first_nonfinite(m->grads + t->offset, t->numel);
        if (k >= 0) {
            snprintf(where, n, "gradient of '%s' (layer %d), element %lld = %g", t->name, t->layer, (long long)k,
                     m->grads[t->offset + k]);
            return MOE_NONFINITE_GRAD;
        }
    }
    return 0;
}

int moe__cpu_locate_nonfinite(const moe_model *m, char *where, size_t n) {
    const moe_config *c = &m->cfg;
    const moe__cpu *s = moe__cpu_of(m);
    int kind = moe__nonfinite_params(m, where, n);
    if (kind) return kind;
    int64_t NC = (int64_t)m->B * m->T * c->n_embd;
    for (int l = 0; l < c->n_layer && m->B > 0; l++) { // the forward, block by block
        if (!c->recompute && !m->lean && moe__first_nonfinite(s->la[l].resid_mid, NC) >= 0) {
            snprintf(where, n, "activations: the attention output of layer %d", l);
            return MOE_NONFINITE_ACT;
        }
        if (moe__first_nonfinite(s->resid[l + 1], NC) >= 0) {
            snprintf(where, n, "activations: the %s output of layer %d", m->moe_slot[l] >= 0 ? "MoE" : "FFN", l);
            return MOE_NONFINITE_ACT;
        }
    }
    if (m->B > 0 && moe__first_nonfinite(s->logits, (int64_t)m->B * m->T * c->vocab_size) >= 0) {
        snprintf(where, n, "activations: the logits (lm_head)");
        return MOE_NONFINITE_ACT;
    }
    return moe__nonfinite_grads(m, where, n);
}
