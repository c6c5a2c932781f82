/*
 * router.cu — token-choice top-K routing on the GPU, mirroring the topk path of
 * moe__router_forward (moe/router.c) from the router logits on: per token n,
 *
 *   lse_n = logsumexp(logits_n)
 *   scores = softmax(logits) (probs = scores), or sigmoid(logits) (probs = s / sum s)
 *   sel = top-K of scores + bias (bias selects, never weights; the first maximum wins ties)
 *   gate_k = route_scale * s_k / sum_j s_j (norm_topk) or route_scale * s_k
 *   row_of = 0 (routed; dispatch assigns rows)
 *
 * and the z-loss mean_n lse_n^2 (into a device float). One thread a token, looping over the
 * experts in the CPU's order, so a token's numbers differ from the CPU's only by expf/logf
 * rounding; the z-loss is summed in double in a fixed order. Noisy top-K, expert choice, soft
 * routing, jitter and random routing are not here (refused on CUDA by moe_device_supports).
 */
#include "cuda/common.cuh"

static __global__ void router_topk_kernel(float *lse, float *scores, float *probs, int *sel, float *gate, int *row_of,
                                          const float *logits, const float *bias, int64_t N, int E, int K, int sigmoid,
                                          int norm_topk, float route_scale) {
    for (int64_t n = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; n < N; n += (int64_t)gridDim.x * blockDim.x) {
        const float *l = logits + n * E;
        float *sc = scores + n * E, *pr = probs + n * E, *g = gate + n * K;
        int *s = sel + n * K;
        float maxv = l[0];
        for (int e = 1; e < E; e++) maxv = l[e] > maxv ? l[e] : maxv;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += expf(l[e] - maxv);
        float ls = maxv + logf(sum);
        lse[n] = ls;
        if (sigmoid) {
            float ssum = 0.0f;
            for (int e = 0; e < E; e++) ssum += (sc[e] = 1.0f / (1.0f + expf(-l[e])));
            for (int e = 0; e < E; e++) pr[e] = sc[e] / ssum;
        } else {
            for (int e = 0; e < E; e++) pr[e] = sc[e] = expf(l[e] - ls);
        }
        for (int k = 0; k < K; k++) {
            int best = -1;
            float bv = 0.0f;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= s[j] == e;
                float v = sc[e] + (bias ? bias[e] : 0.0f);
                if (!taken && (best < 0 || v > bv)) best = e, bv = v;
            }
            s[k] = best;
        }
        float gs = 0.0f;
        for (int k = 0; k < K; k++) gs += (g[k] = sc[s[k]]);
        for (int k = 0; k < K; k++) {
            g[k] = route_scale * (norm_topk ? g[k] / gs : g[k]);
            row_of[n * K + k] = 0;
        }
    }
}

extern "C" moe_status moe__cuda_router_topk(float *z, float *lse, float *scores, float *probs, int *sel, float *gate,
                                            int *row_of, const float *logits, const float *bias, int64_t N, int E, int K,
                                            int sigmoid, int norm_topk, float route_scale) {
    router_topk_kernel<<<moe__cuda_blocks(N, 128), 128>>>(lse, scores, probs, sel, gate, row_of, logits, bias, N, E, K,
                                                           sigmoid, norm_topk, route_scale);
    moe_status st = MOE_CUDA_LAUNCHED("router_topk");
    if (st != MOE_STATUS_OK) return st;
    moe__mean_kernel<true><<<1, MOE_MEAN_THREADS>>>(z, lse, N); // z = mean_n lse_n^2
    return MOE_CUDA_LAUNCHED("router_topk (z-loss)");
}
