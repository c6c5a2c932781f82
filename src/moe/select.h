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

/* Top-K of key (+ bias when not NULL), by repeated selection; the first maximum wins ties. */
static inline MOE_HOST_DEVICE void moe__select_topk(int *sel, const float *key, const float *bias, int E, int K) {
    for (int k = 0; k < K; k++) {
        int best = -1;
        float bv = 0.0f;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= sel[j] == e;
            float v = key[e] + (bias ? bias[e] : 0.0f);
            if (!taken && (best < 0 || v > bv)) best = e, bv = v;
        }
        sel[k] = best;
    }
}

#endif
