/*
 * attention.cu — causal multi-head attention on the GPU, mirroring moe__attention_forward and
 * _backward (nn/attention.c): q, k, v, out (B,T,C), H heads of D = C/H as column slices;
 * att (B,H,T,T) keeps the probabilities, zero above the diagonal; backward: dq, dk, dv
 * accumulate, datt (B,H,T,T) is scratch (it ends holding d scores).
 *
 * A first, plain version for correctness: one block per query row (forward, d scores, dq) or per
 * key row (dk, dv), each summing in a fixed order, so there are no atomics and the results do
 * not change from run to run. A fused (flash-style) kernel is the speed issue's work.
 */
#include "cuda/common.cuh"

#define ATT_THREADS 128

/* max (op 0) or sum (op 1) of v over the block; every thread gets it. */
static __device__ float block_reduce(float v, int op, float *shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = ATT_THREADS / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            shared[threadIdx.x] = op ? shared[threadIdx.x] + shared[threadIdx.x + s]
                                     : fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    float r = shared[0];
    __syncthreads();
    return r;
}

/* Block (b,h,t): att row t = softmax(scale q_t k_s, s <= t), out_t = sum_s att_ts v_s. */
static __global__ void attention_forward_kernel(float *out, float *att, const float *q, const float *k, const float *v,
                                                int B, int T, int C, int H, float scale) {
    __shared__ float shared[ATT_THREADS];
    int D = C / H;
    for (int64_t row = blockIdx.x; row < (int64_t)B * H * T; row += gridDim.x) {
        int t = (int)(row % T), h = (int)(row / T % H), b = (int)(row / T / H);
        const float *qt = q + ((int64_t)b * T + t) * C + h * D;
        float *at = att + row * T; // rows of att are (b,h,t) in this order
        float m = -INFINITY;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) {
            const float *ks = k + ((int64_t)b * T + s) * C + h * D;
            float dot = 0.0f;
            for (int i = 0; i < D; i++) dot += qt[i] * ks[i];
            at[s] = dot * scale;
            m = fmaxf(m, at[s]);
        }
        float maxv = block_reduce(m, 0, shared), sum = 0.0f;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) sum += (at[s] = expf(at[s] - maxv));
        float inv = 1.0f / block_reduce(sum, 1, shared);
        for (int s = threadIdx.x; s < T; s += ATT_THREADS) at[s] = s <= t ? at[s] * inv : 0.0f;
        __syncthreads();
        float *ot = out + ((int64_t)b * T + t) * C + h * D;
        for (int i = threadIdx.x; i < D; i += ATT_THREADS) {
            float acc = 0.0f;
            for (int s = 0; s <= t; s++) acc += at[s] * v[((int64_t)b * T + s) * C + h * D + i];
            ot[i] = acc;
        }
        __syncthreads();
    }
}

/* Block (b,h,t): datt_ts = dout_t . v_s, then d scores = att (datt - sum_s att datt) scale. */
static __global__ void attention_dscores_kernel(float *datt, const float *dout, const float *v, const float *att, int B,
                                                int T, int C, int H, float scale) {
    __shared__ float shared[ATT_THREADS];
    int D = C / H;
    for (int64_t row = blockIdx.x; row < (int64_t)B * H * T; row += gridDim.x) {
        int t = (int)(row % T), h = (int)(row / T % H), b = (int)(row / T / H);
        const float *dt = dout + ((int64_t)b * T + t) * C + h * D, *at = att + row * T;
        float *da = datt + row * T, part = 0.0f;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) {
            const float *vs = v + ((int64_t)b * T + s) * C + h * D;
            float dot = 0.0f;
            for (int i = 0; i < D; i++) dot += dt[i] * vs[i];
            da[s] = dot;
            part += at[s] * dot;
        }
        float dot = block_reduce(part, 1, shared);
        for (int s = threadIdx.x; s < T; s += ATT_THREADS) da[s] = s <= t ? at[s] * (da[s] - dot) * scale : 0.0f;
        __syncthreads();
    }
}

/* Block (b,h,s), a key row: dv_s += sum_{t>=s} att_ts dout_t, dk_s += sum_{t>=s} dscores_ts q_t. */
static __global__ void attention_dkv_kernel(float *dk, float *dv, const float *dout, const float *q, const float *att,
                                            const float *dscores, int B, int T, int C, int H) {
    int D = C / H;
    for (int64_t row = blockIdx.x; row < (int64_t)B * H * T; row += gridDim.x) {
        int s = (int)(row % T), h = (int)(row / T % H), b = (int)(row / T / H);
        const float *A = att + (row - s) * T, *dS = dscores + (row - s) * T; // the (b,h) block
        int64_t so = ((int64_t)b * T + s) * C + h * D;
        for (int i = threadIdx.x; i < D; i += ATT_THREADS) {
            float av = 0.0f, ak = 0.0f;
            for (int t = s; t < T; t++) {
                int64_t to = ((int64_t)b * T + t) * C + h * D + i;
                av += A[(int64_t)t * T + s] * dout[to];
                ak += dS[(int64_t)t * T + s] * q[to];
            }
            dv[so + i] += av;
            dk[so + i] += ak;
        }
    }
}

/* Block (b,h,t): dq_t += sum_{s<=t} dscores_ts k_s. */
static __global__ void attention_dq_kernel(float *dq, const float *k, const float *dscores, int B, int T, int C, int H) {
    int D = C / H;
    for (int64_t row = blockIdx.x; row < (int64_t)B * H * T; row += gridDim.x) {
        int t = (int)(row % T), h = (int)(row / T % H), b = (int)(row / T / H);
        const float *dS = dscores + row * T;
        for (int i = threadIdx.x; i < D; i += ATT_THREADS) {
            float acc = 0.0f;
            for (int s = 0; s <= t; s++) acc += dS[s] * k[((int64_t)b * T + s) * C + h * D + i];
            dq[((int64_t)b * T + t) * C + h * D + i] += acc;
        }
    }
}

extern "C" moe_status moe__cuda_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                                  int B, int T, int C, int H) {
    float scale = 1.0f / sqrtf((float)(C / H));
    attention_forward_kernel<<<moe__cuda_blocks((int64_t)B * H * T, 1), ATT_THREADS>>>(out, att, q, k, v, B, T, C, H,
                                                                                       scale);
    return MOE_CUDA_LAUNCHED("attention_forward");
}

extern "C" moe_status moe__cuda_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                                                   const float *q, const float *k, const float *v, const float *att,
                                                   int B, int T, int C, int H) {
    float scale = 1.0f / sqrtf((float)(C / H));
    unsigned rows = moe__cuda_blocks((int64_t)B * H * T, 1);
    attention_dscores_kernel<<<rows, ATT_THREADS>>>(datt, dout, v, att, B, T, C, H, scale);
    moe_status st = MOE_CUDA_LAUNCHED("attention_backward (d scores)");
    if (st != MOE_STATUS_OK) return st;
    attention_dkv_kernel<<<rows, ATT_THREADS>>>(dk, dv, dout, q, att, datt, B, T, C, H);
    if ((st = MOE_CUDA_LAUNCHED("attention_backward (dk, dv)")) != MOE_STATUS_OK) return st;
    attention_dq_kernel<<<rows, ATT_THREADS>>>(dq, k, datt, B, T, C, H);
    return MOE_CUDA_LAUNCHED("attention_backward (dq)");
}
