/*
 * adamw.cu — the optimizer's kernels on the GPU, mirroring cpu/cpu_optim.c:
 *
 *   sumsq   the sum of squares of a gradient tensor, added to a device double (the global
 *           norm is the square root of its sum over the tensors);
 *   adamw   one AdamW update of a tensor, the CPU loop's arithmetic per element:
 *           g = grad * clip; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 *           p = p * decay - step_size * m / (sqrt(v) / sqrt_bc2 + eps)
 *           with decay = 1 - lr * wd and step_size = lr / bc1 computed by the caller per tensor.
 *
 * Numerics: fp32 master weights and moments, as on the CPU (elementwise: the same results up
 * to the compiler's fma contraction). sumsq accumulates in double over a fixed grid and a fixed
 * tree, so it does not change from run to run; its order differs from the CPU's chunks.
 */
#include "cuda/common.cuh"

#define SUMSQ_BLOCKS 256
#define SUMSQ_THREADS 256

static __global__ void sumsq_partial_kernel(double *partial, const float *g, int64_t n) {
    __shared__ double shared[SUMSQ_THREADS];
    double acc = 0.0;
    for (int64_t i = blockIdx.x * (int64_t)SUMSQ_THREADS + threadIdx.x; i < n; i += (int64_t)SUMSQ_BLOCKS * SUMSQ_THREADS)
        acc += (double)g[i] * g[i];
    shared[threadIdx.x] = acc;
    __syncthreads();
    for (int s = SUMSQ_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

static __global__ void sumsq_total_kernel(double *out, const double *partial) {
    __shared__ double shared[SUMSQ_BLOCKS];
    shared[threadIdx.x] = partial[threadIdx.x];
    __syncthreads();
    for (int s = SUMSQ_BLOCKS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out += shared[0];
}

extern "C" size_t moe__cuda_sumsq_scratch(void) { return SUMSQ_BLOCKS * sizeof(double); }

extern "C" moe_status moe__cuda_sumsq(double *out, double *scratch, const float *g, int64_t n) {
    sumsq_partial_kernel<<<SUMSQ_BLOCKS, SUMSQ_THREADS>>>(scratch, g, n);
    moe_status st = MOE_CUDA_LAUNCHED("sumsq");
    if (st != MOE_STATUS_OK) return st;
    sumsq_total_kernel<<<1, SUMSQ_BLOCKS>>>(out, scratch);
    return MOE_CUDA_LAUNCHED("sumsq (total)");
}

static __global__ void adamw_kernel(float *p, float *m, float *v, const float *g, int64_t n, float clip, float b1,
                                    float b2, float eps, float decay, float step_size, float sqrt_bc2) {
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < n; j += (int64_t)gridDim.x * blockDim.x) {
        float gj = g[j] * clip;
        float mo = b1 * m[j] + (1.0f - b1) * gj, va = b2 * v[j] + (1.0f - b2) * gj * gj;
        m[j] = mo;
        v[j] = va;
        p[j] = p[j] * decay - step_size * mo / (sqrtf(va) / sqrt_bc2 + eps);
    }
}

extern "C" moe_status moe__cuda_adamw(float *p, float *m, float *v, const float *g, int64_t n, float clip, float b1,
                                      float b2, float eps, float decay, float step_size, float sqrt_bc2) {
    adamw_kernel<<<moe__cuda_blocks(n, 256), 256>>>(p, m, v, g, n, clip, b1, b2, eps, decay, step_size, sqrt_bc2);
    return MOE_CUDA_LAUNCHED("adamw");
}
