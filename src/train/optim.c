/*
 * optim.c — the optimizer phase of a training step: the learning-rate schedule (linear warmup,
 * then cosine decay to a floor), the gradients of the global batch (all-reduced across ranks),
 * and the step itself: the global gradient norm, then clipping and AdamW, both the backend's
 * (model/backend.h; the CPU kernels are in cpu/cpu_optim.c).
 */
#include "train/train.h"
#include "dist/dist.h"

#include <math.h>

float moe__lr_at(const moe_config *c, int64_t step) {
    // step is 0-based: the step about to be taken
    if (step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    double lo = (double)c->lr * c->min_lr_frac;
    int64_t span = c->steps - c->warmup_steps;
    double progress = span > 0 ? (double)(step - c->warmup_steps) / (double)span : 1.0;
    if (progress > 1.0) progress = 1.0;
    return (float)(lo + 0.5 * ((double)c->lr - lo) * (1.0 + cos(3.14159265358979323846 * progress)));
}

void moe__allreduce_grads(moe_model *m) {
    const moe__dist *g = moe__dist_get();
    if (g->size == 1) return;
    m->be->to_host(m, MOE_BUF_GRADS);
    float *grads = m->grads;
    if (g->ep == 1) {
        moe__dist_allreduce_f32(MOE_COMM_WORLD, grads, m->n_params);
    } else {
        for (int i = 0; i < m->n_tensors; i++) {
            const moe_tensor_info *ti = &m->tensors[i].info;
            if (ti->group == MOE_GROUP_BUFFER) continue;
            moe__dist_allreduce_f32(ti->group == MOE_GROUP_EXPERT ? MOE_COMM_DP : MOE_COMM_WORLD, grads + ti->offset,
                                    ti->numel);
        }
    }
    m->be->from_host(m, MOE_BUF_GRADS);
}

moe_status moe__optimizer_step(moe_model *m, int64_t step, float lr, const moe_config *c, float *grad_norm) {
    float norm = m->be->grad_norm(m);
    *grad_norm = norm;
    if (!isfinite(norm))
        return moe__err(MOE_STATUS_NUMERIC, "step %lld: gradient norm is not finite", (long long)step + 1);
    m->be->adamw(m, step, lr, c, norm);
    return MOE_STATUS_OK;
}
