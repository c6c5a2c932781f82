/*
 * cuda.h — the C side of the CUDA code (cuda/), callable from the C library. Built only with
 * MOE_HAVE_CUDA (CMake option MOE_CUDA); functions here never exit and turn every CUDA error
 * into a status with its message. Not installed.
 */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H

#include "moe.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Checks that CUDA device `index` can be used: the driver answers, the device exists. On
 * success, name (n bytes) gets its name and compute capability and *free_bytes, *total_bytes
 * its memory. */
moe_status moe__cuda_device_check(int index, char *name, size_t n, size_t *free_bytes, size_t *total_bytes);

/* Device memory and copies for the backend and the tests: every call checked. */
moe_status moe__cuda_malloc(void **p, size_t bytes);
void moe__cuda_free(void *p);
moe_status moe__cuda_to_device(void *dst, const void *src, size_t bytes);
moe_status moe__cuda_to_host(void *dst, const void *src, size_t bytes);
moe_status moe__cuda_memset(void *p, int v, size_t bytes);
/* Waits for the work queued so far; reports an error a kernel met. */
moe_status moe__cuda_sync(void);

/* ---------------------------------------------------------------- kernels
 * Launchers of the kernels, each mirroring the CPU function of the same name (nn/nn.h,
 * cpu/cpu_optim.c) on device pointers; they queue work and return launch errors. */

/* layers.cu */
moe_status moe__cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int C,
                                     float eps);
moe_status moe__cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                      const float *rstd, int64_t N, int C);
moe_status moe__cuda_swiglu_forward(float *act, const float *h1, const float *h3, int64_t n);
moe_status moe__cuda_swiglu_backward(float *dh1, float *dh3, const float *dact, const float *h1, const float *h3,
                                     int64_t n);
/* x (N,C) = wte[tokens]; gwte (V,C) += the rows of dx at their tokens (the CPU's order) */
moe_status moe__cuda_embedding_forward(float *x, const float *wte, const int *tokens, int64_t N, int C);
moe_status moe__cuda_embedding_backward(float *gwte, const float *dx, const int *tokens, int64_t N, int C);
/* tables cos_t, sin_t (T, D/2) as moe__rope_tables makes them (host), copied to the device */
moe_status moe__cuda_rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H);
moe_status moe__cuda_rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int C, int H);
/* router.cu: the topk path of moe__router_forward from the logits (N,E) on: lse (N), scores and
 * probs (N,E), sel, gate, row_of (N,K); *z (device) the z-loss; bias (E) may be NULL. */
moe_status moe__cuda_router_topk(float *z, float *lse, float *scores, float *probs, int *sel, float *gate, int *row_of,
                                 const float *logits, const float *bias, int64_t N, int E, int K, int sigmoid,
                                 int norm_topk, float route_scale);
/* loss.cu: *loss (device) gets the mean cross-entropy; dlogits may be NULL. */
moe_status moe__cuda_crossentropy(float *loss, float *dlogits, float *row_loss, const float *logits, const int *targets,
                                  int64_t N, int V, float scale);
/* adamw.cu: *out (device) += sum of g^2; scratch holds moe__cuda_sumsq_scratch() bytes. */
size_t moe__cuda_sumsq_scratch(void);
moe_status moe__cuda_sumsq(double *out, double *scratch, const float *g, int64_t n);
moe_status moe__cuda_adamw(float *p, float *m, float *v, const float *g, int64_t n, float clip, float b1, float b2,
                           float eps, float decay, float step_size, float sqrt_bc2);

/* gemm.cu: products through cuBLAS (opened with dlopen at create), the shapes and accumulation
 * of moe__matmul_forward/_backward; bf16 != 0 rounds both inputs to bf16 (fp32 accumulate) in
 * the scratch given at create, which must hold the two inputs of the largest product. */
typedef struct moe__cuda_blas moe__cuda_blas;
#define MOE_CUDA_BF16_ALIGN 64 /* elements: the second input in the scratch starts on 128 bytes */
size_t moe__cuda_blas_workspace_bytes(void);
moe_status moe__cuda_blas_create(moe__cuda_blas **out, void *workspace, size_t workspace_bytes, void *bf16_scratch,
                                 size_t scratch_bytes);
void moe__cuda_blas_free(moe__cuda_blas *b);
moe_status moe__cuda_matmul_forward(moe__cuda_blas *b, int bf16, float *out, const float *x, const float *w, int64_t N,
                                    int I, int O, int accumulate);
moe_status moe__cuda_matmul_backward(moe__cuda_blas *b, int bf16, float *dx, float *dw, const float *dout,
                                     const float *x, const float *w, int64_t N, int I, int O);
