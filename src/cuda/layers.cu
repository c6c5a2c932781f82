/*
 * layers.cu — the dense layers on the GPU, each mirroring its CPU function in nn/layers.c with
 * the same arguments (device pointers) and the same accumulation rules:
 *
 *   RMSNorm  y = x / sqrt(mean(x^2) + eps) * w; backward: dx and dw accumulate (+=)
 *   SwiGLU   act = silu(h1) * h3; backward: dh1, dh3 overwritten
 *   Embedding  x_n = wte[token_n]; backward: gwte[token_n] += dx_n, summed over n in token
 *            order per channel (one thread a channel, as the CPU), so the sums are the CPU's
 *   RoPE     in place on (B,T,C), H heads, pairs (i, i + D/2) rotated by t * inv_freq_i;
 *            backward rotates by the opposite angle (the transpose)
 *
 * Numerics: fp32 throughout. A row's sum of squares is a tree reduction over the block's
 * threads (the CPU sums left to right), so results agree to rounding, not bit for bit; dw sums
 * over the rows in row order, one thread per channel, as the CPU does.
 */
#include "cuda/common.cuh"

#define ROW_THREADS 256

/* Sum of v over the block (blockDim.x = ROW_THREADS); every thread gets it. */
static __device__ float block_sum(float v, float *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = ROW_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

static __global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *x, const float *w, int64_t N, int C,
                                              float eps) {
    __shared__ float shared[ROW_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xn = x + n * C;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < C; i += ROW_THREADS) ss += xn[i] * xn[i];
        float r = 1.0f / sqrtf(block_sum(ss, shared) / (float)C + eps);
        if (threadIdx.x == 0) rstd[n] = r;
        for (int i = threadIdx.x; i < C; i += ROW_THREADS) out[n * C + i] = xn[i] * r * w[i];
    }
}

static __global__ void rmsnorm_backward_dx_kernel(float *dx, const float *dout, const float *x, const float *w,
                                                  const float *rstd, int64_t N, int C) {
    __shared__ float shared[ROW_THREADS];
    for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *xn = x + n * C, *dn = dout + n * C;
        float r = rstd[n], dot = 0.0f; // sum_i dout_i w_i x_i
        for (int i = threadIdx.x; i < C; i += ROW_THREADS) dot += dn[i] * w[i] * xn[i];
        float k = r * r * r * block_sum(dot, shared) / (float)C;
        for (int i = threadIdx.x; i < C; i += ROW_THREADS) dx[n * C + i] += dn[i] * w[i] * r - k * xn[i];
    }
}

static __global__ void rmsnorm_backward_dw_kernel(float *dw, const float *dout, const float *x, const float *rstd,
                                                  int64_t N, int C) {
    // dw_i = sum_n dout_ni x_ni r_n, rows in order (as the CPU)
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < C; i += gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) acc += dout[n * C + i] * x[n * C + i] * rstd[n];
        dw[i] += acc;
    }
}

extern "C" moe_status moe__cuda_rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N,
                                                int C, float eps) {
    rmsnorm_forward_kernel<<<moe__cuda_blocks(N, 1), ROW_THREADS>>>(out, rstd, x, w, N, C, eps);
    return MOE_CUDA_LAUNCHED("rmsnorm_forward");
}

extern "C" moe_status moe__cuda_rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x,
                                                 const float *w, const float *rstd, int64_t N, int C) {
    rmsnorm_backward_dx_kernel<<<moe__cuda_blocks(N, 1), ROW_THREADS>>>(dx, dout, x, w, rstd, N, C);
    moe_status st = MOE_CUDA_LAUNCHED("rmsnorm_backward (dx)");
    if (st != MOE_STATUS_OK) return st;
    rmsnorm_backward_dw_kernel<<<moe__cuda_blocks(C, 128), 128>>>(dw, dout, x, rstd, N, C);
    return MOE_CUDA_LAUNCHED("rmsnorm_backward (dw)");
}

static __global__ void swiglu_forward_kernel(float *act, const float *h1, const float *h3, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float z = h1[i];
        act[i] = z / (1.0f + expf(-z)) * h3[i];
    }
}

