/*
 * cuda_backend.h — the CUDA backend's own state (cuda/): the device buffers of one memory plan,
 * allocated once at create (and the AdamW moments at optimizer_create), the cuBLAS handle, and
 * the small host buffers a step reads back. Not installed.
 *
 *   cuda_backend.c  the ops table, the memory plan and its fit check, create and free, the copies
 *                   between the device and the host views, the optimizer side
 *   cuda_model.c    the forward and backward passes, block by block, and the MoE layer
 *
 * The activations use the CPU's plan (moe__cpu_plan) with device addresses: the same views,
 * the same sizes, one layout for both backends. `act` is the first member, so moe__cpu_of(m) is
 * the layout on either backend.
 *
 * Every routing method, jitter, recompute and per-layer expert counts run here as on the CPU;
 * only several MPI ranks are refused (moe_device_select).
 *
 * Precision (--dtype): bf16 rounds the inputs of every dense and expert product to bf16 and
 * accumulates in fp32 (gemm.cu); the router's product, attention, norms, the loss and AdamW stay
 * fp32, with fp32 master weights and moments. fp32 computes everything in fp32 without TF32.
 */
#ifndef MOE_CUDA_BACKEND_H
#define MOE_CUDA_BACKEND_H

#include "cpu/cpu.h"
#include "cuda/cuda.h"

/* Bytes of each part of the plan (host arithmetic only: it runs without a GPU). */
typedef struct {
    size_t params, grads, opt, acts, dispatch, bf16, workspace, small;
    size_t reserve;               /* not allocated: left free for what cuBLAS and CUB allocate */
    size_t total;
} moe__cuda_plan_bytes;

typedef struct {
    moe__cpu act;                 /* first: the activation views (device addresses) */
    int bf16, index;
    moe__cuda_blas *blas;
    moe__cuda_prof *prof;         /* phase timing by events (cuda_model.c marks, collects at syncs) */
    float *p, *g, *opt;           /* device: parameters, gradients (one allocation), AdamW moments */
    char *arena;                  /* device: activations, dispatch scratch, bf16 scratch, workspace, scalars */
    void *dispatch, *bf16s, *workspace;
    size_t dispatch_bytes, bf16_bytes;
    float *scal;                  /* device: the cross-entropy, then MOE_CUDA_LAYER_LOSSES per MoE layer */
    double *sumsq, *sumsq_scratch;/* device: the gradient's sums of squares (replicated, experts) */
    float *h_scal;                /* host copy of scal */
    int64_t *h_counts;            /* host: per MoE layer, offsets (E+1) then load (E) of its last dispatch */
    float *h_logits;              /* host copy of the logits, made on the first moe_model_logits */
    moe_status err;               /* the first error of an op that cannot return one (sticky) */
} moe__cuda;

/* Losses of each MoE layer in the step's scalars: z, aux, seq_aux, importance, load. */
#define MOE_CUDA_LAYER_LOSSES 5

static inline moe__cuda *moe__cuda_of(const moe_model *m) { return (moe__cuda *)m->be_state; }

/* The plan's sizes for model m (built with its tensor table) with dispatch_bytes of CUB scratch
 * (moe__cuda_dispatch_scratch), in bf16 or fp32, with or without the AdamW moments. */
moe_status moe__cuda_plan_size(moe_model *m, size_t dispatch_bytes, int bf16, int training, moe__cuda_plan_bytes *out);
/* MOE_STATUS_NOMEM naming the bytes needed, by part, and the bytes free when the plan does not fit. */
moe_status moe__cuda_plan_fits(const moe__cuda_plan_bytes *b, size_t free_bytes, int index);

moe_status moe__cuda_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                             moe_losses *out);
moe_status moe__cuda_backward(moe_model *m, float grad_scale);

#endif
