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

#endif