static __global__ void swiglu_backward_kernel(float *dh1, float *dh3, const float *dact, const float *h1,
                                              const float *h3, int64_t n) {
    // silu'(z) = sig(z) (1 + z (1 - sig(z)))
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float z = h1[i], sg = 1.0f / (1.0f + expf(-z));
        dh3[i] = dact[i] * z * sg;
        dh1[i] = dact[i] * h3[i] * sg * (1.0f + z * (1.0f - sg));
    }
}

extern "C" moe_status moe__cuda_swiglu_forward(float *act, const float *h1, const float *h3, int64_t n) {
    swiglu_forward_kernel<<<moe__cuda_blocks(n, 256), 256>>>(act, h1, h3, n);
    return MOE_CUDA_LAUNCHED("swiglu_forward");
}

extern "C" moe_status moe__cuda_swiglu_backward(float *dh1, float *dh3, const float *dact, const float *h1,
                                                const float *h3, int64_t n) {
    swiglu_backward_kernel<<<moe__cuda_blocks(n, 256), 256>>>(dh1, dh3, dact, h1, h3, n);
    return MOE_CUDA_LAUNCHED("swiglu_backward");
}

static __global__ void rope_kernel(float *x, const float *cos_t, const float *sin_t, int64_t BT, int T, int C, int H,
                                   float sign) {
    // one thread per (row bt, head h, pair i)
    int D = C / H, half = D / 2;
    int64_t n = BT * H * half;
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(k % half), h = (int)(k / half % H);
        int64_t bt = k / half / H;
        int t = (int)(bt % T);
        float *v = x + bt * C + (int64_t)h * D;
        float a = v[i], b = v[i + half], c = cos_t[(int64_t)t * half + i], s = sign * sin_t[(int64_t)t * half + i];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

extern "C" moe_status moe__cuda_rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int C,
                                             int H) {
    int64_t n = (int64_t)B * T * C / 2;
    rope_kernel<<<moe__cuda_blocks(n, 256), 256>>>(x, cos_t, sin_t, (int64_t)B * T, T, C, H, 1.0f);
    return MOE_CUDA_LAUNCHED("rope_forward");
}

extern "C" moe_status moe__cuda_rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int C,
                                              int H) {
    int64_t n = (int64_t)B * T * C / 2;
    rope_kernel<<<moe__cuda_blocks(n, 256), 256>>>(dx, cos_t, sin_t, (int64_t)B * T, T, C, H, -1.0f);
    return MOE_CUDA_LAUNCHED("rope_backward");
}

static __global__ void embedding_forward_kernel(float *x, const float *wte, const int *tokens, int64_t N, int C) {
    for (int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; k < N * C; k += (int64_t)gridDim.x * blockDim.x)
        x[k] = wte[(int64_t)tokens[k / C] * C + k % C];
}

static __global__ void embedding_backward_kernel(float *gwte, const float *dx, const int *tokens, int64_t N, int C) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < C; i += gridDim.x * blockDim.x)
        for (int64_t n = 0; n < N; n++) gwte[(int64_t)tokens[n] * C + i] += dx[n * C + i];
}

extern "C" moe_status moe__cuda_embedding_forward(float *x, const float *wte, const int *tokens, int64_t N, int C) {
    embedding_forward_kernel<<<moe__cuda_blocks(N * C, 256), 256>>>(x, wte, tokens, N, C);
    return MOE_CUDA_LAUNCHED("embedding_forward");
}

extern "C" moe_status moe__cuda_embedding_backward(float *gwte, const float *dx, const int *tokens, int64_t N, int C) {
    embedding_backward_kernel<<<moe__cuda_blocks(C, 128), 128>>>(gwte, dx, tokens, N, C);
    return MOE_CUDA_LAUNCHED("embedding_backward");
}

static __global__ void add_kernel(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" moe_status moe__cuda_add(float *out, const float *a, const float *b, int64_t n) {
    add_kernel<<<moe__cuda_blocks(n, 256), 256>>>(out, a, b, n);
    return MOE_CUDA_LAUNCHED("add");
}
