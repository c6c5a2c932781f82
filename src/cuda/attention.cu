/*
 * attention.cu — causal multi-head attention on the GPU, mirroring moe__attention_forward and
 * _backward (nn/attention.c): q, k, v, out (B,T,C), H heads of D = C/H as column slices;
 * att (B,H,T,T) keeps the probabilities, zero above the diagonal; backward: dq, dk, dv
 * accumulate, datt (B,H,T,T) is scratch (it ends holding d scores, scale included).
 *
 * The products are cuBLAS strided batched GEMMs, one call per head over the B sequences (a head
 * of q is a (T,D) matrix of row stride C; sequence b starts T*C further):
 *
 *   forward    S = scale q k^T (all T x T; the softmax masks s > t), P = softmax(S), out = P v
 *   backward   dP = dout v^T, dv += P^T dout, dS = P (dP - rowsum(P dP)) scale,
 *              dq += dS k, dk += dS^T q
 *
 * The row kernels (softmax, its backward) run one block a row, reducing in a fixed order. With
 * bf16, the inputs of every product (q, k, v, P, dout, dS) are rounded to bf16 and the products
 * accumulate in fp32, as SDPA under autocast; P, dP, dS and the softmax stay fp32. The masked half
 * of S is computed and thrown away: twice the score FLOPs of a causal kernel, which a fused
 * (flash-style) kernel would save.
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

/* Row (b,h,t) of att holds scale q_t . k_s for every s: softmax over s <= t, zero above. */
static __global__ void causal_softmax_kernel(float *att, int64_t rows, int T) {
    __shared__ float shared[ATT_THREADS];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int t = (int)(row % T);
        float *at = att + row * T, m = -INFINITY;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) m = fmaxf(m, at[s]);
        float maxv = block_reduce(m, 0, shared), sum = 0.0f;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) sum += (at[s] = expf(at[s] - maxv));
        float inv = 1.0f / block_reduce(sum, 1, shared);
        for (int s = threadIdx.x; s < T; s += ATT_THREADS) at[s] = s <= t ? at[s] * inv : 0.0f;
    }
}

/* Row (b,h,t) of datt holds dP: d scores = P (dP - sum_s P dP) scale, zero above the diagonal. */
static __global__ void softmax_backward_kernel(float *datt, const float *att, int64_t rows, int T, float scale) {
    __shared__ float shared[ATT_THREADS];
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        int t = (int)(row % T);
        const float *at = att + row * T;
        float *da = datt + row * T, part = 0.0f;
        for (int s = threadIdx.x; s <= t; s += ATT_THREADS) part += at[s] * da[s];
        float dot = block_reduce(part, 1, shared);
        for (int s = threadIdx.x; s < T; s += ATT_THREADS) da[s] = s <= t ? at[s] * (da[s] - dot) * scale : 0.0f;
    }
}

/* Element offset o of a staged operand (fp32 or bf16). */
static const void *at_elem(const void *p, int64_t o, int bf16) { return (const char *)p + o * (bf16 ? 2 : 4); }

/* For each head h: C_bh (col-major) = alpha op(A_bh) op(B_bh) + beta C_bh over the B sequences.
 * A and B are staged tensors: a is (B,T,C)-shaped (head h at column h*D) when a_head, else
 * (B,H,T,T)-shaped (head h's block at h*T*T); the same for b and c. */
typedef struct {
    moe__cuda_blas *blas;
    int bf16, B, T, C, H;
} att_ctx;