/* cuda_device.cu: phase timing by CUDA events. mark: the work queued since the previous mark
 * belongs to phase (a moe_phase; -1 starts a chain, counting nothing); collect (after a sync, or
 * waiting for the last mark): adds each interval's seconds to prof[phase] and starts over. */
typedef struct moe__cuda_prof moe__cuda_prof;
moe_status moe__cuda_prof_create(moe__cuda_prof **p, int capacity);
void moe__cuda_prof_free(moe__cuda_prof *p);
void moe__cuda_prof_mark(moe__cuda_prof *p, int phase);
void moe__cuda_prof_collect(moe__cuda_prof *p, double *prof);
/* The inputs of a product as the mode computes them: x and y themselves (fp32), or their bf16
 * roundings in the scratch (y's aligned); nx + ny must fit the scratch. */
moe_status moe__cuda_stage(moe__cuda_blas *b, int bf16, const float *x, int64_t nx, const float *y, int64_t ny,
                           const void **xo, const void **yo);
/* C_i = alpha op(A_i) op(B_i) + beta C_i, i < batch, cuBLAS's column-major conventions, on staged
 * operands (fp32, or bf16 from moe__cuda_stage), fp32 accumulation and result; ta, tb: transpose. */
moe_status moe__cuda_gemm_batched(moe__cuda_blas *b, int bf16, int ta, int tb, int m, int n, int k, float alpha,
                                  const void *A, int lda, long long sA, const void *B, int ldb, long long sB, float beta,
                                  float *C, int ldc, long long sC, int batch);
/* attention.cu: as moe__attention_forward/_backward (att (B,H,T,T) saved; dq, dk, dv accumulate),
 * the products through cuBLAS in the mode's precision */
moe_status moe__cuda_attention_forward(moe__cuda_blas *b, int bf16, float *out, float *att, const float *q,
                                       const float *k, const float *v, int B, int T, int C, int H);
moe_status moe__cuda_attention_backward(moe__cuda_blas *b, int bf16, float *dq, float *dk, float *dv, float *datt,
                                        const float *dout, const float *q, const float *k, const float *v,
                                        const float *att, int B, int T, int C, int H);
/* layers.cu: out = a + b (n floats; out may be a or b) */
moe_status moe__cuda_add(float *out, const float *a, const float *b, int64_t n);
/* cuda_device.cu: device-to-device copy, queued */
moe_status moe__cuda_copy(void *dst, const void *src, size_t bytes);

/* moe.cu: the MoE layer around the experts, for token-choice top-K (K slots a token).
 *
 * Dispatch mirrors moe__dispatch: the N*K assignments (row_of 0 from router_topk = routed) are
 * sorted by expert with CUB (stable radix sort: token order within an expert); load (E) gets the
 * routed assignments per expert; with cap > 0 an expert keeps its first cap assignments in token
 * order (probability = 0) or its cap highest-scoring ones (probability = 1, ties to the lower
 * token; kept ones stay in token order); row_of gets each kept assignment's row or
 * MOE_ROW_DROPPED, row_token (N*K) each row's token, offsets (E+1) each expert's first row.
 * scratch holds the bytes moe__cuda_dispatch_scratch gives for (A = N*K, E). */
moe_status moe__cuda_dispatch_scratch(size_t *bytes, int64_t A, int E);
moe_status moe__cuda_dispatch(int *row_of, int *row_token, int64_t *offsets, int64_t *load, void *scratch,
                              size_t scratch_bytes, const int *sel, const float *scores, int64_t N, int E, int K,
                              int cap, int probability);
/* xe (R,C): row r = x[row_token[r]] */
moe_status moe__cuda_gather_rows(float *xe, const float *x, const int *row_token, int64_t R, int C);
/* y (N,C) = sum over token n's kept slots, in slot order, of gate * ye[row] (overwrites y) */
moe_status moe__cuda_combine(float *y, const float *ye, const float *gate, const int *row_of, int64_t N, int K, int C);
/* its backward: dye[row] = gate * dy_n; dgate (N,K) = dy_n . ye[row] (0 where not kept) */
moe_status moe__cuda_combine_backward(float *dye, float *dgate, const float *dy, const float *ye, const float *gate,
                                      const int *row_of, int64_t N, int K, int C);
/* dx (N,C) += sum over token n's kept slots, in slot order, of dxe[row] */
moe_status moe__cuda_scatter_add(float *dx, const float *dxe, const int *row_of, int64_t N, int K, int C);
/* as moe__router_losses for top-K: f (E), seq_f (N/T, E); *aux and *seq_aux (device floats) */
moe_status moe__cuda_router_losses(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load,
                                   const float *probs, const int *sel, int64_t N, int T, int E, int K);
