/*
 * router_noisy.cu — noisy top-K gating (Shazeer et al. 2017, appendix A) on the GPU: the parts of
 * moe/router.c that router.cu leaves here, the importance and smooth load of moe__router_forward
 * with their CV^2 losses, and moe__router_backward's noisy_token_backward with the CV^2 gradients:
 *
 *   importance_e = sum_n gates_ne      load_e = sum_n Phi((logit_ne - thr_ne) / std_ne)
 *   std = softplus(noise_raw); thr_ne = the K-th largest H_n for an expert outside the top-K,
 *   the (K+1)-th largest for one inside
 *   CV^2(x) = var(x) / (mean(x)^2 + 1e-10), with the population variance
 *
 * Numerics: importance and load are summed over the tokens in double by one block an expert
 * with a fixed tree (the CPU: left to right; equal to rounding before the float they are stored
 * in), from terms equal to the CPU's but for the device's erfc (4 ulps) and softplus (expf,
 * log1pf: 2 ulps). CV^2 and its gradients run in the CPU's order in double with every product
 * rounded apart (__dmul_rn, no fma), so from the same imp and loadest they are the CPU's bits.
 * The per-token backward is one warp a token as in router.cu: warp-butterfly sums and possible
 * fma contraction, equal to rounding.
 */
#include "cuda/common.cuh"

#define NOISY_THREADS 256 /* a power of two: the block trees below halve it */

static __device__ __forceinline__ double normal_cdf(double z) { return 0.5 * erfc(-z / sqrt(2.0)); }
static __device__ __forceinline__ double normal_pdf(double z) {
    return exp(-0.5 * z * z) / sqrt(2.0 * 3.14159265358979323846);
}

static __device__ __forceinline__ int in_topk(const int *sel, int K, int e) {
    int in = 0;
    for (int k = 0; k < K; k++) in |= sel[k] == e;
    return in;
}

/* The expert of the (K+1)-th largest H of a token: the largest outside its top-K sel, the first
 * on ties (router.c's noisy_thresholds; the K-th is sel[K-1]). */
static __device__ int threshold_in(const float *H, const int *sel, int E, int K) {
    int best = -1;
    for (int e = 0; e < E; e++)
        if (!in_topk(sel, K, e) && (best < 0 || H[e] > H[best])) best = e;
    return best;
}

/* The same by a warp: each lane over its experts e = lane, lane + 32, ..., then a butterfly
 * that keeps the larger H and, on equal H, the lower expert, so every lane gets the CPU's. */
static __device__ int warp_threshold_in(const float *H, const int *sel, int E, int K, int lane) {
    int best = -1;
    float bv = 0.0f;
    for (int e = lane; e < E; e += MOE_WARP)
        if (!in_topk(sel, K, e) && (best < 0 || H[e] > bv)) best = e, bv = H[e];
    for (int o = MOE_WARP / 2; o > 0; o >>= 1) {
        int ob = __shfl_xor_sync(0xffffffffu, best, o);
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) best = ob, bv = ov;
    }
    return best;
}

/* ---------------------------------------------------------------- importance and load */

/* One block an expert e = blockIdx.x: thread t sums the tokens t, t + NOISY_THREADS, ..., then
 * a fixed tree. The thresholds are found per (token, expert): the (K+1)-th largest only for
 * the K experts inside a token's top-K. */
static __global__ void __launch_bounds__(NOISY_THREADS)
    noisy_stats_kernel(float *imp, float *loadest, const float *scores, const float *logits, const float *H_all,
                       const float *raw, const int *sel_all, int64_t N, int E, int K) {
    __shared__ double si[NOISY_THREADS], sl[NOISY_THREADS];
    int e = blockIdx.x, t = threadIdx.x;
    double im = 0.0, ld = 0.0;
    for (int64_t n = t; n < N; n += NOISY_THREADS) {
        const float *H = H_all + n * E;
        const int *sel = sel_all + n * K;
        im += scores[n * E + e];
        float thr = in_topk(sel, K, e) ? H[threshold_in(H, sel, E, K)] : H[sel[K - 1]];
        float stdv = router_softplus(raw[n * E + e]);
        ld += normal_cdf(((double)logits[n * E + e] - thr) / stdv);
    }
    si[t] = im, sl[t] = ld;
    __syncthreads();
    for (int s = NOISY_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) si[t] += si[t + s], sl[t] += sl[t + s];
        __syncthreads();
    }
    if (t == 0) imp[e] = (float)si[0], loadest[e] = (float)sl[0];
}

