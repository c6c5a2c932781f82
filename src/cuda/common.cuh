/*
 * common.cuh — what every CUDA file of the backend shares: the status of a failed CUDA call
 * (never an exit), and the grid of a one-thread-per-element launch. Not installed.
 */
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH

#include "cuda/cuda.h"

#include <cuda_runtime.h>
#include <stdint.h>

// core.h is C11 (_Noreturn); its error reporter is all the CUDA files need of it
extern "C" moe_status moe__err(moe_status s, const char *fmt, ...);

/* The status of the last launch or call: MOE_STATUS_OK, or an error naming what and where. */
static inline moe_status moe__cuda_status(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return MOE_STATUS_OK;
    return moe__err(MOE_STATUS_DEVICE, "CUDA: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}
/* After a kernel launch: launch errors (bad configuration) now, execution errors at the next sync. */
#define MOE_CUDA_LAUNCHED(what) moe__cuda_status(cudaGetLastError(), what)

static inline unsigned moe__cuda_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    return (unsigned)(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16); // kernels stride over the rest
}

/* *out = mean of x (or of x^2 with square) over n values, summed in double by one block of
 * MOE_MEAN_THREADS threads in a fixed order: the same inputs give the same value every run.
 * Launch with <<<1, MOE_MEAN_THREADS>>>. */
#define MOE_MEAN_THREADS 256
template <bool square> static __global__ void moe__mean_kernel(float *out, const float *x, int64_t n) {
    __shared__ double shared[MOE_MEAN_THREADS];
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += MOE_MEAN_THREADS) acc += square ? (double)x[i] * x[i] : (double)x[i];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = MOE_MEAN_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = (float)(shared[0] / (double)n);
}

/* ---------------------------------------------------------------- shared by the MoE-layer files */

// The row markers of moe/moe_layer.h, which includes the C11-only core.h: keep them equal
// (test_cuda_moe compares row_of with the CPU's, markers included).
#define MOE_ROW_DROPPED (-1)
#define MOE_ROW_UNROUTED (-2)

#define MOE_THREADS 256
#define MOE_WARP 32

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
// one warp an item: the loop is uniform over the warp, so shuffles inside it are safe
#define WARP_STRIDE(i, n)                                                                      \
    for (int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / MOE_WARP; i < (n);       \
         i += (int64_t)gridDim.x * (blockDim.x / MOE_WARP))

#define MOE_TRY(expr)                                                                              \
    do {                                                                                       \
        moe_status st_ = (expr);                                                               \
        if (st_ != MOE_STATUS_OK) return st_;                                                  \
    } while (0)

/* Sum over the warp by a butterfly: every lane ends with the same bits, in the same order. */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = MOE_WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---------------------------------------------------------------- shared by router.cu and router_noisy.cu */

/* as router.c's softplus and sigmoidf_ (the device's expf, log1pf: within 2 ulps of glibc's) */
static __device__ __forceinline__ float router_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static __device__ __forceinline__ float router_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* z = mean_n lse_n^2: dz / dlogit_ne = 2 lse_n softmax(logits_n)_e / N, added to the entries
 * e = lane, lane + 32, ... of token n's dl (its logits l, its logsumexp lse) */
static __device__ __forceinline__ void router_z_grad(float *dl, const float *l, float lse, float z_s, int64_t N,
                                                     int E, int lane) {
    float zc = z_s * 2.0f * lse / (float)N;
    for (int e = lane; e < E; e += MOE_WARP) dl[e] += zc * expf(l[e] - lse);
}

/* router_noisy.cu, for router.cu's launchers (dimensions checked there). Noisy top-K's
 * importance and smooth load: imp, loadest (E) and loss[0], loss[1] their CV^2. */
moe_status moe__cuda_noisy_losses(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *loss);
/* noisy_token_backward and the z-loss for every token: dlogits and dnoise (N,E); gvec (2E) gets
 * the importance and load gradients, scaled. */
moe_status moe__cuda_noisy_backward(const moe__cuda_route_dims *d, const moe__cuda_route *r,
                                    const moe__cuda_loss_scales *ls, float *dlogits, float *dnoise, float *gvec,
                                    const float *dgate);

#endif