/* as moe__router_backward's per-token part for top-K (clean_token_backward and the z-loss):
 * dlogits (N,E) from dgate (N,K); aux_s, seq_s, z_s are the loss scales (moe__moe_loss_scales) */
moe_status moe__cuda_router_backward(float *dlogits, const float *dgate, const float *logits, const float *lse,
                                     const float *scores, const float *probs, const int *sel, const float *f,
                                     const float *seq_f, int64_t N, int T, int E, int K, int sigmoid, int norm_topk,
                                     float route_scale, float aux_s, float seq_s, float z_s);

/* ---------------------------------------------------------------- every routing method
 * (issue 16) The router of one MoE layer for every routing method of moe__router_forward, on
 * device pointers: the fields of its moe__moe_cache that routing uses, and its dimensions. */
typedef struct {
    float *xr, *jit;                      /* (N,C) input jitter only: the router input and the multipliers */
    float *logits, *scores, *probs;       /* (N,E) */
    float *noise_raw, *noise_eps, *noisy; /* (N,E) noisy top-K only: x Wn^T, the N(0,1) draws, H */
    float *lse;                           /* (N) */
    int *sel;                             /* (N,slots) */
    float *gate;                          /* (N,slots) */
    int *row_of;                          /* (N,slots) */
    int64_t *load;                        /* (E) routed assignments per expert (from dispatch) */
    float *f, *seq_f, *imp, *loadest;     /* (E), (N/T,E), (E), (E) */
} moe__cuda_route;

typedef struct {
    int64_t N;
    int T, C, E, K, slots;      /* slots: K for (noisy) top-K, E for expert choice and soft */
    int routing;                /* the effective moe_routing (moe__moe_effective_routing) */
    int sigmoid, norm_topk, random_routing, training;
    float route_scale, jitter_eps;
    uint64_t noise_seed;        /* moe__moe_dims.noise_seed: the same draws as the CPU's */
} moe__cuda_route_dims;

/* d (total) / d (each loss of the layer), already divided by the number of MoE layers */
typedef struct {
    float aux, z, seq_aux, importance, load;
} moe__cuda_loss_scales;

/* router.cu. Jitter (training, jitter_eps > 0): xr = x * jit, jit = 1 - eps + 2 eps U with U the
 * CPU's moe__hash_uniform draws; its backward dx (N,C) += dxr * jit. */
moe_status moe__cuda_jitter(const moe__cuda_route_dims *d, const moe__cuda_route *r, const float *x);
moe_status moe__cuda_jitter_backward(float *dx, const float *dxr, const float *jit, int64_t n);
/* From the logits (and noise_raw for noisy top-K) on: lse, scores, probs, sel, gate, row_of (0
 * routed, MOE_ROW_UNROUTED for GShard's dropped 2nd expert), noise_eps and noisy (noisy top-K),
 * and *z (device) the z-loss; bias (E) may be NULL. Expert choice and soft: a slot per expert. */
moe_status moe__cuda_router_forward(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *z, const float *bias);
/* After dispatch (load, row_of final): f, seq_f (unrouted slots not counted), imp and loadest
 * (noisy top-K), and out (device) = {aux, seq_aux, importance, load} as moe__router_losses and
 * the noisy part of moe__router_forward compute them (importance and load 0 unless noisy). */
moe_status moe__cuda_router_losses_all(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *out);
/* As moe__router_backward from dgate (N,slots) to dlogits (N,E) and, for noisy top-K, dnoise (N,E);
 * gvec (2E) scratch. The products back to the input (and jitter) are the caller's. */
moe_status moe__cuda_router_backward_all(const moe__cuda_route_dims *d, const moe__cuda_route *r,
                                         const moe__cuda_loss_scales *ls, float *dlogits, float *dnoise, float *gvec,
                                         const float *dgate);

/* dispatch.cu, expert choice (moe__dispatch's expert-choice path): each expert takes its cap
 * highest-scoring tokens (scores (N,E); ties to the lower token), rows expert by expert in token
 * order; row_of (N,E) gets the row or MOE_ROW_UNROUTED, row_token (E*cap), offsets (E+1) = e*cap,
 * load (E) = cap. scratch: moe__cuda_dispatch_ec_scratch bytes for (N, E). */
moe_status moe__cuda_dispatch_ec_scratch(size_t *bytes, int64_t N, int E);
moe_status moe__cuda_dispatch_ec(int *row_of, int *row_token, int64_t *offsets, int64_t *load, void *scratch,
                                 size_t scratch_bytes, const float *scores, int64_t N, int E, int cap);

#ifdef __cplusplus
}
#endif

#endif