/* cv_squared's mean and population variance of x (n), in the CPU's order and rounding. */
static __device__ void cv_moments(const float *x, int n, double *mean, double *var) {
    double m = 0, v = 0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) v += __dmul_rn(x[i] - m, x[i] - m);
    v /= n;
    *mean = m, *var = v;
}

/* One block: loss (may be NULL) = {CV^2(imp), CV^2(loadest)}; grad (2E, may be NULL) = their
 * gradients times s_imp and s_load (router.c's cv_squared, then gvec *= the loss scales). */
static __global__ void cv_kernel(float *loss, float *grad, const float *imp, const float *loadest, int E, float s_imp,
                                 float s_load) {
    __shared__ double mv[4]; // mean, variance of imp, then of loadest
    int t = threadIdx.x;
    if (t < 2) cv_moments(t ? loadest : imp, E, &mv[2 * t], &mv[2 * t + 1]);
    __syncthreads();
    if (loss && t < 2) loss[t] = (float)(mv[2 * t + 1] / (__dmul_rn(mv[2 * t], mv[2 * t]) + 1e-10));
    for (int i = t; grad && i < 2 * E; i += blockDim.x) {
        int w = i >= E;
        double m = mv[2 * w], v = mv[2 * w + 1], den = __dmul_rn(m, m) + 1e-10;
        double x = (w ? loadest : imp)[i - w * E];
        float g = (float)((__dmul_rn(2.0 * (x - m) / E, den) - v * 2.0 * m / E) / (den * den));
        grad[i] = g * (w ? s_load : s_imp);
    }
}

moe_status moe__cuda_noisy_losses(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *loss) {
    // scores, logits, noisy, noise_raw (N,E); sel (N,K); imp, loadest (E); loss (2)
    noisy_stats_kernel<<<d->E, NOISY_THREADS>>>(r->imp, r->loadest, r->scores, r->logits, r->noisy, r->noise_raw,
                                                r->sel, d->N, d->E, d->K);
    MOE_TRY(MOE_CUDA_LAUNCHED("noisy top-K importance and load"));
    cv_kernel<<<1, NOISY_THREADS>>>(loss, NULL, r->imp, r->loadest, d->E, 0.0f, 0.0f);
    return MOE_CUDA_LAUNCHED("noisy top-K CV^2 losses");
}

/* ---------------------------------------------------------------- backward */

/* Smooth load's direct part for expert e of a token: gload_e phi(z) / std, z = (logit - thr) /
 * std, std = softplus(raw), as router.c rounds them; *z gets z. */
static __device__ __forceinline__ float load_grad(double *z, float logit, float thr, float raw, float gload) {
    float stdv = router_softplus(raw);
    *z = ((double)logit - thr) / stdv;
    return (float)(gload * normal_pdf(*z)) / stdv;
}

/* noisy_token_backward, one warp a token (lane l owns the experts l, l + 32, ...): dl gets dH
 * first, dn d/dstd; then H = logit + eps * std and std = softplus(raw) take them to dlogits and
 * dnoise. gvec (2E): the importance and load gradients. */
