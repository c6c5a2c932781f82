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
/* attention.cu: as moe__attention_forward/_backward (att (B,H,T,T) saved; dq, dk, dv accumulate) */
moe_status moe__cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                       int T, int C, int H);
moe_status moe__cuda_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                                        const float *k, const float *v, const float *att, int B, int T, int C, int H);
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

#ifdef __cplusplus
}
#endif

#endif
