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

/* Index of src's tensor named like t, or -1. */
static int find_index(const moe_model *src, const char *name) {
    for (int i = 0; i < moe_model_n_tensors(src); i++)
        if (!strcmp(moe_model_tensor(src, i)->name, name)) return i;
    return -1;
}

static int same_shape(const moe_tensor_info *a, const moe_tensor_info *b) {
    if (a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return 1;
}

/* The dense FFN matrix of src's layer l that expert tensor t (w1, w2 or w3) starts from. */
static const moe_tensor_info *dense_source(const moe_model *src, const moe_tensor_info *t) {
    static const char *const proj[] = {"gate_proj", "down_proj", "up_proj"}; // w1, w2, w3
    const char *w = strstr(t->name, "experts.w");
    if (!w || t->layer < 0) return NULL;
    int k = w[9] - '1';
    if (k < 0 || k > 2) return NULL;
    char name[256];
    snprintf(name, sizeof name, "model.layers.%d.mlp.%s.weight", t->layer, proj[k]);
    return moe_model_find(src, name);
}

moe_status moe_model_init_from(moe_model *dst, const moe_model *src, moe_init_report *report) {
    moe_init_report r = {0, 0, 0};
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
    uint8_t *used = calloc((size_t)(ns ? ns : 1), 1);
    if (!used) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    if (src->be->to_host((moe_model *)src, MOE_BUF_PARAMS) != MOE_STATUS_OK) {
        free(used);
        return moe__err(MOE_STATUS_DEVICE, "init from a model: %s", moe_last_error());
    }
    float *dp = dst->params;
    const float *sp = src->params;
    moe_status st = MOE_STATUS_OK;
    char a[96], b[96];
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *t = moe_model_tensor(dst, i);
        const moe_tensor_info *s = moe_model_find(src, t->name);
        if (s) {
            if (!same_shape(s, t)) {
                moe__shape_str(s->shape, s->ndim, a, sizeof a);
                moe__shape_str(t->shape, t->ndim, b, sizeof b);
                st = moe__err(MOE_STATUS_CONFIG, "init from a model: tensor '%s' is %s in the source but %s in this config",
                              t->name, a, b);
                break;
            }
            memcpy(dp + t->offset, sp + s->offset, (size_t)t->numel * sizeof(float));
            used[find_index(src, s->name)] = 1;
            r.copied++;
        } else if (t->group == MOE_GROUP_EXPERT && (s = dense_source(src, t))) {
            if (s->ndim != 2 || s->shape[0] != t->shape[1] || s->shape[1] != t->shape[2]) {
                moe__shape_str(s->shape, s->ndim, a, sizeof a);
                st = moe__err(MOE_STATUS_CONFIG,
                              "upcycling layer %d: the dense FFN '%s' is %s but each expert is [%lld, %lld]; set "
                              "expert_hidden to the source's ffn_hidden (%d)",
                              t->layer, s->name, a, (long long)t->shape[1], (long long)t->shape[2],
                              moe_model_config(src)->ffn_hidden);
                break;
            }
            for (int64_t e = 0; e < t->shape[0]; e++)
                memcpy(dp + t->offset + e * s->numel, sp + s->offset, (size_t)s->numel * sizeof(float));
            used[find_index(src, s->name)] = 1;
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
                          moe_model_tensor(src, i)->name);
    free(used);
    if (st == MOE_STATUS_OK) st = dst->be->from_host(dst, MOE_BUF_PARAMS);
    if (st == MOE_STATUS_OK && report) *report = r;
    return st;
}