static __global__ void noisy_backward_kernel(float *dlogits, float *dnoise, const float *dgate, const float *gvec,
                                             moe__cuda_route r, moe__cuda_route_dims d, moe__cuda_loss_scales ls) {
    int lane = threadIdx.x % MOE_WARP, E = d.E, K = d.K, T = d.T;
    int64_t N = d.N, B = N / T;
    const float *gimp = gvec, *gload = gvec + E;
    WARP_STRIDE(n, N) {
        const float *l = r.logits + n * E, *H = r.noisy + n * E, *eps = r.noise_eps + n * E;
        const float *raw = r.noise_raw + n * E, *dg = dgate + n * K;
        const float *fb = n / T < B ? r.seq_f + (n / T) * E : NULL; // no sequence term after the last
        const int *sel = r.sel + n * K;
        float *dl = dlogits + n * E, *dn = dnoise + n * E;
        for (int e = lane; e < E; e += MOE_WARP) dl[e] = dn[e] = 0.0f;
        // probs = scores = the gates scattered, so the aux, sequence and importance
        // gradients reach the K gates: dg_k = dgate_k * scale + (those at expert sel_k)
#define DG(k)                                                                                              \
    (dg[k] * d.route_scale + gimp[sel[k]] + ls.aux * (float)E * r.f[sel[k]] / (float)N +                \
     (fb ? ls.seq_aux * fb[sel[k]] / ((float)T * (float)B) : 0.0f))
        // g_k = softmax over the selected H (the scores; the gates are route_scale g_k)
        const float *g = r.scores + n * E;
        float dot = 0.0f;
        for (int k = 0; k < K; k++) dot += DG(k) * g[sel[k]];
        // dH_k = g_k (dg_k - sum_j g_j dg_j)
        for (int k = 0; k < K; k++)
            if (sel[k] % MOE_WARP == lane) dl[sel[k]] += g[sel[k]] * (DG(k) - dot);
#undef DG
        // smooth load: prob_e = Phi(z_e), z_e = (logit_e - H_thr(e)) / std_e
        int io = sel[K - 1], ii = warp_threshold_in(H, sel, E, K, lane);
        float dthr_in = 0.0f, dthr_out = 0.0f;
        for (int e = lane; e < E; e += MOE_WARP) {
            int in = in_topk(sel, K, e);
            double z;
            float gp = load_grad(&z, l[e], H[in ? ii : io], raw[e], gload[e]); // d loss / d logit_e (direct)
            dn[e] -= gp * (float)z;                                             // d loss / d std_e (direct)
            if (in) dthr_in -= gp;
            else dthr_out -= gp;
        }
        dthr_in = warp_sum(dthr_in), dthr_out = warp_sum(dthr_out);
        if (ii % MOE_WARP == lane) dl[ii] += dthr_in; // the thresholds are entries of H
        if (io % MOE_WARP == lane) dl[io] += dthr_out;
        // H = logit + eps * std, std = softplus(raw); then the direct logit part of the load
        for (int e = lane; e < E; e += MOE_WARP) {
            double z;
            float gp = load_grad(&z, l[e], H[in_topk(sel, K, e) ? ii : io], raw[e], gload[e]);
            dn[e] = (dn[e] + dl[e] * eps[e]) * router_sigmoid(raw[e]);
            dl[e] += gp;
        }
        router_z_grad(dl, l, r.lse[n], ls.z, N, E, lane);
    }
}

moe_status moe__cuda_noisy_backward(const moe__cuda_route_dims *d, const moe__cuda_route *r,
                                    const moe__cuda_loss_scales *ls, float *dlogits, float *dnoise, float *gvec,
                                    const float *dgate) {
    // dlogits, dnoise, logits, noisy, noise_eps, noise_raw (N,E); dgate, sel, gate (N,K); imp, loadest (E)
    cv_kernel<<<1, NOISY_THREADS>>>(NULL, gvec, r->imp, r->loadest, d->E, ls->importance, ls->load);
    MOE_TRY(MOE_CUDA_LAUNCHED("noisy top-K CV^2 gradients"));
    noisy_backward_kernel<<<moe__cuda_blocks(d->N * MOE_WARP, MOE_THREADS), MOE_THREADS>>>(dlogits, dnoise, dgate,
                                                                                          gvec, *r, *d, *ls);
    return MOE_CUDA_LAUNCHED("noisy top-K router backward");
}
