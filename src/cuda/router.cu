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
 *
 * Then the balance losses and the router backward, mirroring the top-K parts of
 * moe__router_losses and moe__router_backward:
 *
 *   losses     Switch aux E sum_e f_e P_e (f_e = load_e / sum load, P_e = mean_n probs_ne) and the
 *              sequence aux mean_b sum_e f_be P_be (f_be = E/(K T) * slots of sequence b on e),
 *              in double by fixed block trees (the CPU sums left to right: equal to rounding;
 *              seq_f is the CPU's arithmetic exactly)
 *   backward   per token the CPU's clean_token_backward (softmax or sigmoid scores, norm_topk,
 *              route_scale) plus the z-loss term 2 z_s lse_n softmax(logits_n) / N, one warp a
 *              token (the sums over experts are warp butterflies)
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

/* ---------------------------------------------------------------- router losses */

#define LOSS_THREADS 512

/* For each of `lanes` columns e, sums sh[i*lanes + e] over rows i < n into sh[e] by a fixed
 * tree (any n). The block calls it together; values written before it must be synced. */
static __device__ void tree_sum(double *sh, int n, int lanes) {
    int p = 1;
    while (p < n) p <<= 1;
    for (int s = p / 2; s > 0; s /= 2) {
        for (int t = threadIdx.x; t < s * lanes; t += blockDim.x)
            if (t / lanes + s < n) sh[t] += sh[t + s * lanes];
        __syncthreads();
    }
}

/* One block, so every sum has one fixed order without scratch. Experts go in tiles of ET lanes;
 * the block's threads are RP = LOSS_THREADS / ET rows of the tile, thread (rr, e) summing the
 * tokens rr, rr + RP, ... (consecutive threads read consecutive probs). Per sequence b the rows
 * are reduced into P_be and the slot counts into seq_f; tokens after the last whole sequence
 * count only towards P_e, as on the CPU. Thread 0 accumulates the totals, tile by tile. */
static __global__ void __launch_bounds__(LOSS_THREADS)
    router_losses_kernel(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load, const float *probs,
                         const int *sel, int64_t N, int T, int E, int K) {
    __shared__ double sp[LOSS_THREADS], sc[LOSS_THREADS];
    __shared__ long long total;
    int t = threadIdx.x;
    int64_t B = N / T;
    double aux_sum = 0.0, seq_sum = 0.0; // thread 0's
    if (t == 0) {
        long long s = 0;
        for (int e = 0; e < E; e++) s += load[e];
        total = s;
    }
    for (int e0 = 0; e0 < E; e0 += LOSS_THREADS) {
        int ET = E - e0 < LOSS_THREADS ? E - e0 : LOSS_THREADS, RP = LOSS_THREADS / ET;
        int rr = t / ET, e = e0 + t % ET, on = rr < RP;
        double all = 0.0; // this thread's part of sum_n probs_ne
        for (int64_t b = 0; b < B; b++) {
            double p = 0.0;
            int cnt = 0;
            for (int64_t n = b * T + rr; on && n < (b + 1) * T; n += RP) {
                p += probs[n * E + e];
                for (int k = 0; k < K; k++) cnt += sel[n * K + k] == e;
            }
            all += p;
            sp[t] = p, sc[t] = cnt;
            __syncthreads();
            tree_sum(sp, RP, ET);
            tree_sum(sc, RP, ET);
            if (t < ET) { // seq_f and this expert's term of sequence b, as router.c computes them
                float fb = (float)sc[t] * ((float)E / ((float)K * (float)T));
                seq_f[b * E + e] = fb;
                sp[t] = (double)fb * (sp[t] / T);
            }
            __syncthreads();
            tree_sum(sp, ET, 1);
            if (t == 0) seq_sum += sp[0];
            __syncthreads();
        }
        for (int64_t n = B * T + rr; on && n < N; n += RP) all += probs[n * E + e];
        sp[t] = all;
        __syncthreads();
        tree_sum(sp, RP, ET);
        if (t < ET) {
            float fe = total ? (float)((double)load[e] / (double)total) : 0.0f;
            f[e] = fe;
            sp[t] = (double)fe * (sp[t] / (double)N);
        }
        __syncthreads();
        tree_sum(sp, ET, 1);
        if (t == 0) aux_sum += sp[0];
        __syncthreads();
    }
    if (t == 0) {
        *aux = (float)(E * aux_sum);
        *seq_aux = B > 0 ? (float)(seq_sum / (double)B) : 0.0f;
    }
}

extern "C" moe_status moe__cuda_router_losses(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load,
                                              const float *probs, const int *sel, int64_t N, int T, int E, int K) {
    // load, f (E); probs (N,E); sel (N,K); seq_f (N/T, E)
    if (N < 1 || T < 1 || E < 1 || K < 1)
        return moe__err(MOE_STATUS_ARG, "CUDA router losses: N %lld, T %d, E %d, K %d out of range", (long long)N, T, E,
                        K);
    router_losses_kernel<<<1, LOSS_THREADS>>>(aux, seq_aux, f, seq_f, load, probs, sel, N, T, E, K);
    return MOE_CUDA_LAUNCHED("router_losses");
}

