/*
 * select.h — the top-K selection both backends run per token (moe/router.c on the CPU,
 * cuda/router.cu on the GPU): one definition, so that they select alike by construction.
 * Not installed.
 */
#ifndef MOE_SELECT_H
#define MOE_SELECT_H

#ifdef __CUDACC__
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

/* Top-K of key (+ bias when not NULL) among the experts e whose group e / S has its bit in keep,
 * by repeated selection; the first maximum wins ties. */
static inline MOE_HOST_DEVICE void moe__select_topk_in(int *sel, const float *key, const float *bias, int E, int K, int S,
                                                       unsigned long long keep) {
    for (int k = 0; k < K; k++) {
        int best = -1;
        float bv = 0.0f;
        for (int e = 0; e < E; e++) {
            int taken = !(keep >> (e / S) & 1ULL);
            for (int j = 0; j < k; j++) taken |= sel[j] == e;
            float v = key[e] + (bias ? bias[e] : 0.0f);
            if (!taken && (best < 0 || v > bv)) best = e, bv = v;
        }
        sel[k] = best;
    }
}

/* Top-K of key (+ bias when not NULL) over all E experts (one group). */
static inline MOE_HOST_DEVICE void moe__select_topk(int *sel, const float *key, const float *bias, int E, int K) {
    moe__select_topk_in(sel, key, bias, E, K, E, 1ULL);
}

/* Group-limited top-K (DeepSeek-V2/V3): the E experts in G groups of E/G; v = key + bias. Each
 * group is scored by the sum of its two best v (top2_sum; its one v in a group of one) or its best
 * (max); the topk_group best groups are kept (ties to the lower group), then the top-K of v among
 * their experts (ties to the lower expert). G <= 64. */
static inline MOE_HOST_DEVICE void moe__select_topk_grouped(int *sel, const float *key, const float *bias, int E, int K,
                                                            int G, int topk_group, int top2_sum) {
    int S = E / G;
    float gscore[64];
    for (int g = 0; g < G; g++) {
        float b1 = 0.0f, b2 = 0.0f;
        for (int i = 0; i < S; i++) {
            int e = g * S + i;
            float v = key[e] + (bias ? bias[e] : 0.0f);
            if (i == 0 || v > b1) b2 = i == 0 ? b2 : b1, b1 = v;
            else if (i == 1 || v > b2) b2 = v;
        }
        gscore[g] = top2_sum && S > 1 ? b1 + b2 : b1;
    }
    unsigned long long keep = 0;
    for (int k = 0; k < topk_group; k++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!(keep >> g & 1ULL) && (best < 0 || gscore[g] > gscore[best])) best = g;
        keep |= 1ULL << best;
    }
    moe__select_topk_in(sel, key, bias, E, K, S, keep);
}

#endif