static moe_status per_head(const att_ctx *x, int ta, int tb, int m, int n, int k, float alpha, const void *A, int a_head,
                           const void *Bm, int b_head, float beta, float *Cm, int c_head) {
    int64_t T = x->T, C = x->C, D = C / x->H, TT = T * T;
    for (int h = 0; h < x->H; h++) {
        const void *a = at_elem(A, a_head ? h * D : h * TT, x->bf16), *b = at_elem(Bm, b_head ? h * D : h * TT, x->bf16);
        float *c = Cm + (c_head ? h * D : h * TT);
        MOE_TRY(moe__cuda_gemm_batched(x->blas, x->bf16, ta, tb, m, n, k, alpha, a, a_head ? (int)C : (int)T,
                                       a_head ? T * C : x->H * TT, b, b_head ? (int)C : (int)T,
                                       b_head ? T * C : x->H * TT, beta, c, c_head ? (int)C : (int)T,
                                       c_head ? T * C : x->H * TT, x->B));
    }
    return MOE_STATUS_OK;
}

extern "C" moe_status moe__cuda_attention_forward(moe__cuda_blas *blas, int bf16, float *out, float *att, const float *q,
                                                  const float *k, const float *v, int B, int T, int C, int H) {
    att_ctx x = {blas, bf16, B, T, C, H};
    int D = C / H;
    int64_t N = (int64_t)B * T, rows = N * H;
    const void *sq, *sk, *sp, *sv;
    // S^T (col-major) = k q^T: row-major S_ts = scale q_t . k_s
    MOE_TRY(moe__cuda_stage(blas, bf16, k, N * C, q, N * C, &sk, &sq));
    MOE_TRY(per_head(&x, 1, 0, T, T, D, 1.0f / sqrtf((float)D), sk, 1, sq, 1, 0.0f, att, 0));
    causal_softmax_kernel<<<moe__cuda_blocks(rows, 1), ATT_THREADS>>>(att, rows, T);
    MOE_TRY(MOE_CUDA_LAUNCHED("attention (softmax)"));
    // out^T = v^T P^T: out_t = sum_s P_ts v_s
    MOE_TRY(moe__cuda_stage(blas, bf16, att, rows * T, v, N * C, &sp, &sv));
    return per_head(&x, 0, 0, D, T, T, 1.0f, sv, 1, sp, 0, 0.0f, out, 1);
}

extern "C" moe_status moe__cuda_attention_backward(moe__cuda_blas *blas, int bf16, float *dq, float *dk, float *dv,
                                                   float *datt, const float *dout, const float *q, const float *k,
                                                   const float *v, const float *att, int B, int T, int C, int H) {
    att_ctx x = {blas, bf16, B, T, C, H};
    int D = C / H;
    int64_t N = (int64_t)B * T, rows = N * H;
    const void *a, *b;
    // dP^T = v dout^T: dP_ts = dout_t . v_s
    MOE_TRY(moe__cuda_stage(blas, bf16, v, N * C, dout, N * C, &a, &b));
    MOE_TRY(per_head(&x, 1, 0, T, T, D, 1.0f, a, 1, b, 1, 0.0f, datt, 0));
    // dv^T += dout^T P: dv_s += sum_t P_ts dout_t
    MOE_TRY(moe__cuda_stage(blas, bf16, dout, N * C, att, rows * T, &a, &b));
    MOE_TRY(per_head(&x, 0, 1, D, T, T, 1.0f, a, 1, b, 0, 1.0f, dv, 1));
    softmax_backward_kernel<<<moe__cuda_blocks(rows, 1), ATT_THREADS>>>(datt, att, rows, T, 1.0f / sqrtf((float)D));
    MOE_TRY(MOE_CUDA_LAUNCHED("attention backward (softmax)"));
    // dq^T += k^T dS^T: dq_t += sum_s dS_ts k_s; dk^T += q^T dS: dk_s += sum_t dS_ts q_t
    MOE_TRY(moe__cuda_stage(blas, bf16, k, N * C, datt, rows * T, &a, &b));
    MOE_TRY(per_head(&x, 0, 0, D, T, T, 1.0f, a, 1, b, 0, 1.0f, dq, 1));
    MOE_TRY(moe__cuda_stage(blas, bf16, q, N * C, datt, rows * T, &a, &b));
    return per_head(&x, 0, 1, D, T, T, 1.0f, a, 1, b, 0, 1.0f, dk, 1);
}
