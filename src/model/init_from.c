/*
 * init_from.c — starts a model from another one: same tensors copied, the experts of a layer
 * that the source has dense filled with copies of its FFN (sparse upcycling, Komatsuzaki et al.
 * 2022: "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints"), routers fresh.
 * With softmax top-K renormalised, an upcycled layer computes exactly the dense FFN at the
 * start (the K gate weights sum to 1 over identical experts), so training resumes from the
 * dense model's loss. Everything else must match; a difference is an error naming the tensor.
 */
#include "model/backend.h"

#include <string.h>

static int same_shape(const moe_tensor_info *a, const moe_tensor_info *b) {
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

static int find(const moe_tensor_info *const *src, int ns, const char *name) {
    for (int i = 0; i < ns; i++)
        if (!strcmp(src[i]->name, name)) return i;
    return -1;
}

/* The dense FFN matrix of the source's layer that expert tensor t (w1, w2 or w3) starts from. */
static int dense_source(const moe_tensor_info *const *src, int ns, const moe_tensor_info *t) {
    static const char *const proj[] = {"gate_proj", "down_proj", "up_proj"}; // w1, w2, w3
    const char *w = strstr(t->name, "experts.w");
    if (!w || t->layer < 0) return -1;
    int k = w[9] - '1';
    if (k < 0 || k > 2) return -1;
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.%s.weight", t->layer, proj[k]);
    return find(src, ns, name);
}

moe_status moe__init_plan(const moe_model *dst, const moe_tensor_info *const *src, int ns, int *plan, uint8_t *upcycle,
                          moe_init_report *report) {
    moe_init_report r = {0, 0, 0};
    int n = moe_model_n_tensors(dst);
    uint8_t *used = calloc((size_t)(ns ? ns : 1), 1);
    if (!used) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    moe_status st = MOE_STATUS_OK;
    char a[96], b[96];
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *t = moe_model_tensor(dst, i);
        int k = find(src, ns, t->name);
        plan[i] = -1;
        upcycle[i] = 0;
        if (k >= 0) {
            if (!same_shape(src[k], t)) {
                moe__shape_str(src[k]->shape, src[k]->ndim, a, sizeof a);
                moe__shape_str(t->shape, t->ndim, b, sizeof b);
                st = moe__err(MOE_STATUS_CONFIG, "init from a model: tensor '%s' is %s in the source but %s in this config",
                              t->name, a, b);
                break;
            }
            plan[i] = k;
            used[k] = 1;
            r.copied++;
        } else if (t->group == MOE_GROUP_EXPERT && (k = dense_source(src, ns, t)) >= 0) {
            const moe_tensor_info *s = src[k];
            if (s->ndim != 2 || s->shape[0] != t->shape[1] || s->shape[1] != t->shape[2]) {
                moe__shape_str(s->shape, s->ndim, a, sizeof a);
                st = moe__err(MOE_STATUS_CONFIG,
                              "upcycling layer %d: the dense FFN '%s' is %s but each expert is [%lld, %lld]; set "
                              "expert_hidden to the source's ffn_hidden (%lld)",
                              t->layer, s->name, a, (long long)t->shape[1], (long long)t->shape[2],
                              (long long)(strstr(t->name, "experts.w2") ? s->shape[1] : s->shape[0]));
                break;
            }
            plan[i] = k;
            upcycle[i] = 1;
            used[k] = 1;
            if (strstr(t->name, "experts.w1")) r.upcycled++;
        } else if (t->group == MOE_GROUP_ROUTER || t->group == MOE_GROUP_BUFFER) {
            r.fresh++; // a new router starts from its initialisation
        } else {
            st = moe__err(MOE_STATUS_CONFIG,
                          "init from a model: tensor '%s' of this config has no counterpart in the source (only "
                          "routers start fresh, and experts from a dense FFN)",
                          t->name);
        }
    }
    for (int i = 0; i < ns && st == MOE_STATUS_OK; i++)
        if (!used[i])
            st = moe__err(MOE_STATUS_CONFIG, "init from a model: the source's tensor '%s' has no place in this config",
                          src[i]->name);
    free(used);
    if (st == MOE_STATUS_OK && report) *report = r;
    return st;
}

moe_status moe_model_init_from(moe_model *dst, const moe_model *src, moe_init_report *report) {
    int n = moe_model_n_tensors(dst), ns = moe_model_n_tensors(src);
    int dst_ep, dst_rank, src_ep, src_rank;
    moe__model_ep(dst, &dst_ep, &dst_rank);
    moe__model_ep(src, &src_ep, &src_rank);
    if (dst_ep != src_ep || dst_rank != src_rank) // made under different moe_dist_setup calls
        return moe__err(MOE_STATUS_ARG,
                        "init from a model: the source was created with expert parallelism ep=%d (rank %d) but this "
                        "model with ep=%d (rank %d); create both under the same moe_dist_setup",
                        src_ep, src_rank, dst_ep, dst_rank);
    if (moe_model_config(dst)->vocab_size != moe_model_config(src)->vocab_size)
        return moe__err(MOE_STATUS_CONFIG, "init from a model: vocab_size %d differs from the source's %d",
                        moe_model_config(dst)->vocab_size, moe_model_config(src)->vocab_size);
    const moe_tensor_info **infos = malloc((size_t)(ns ? ns : 1) * sizeof *infos);
    int *plan = malloc((size_t)(n ? n : 1) * sizeof *plan);
    uint8_t *up = malloc((size_t)(n ? n : 1));
    moe_status st = infos && plan && up ? MOE_STATUS_OK : moe__err(MOE_STATUS_NOMEM, "out of memory");
    for (int i = 0; i < ns && st == MOE_STATUS_OK; i++) infos[i] = moe_model_tensor(src, i);
    if (st == MOE_STATUS_OK) st = moe__init_plan(dst, infos, ns, plan, up, report);
    if (st == MOE_STATUS_OK && src->be->to_host((moe_model *)src, MOE_BUF_PARAMS) != MOE_STATUS_OK)
        st = moe__err(MOE_STATUS_DEVICE, "init from a model: %s", moe_last_error());
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        if (plan[i] < 0) continue; // fresh: dst keeps its initialisation
        const moe_tensor_info *t = moe_model_tensor(dst, i), *s = infos[plan[i]];
        for (int64_t e = 0; e < (up[i] ? t->shape[0] : 1); e++)
            memcpy(dst->params + t->offset + e * s->numel, src->params + s->offset, (size_t)s->numel * sizeof(float));
    }
    if (st == MOE_STATUS_OK) st = dst->be->from_host(dst, MOE_BUF_PARAMS);
    free(infos);
    free(plan);
    free(up);
    return st;
}
