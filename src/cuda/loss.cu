/*
 * loss.cu — fused cross-entropy on the GPU, mirroring moe__crossentropy (nn/layers.c): per row
 * n, row_loss_n = logsumexp(logits_n) - logits_n[target_n]; dlogits (when not NULL) =
 * scale * (softmax - onehot) / N, overwritten; *loss (a device float) = the mean of row_loss.
 *
 * Numerics: fp32 per row (max and sum as block tree reductions; the CPU goes left to right);
 * the mean is summed in double in a fixed order (one block, a fixed tree), so the same inputs
 * give the same loss on every run.
 */
#include "cuda/common.cuh"

#define CE_THREADS 256

static __global__ void crossentropy_kernel(float *dlogits, float *row_loss, const float *logits, const int *targets,
                                           int64_t N, int V, float scale) {
    __shared__ float shared[CE_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *l = logits + n * V;
        float m = -INFINITY;
        for (int i = threadIdx.x; i < V; i += CE_THREADS) m = fmaxf(m, l[i]);
        shared[threadIdx.x] = m;
        __syncthreads();
        for (int s = CE_THREADS / 2; s > 0; s >>= 1) {
            if ((int)threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
            __syncthreads();
        }
        float maxv = shared[0];
        __syncthreads();
        float sum = 0.0f;
        for (int i = threadIdx.x; i < V; i += CE_THREADS) sum += expf(l[i] - maxv);
        shared[threadIdx.x] = sum;
        __syncthreads();
        for (int s = CE_THREADS / 2; s > 0; s >>= 1) {
            if ((int)threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
            __syncthreads();
        }
        float lse = maxv + logf(shared[0]);
        __syncthreads();
        int tgt = targets[n];
        if (threadIdx.x == 0) row_loss[n] = lse - l[tgt];
        if (dlogits) {
            float k = scale / (float)N, *d = dlogits + n * V;
            for (int i = threadIdx.x; i < V; i += CE_THREADS) d[i] = expf(l[i] - lse) * k - (i == tgt ? k : 0.0f);
        }
    }
}

extern "C" moe_status moe__cuda_crossentropy(float *loss, float *dlogits, float *row_loss, const float *logits,
                                             const int *targets, int64_t N, int V, float scale) {
    crossentropy_kernel<<<moe__cuda_blocks(N, 1), CE_THREADS>>>(dlogits, row_loss, logits, targets, N, V, scale);
    moe_status st = MOE_CUDA_LAUNCHED("crossentropy");
    if (st != MOE_STATUS_OK) return st;
    moe__mean_kernel<false><<<1, MOE_MEAN_THREADS>>>(loss, row_loss, N);
    return MOE_CUDA_LAUNCHED("crossentropy (mean)");
}