/* ---------------------------------------------------------------- router backward */

typedef struct {
    int64_t N;
    int T, E, K, sigmoid, norm_topk;
    float route_scale, aux_s, seq_s, z_s;
} router_bw_args;

/* One warp a token, lane l owning the experts e = l, l + 32, ...; the token's row of dlogits
 * holds d/dscores on the way (as dl on the CPU) and each lane touches only its own entries. The
 * sums over experts are warp butterflies; the sums over the K slots run in slot order on every
 * lane, as the CPU's. A token after the last whole sequence belongs to no sequence: no
 * sequence-loss term (the CPU has no seq_f row for it). */
static __global__ void router_backward_kernel(float *dlogits, const float *dgate, const float *logits, const float *lse,
                                              const float *scores, const float *probs, const int *sel, const float *f,
                                              const float *seq_f, router_bw_args g) {
    int lane = threadIdx.x % MOE_WARP, E = g.E, K = g.K, T = g.T;
    int64_t B = g.N / T;
    WARP_STRIDE(n, g.N) {
        const float *sc = scores + n * E, *pr = probs + n * E, *l = logits + n * E, *dg = dgate + n * K;
        const float *fb = n / T < B ? seq_f + (n / T) * E : NULL;
        const int *s = sel + n * K;
        float *dl = dlogits + n * E;
        // aux = E sum_e f_e mean_n probs_ne; seq = mean_b sum_e f_be mean_t probs_bte
        for (int e = lane; e < E; e += MOE_WARP)
            dl[e] = g.aux_s * (float)E * f[e] / (float)g.N + (fb ? g.seq_s * fb[e] / ((float)T * (float)B) : 0.0f);
        if (g.sigmoid) {
            // probs = s / sum s: ds_j = (dprobs_j - sum_e dprobs_e probs_e) / sum s
            float ssum = 0.0f, dot = 0.0f;
            for (int e = lane; e < E; e += MOE_WARP) ssum += sc[e], dot += dl[e] * pr[e];
            ssum = warp_sum(ssum), dot = warp_sum(dot);
            for (int e = lane; e < E; e += MOE_WARP) dl[e] = (dl[e] - dot) / ssum;
        }
        // gate_k = route_scale * s_k / S (norm_topk) or route_scale * s_k
        float gs = 0.0f, dot = 0.0f;
        for (int k = 0; k < K; k++) gs += sc[s[k]];
        for (int k = 0; k < K; k++) dot += dg[k] * g.route_scale * sc[s[k]] / gs;
        for (int k = 0; k < K; k++)
            if (s[k] % MOE_WARP == lane)
                dl[s[k]] += g.norm_topk ? (dg[k] * g.route_scale - dot) / gs : dg[k] * g.route_scale;
        if (g.sigmoid) {
            for (int e = lane; e < E; e += MOE_WARP) dl[e] *= sc[e] * (1.0f - sc[e]);
        } else {
            // p = softmax(logits): dlogit_e = p_e (dp_e - sum_j p_j dp_j)
            float pdp = 0.0f;
            for (int e = lane; e < E; e += MOE_WARP) pdp += sc[e] * dl[e];
            pdp = warp_sum(pdp);
            for (int e = lane; e < E; e += MOE_WARP) dl[e] = sc[e] * (dl[e] - pdp);
        }
        // z = mean_n lse_n^2: dz / dlogit_ne = 2 lse_n softmax(logits_n)_e / N
        float ln = lse[n], zc = g.z_s * 2.0f * ln / (float)g.N;
        for (int e = lane; e < E; e += MOE_WARP) dl[e] += zc * expf(l[e] - ln);
    }
}

extern "C" moe_status moe__cuda_router_backward(float *dlogits, const float *dgate, const float *logits,
                                                const float *lse, const float *scores, const float *probs,
                                                const int *sel, const float *f, const float *seq_f, int64_t N, int T,
                                                int E, int K, int sigmoid, int norm_topk, float route_scale,
                                                float aux_s, float seq_s, float z_s) {
    // dlogits, logits, scores, probs (N,E); dgate, sel (N,K); lse (N); f (E); seq_f (N/T, E)
    if (T < 1) return moe__err(MOE_STATUS_ARG, "CUDA router backward: T %d out of range", T);
    router_bw_args g = {N, T, E, K, sigmoid, norm_topk, route_scale, aux_s, seq_s, z_s};
    router_backward_kernel<<<moe__cuda_blocks(N * MOE_WARP, MOE_THREADS), MOE_THREADS>>>(dlogits, dgate, logits, lse, scores,
                                                                             probs, sel, f, seq_f, g);
    return MOE_CUDA_LAUNCHED("router_backward");
}
