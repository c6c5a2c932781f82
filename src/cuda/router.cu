/*
 * router.cu — the router of an MoE layer on the GPU for every routing method, mirroring
 * moe/router.c on device pointers (moe__cuda_route, moe__cuda_route_dims):
 *
 *   jitter     (Switch) xr = x * jit, jit = 1 - eps + 2 eps U, training only; dx += dxr * jit
 *   forward    from the logits (and noise_raw) on, per token n: lse_n = logsumexp(logits_n);
 *              top-K: scores = softmax or sigmoid (probs = scores, or s / sum s), sel = top-K of
 *              scores + bias (the first maximum wins ties), gate_k = route_scale * s_k (divided by
 *              sum_j s_j with norm_topk), GShard's random routing of the 2nd slot (training, K = 2);
 *              noisy top-K (router_noisy.cu has the rest): H = logits + eps softplus(noise_raw),
 *              eps ~ N(0,1) in training (0 at eval), sel = top-K of H, gates = softmax over the
 *              selected H, scores = probs = the gates scattered; expert choice and soft: a slot per
 *              expert, gate = route_scale * score; and the z-loss mean_n lse_n^2
 *   losses     Switch aux E sum_e f_e P_e (f_e = load_e / sum load, P_e = mean_n probs_ne) and the
 *              sequence aux mean_b sum_e f_be P_be (f_be = E/(K T) * routed slots of sequence b on
 *              e); noisy top-K's importance and load in router_noisy.cu
 *   backward   per token the CPU's clean_token_backward (here) or noisy_token_backward
 *              (router_noisy.cu), plus the z-loss term; the products back to the router input are
 *              the caller's
 *
 * The top-K launchers of issue 15 (moe__cuda_router_topk, _losses, _backward) are thin wrappers.
 */
#include "cuda/common.cuh"
#include "moe/select.h"

/* The dimensions every launcher here checks: slots as moe__moe_slots gives them for the
 * effective routing, and noisy top-K with K < E (moe_config_validate's rule). */
static moe_status check_dims(const moe__cuda_route_dims *d, const char *what) {
    int per_expert = d->routing == MOE_ROUTING_EXPERT_CHOICE || d->routing == MOE_ROUTING_SOFT;
    if (d->N < 1 || d->T < 1 || d->E < 1 || d->K < 1 || d->K > d->E || d->routing < MOE_ROUTING_TOPK ||
        d->routing > MOE_ROUTING_SOFT || d->slots != (per_expert ? d->E : d->K) ||
        (d->routing == MOE_ROUTING_NOISY_TOPK && d->K >= d->E))
        return moe__err(MOE_STATUS_ARG, "%s: N %lld, T %d, E %d, K %d, slots %d for routing %d out of range", what,
                        (long long)d->N, d->T, d->E, d->K, d->slots, d->routing);
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- random draws
 * router.c's counter-based draws, ported: the integer work is the same, so the uniform draws
 * are equal bit for bit. The normal draws' Box-Muller runs in double with the device's log and
 * cos (CUDA documents 1 and 2 ulps; glibc's are correctly rounded in practice): a few ulps of
 * the double can change the float it rounds to only when it lies that close to a rounding
 * boundary, about one draw in 10^8, and then by the float's last bit. No sum follows a product
 * in either, so fma contraction cannot change them. */
#define SEED_JITTER 0x6a09e667f3bcc908ULL // router.c's SEED_* (moe_layer.h is C11 only): keep them equal
#define SEED_NOISE 0xbb67ae8584caa73bULL
#define SEED_RANDOM_ROUTING 0x3c6ef372fe94f82bULL

static __device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static __device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t index) {
    return (float)(mix64(seed + 0x9e3779b97f4a7c15ULL * (index + 1)) >> 40) * (1.0f / 16777216.0f);
}

static __device__ float hash_normal(uint64_t seed, uint64_t index) {
    uint64_t a = mix64(seed + 0x9e3779b97f4a7c15ULL * (2 * index + 1));
    uint64_t b = mix64(seed + 0x9e3779b97f4a7c15ULL * (2 * index + 2));
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

/* ---------------------------------------------------------------- jitter
 * Equal bits to the CPU's: the draws are, and 1 - eps + 2 eps U and dx + dxr * jit are rounded
 * as the CPU rounds them (__fmul_rn, __fadd_rn: no contraction into an fma). */

static __global__ void jitter_kernel(float *xr, float *jit, const float *x, int64_t n, float eps, uint64_t seed) {
    GRID_STRIDE(i, n) {
        float j = __fadd_rn(1.0f - eps, __fmul_rn(2.0f * eps, hash_uniform(seed, (uint64_t)i)));
        jit[i] = j;
        xr[i] = x[i] * j;
    }
}

static __global__ void jitter_backward_kernel(float *dx, const float *dxr, const float *jit, int64_t n) {
    GRID_STRIDE(i, n) dx[i] = __fadd_rn(dx[i], __fmul_rn(dxr[i], jit[i]));
}

extern "C" moe_status moe__cuda_jitter(const moe__cuda_route_dims *d, const moe__cuda_route *r, const float *x) {
    // x, xr, jit (N,C); nothing to do unless training with jitter (as the CPU)
    if (!d->training || !(d->jitter_eps > 0.0f)) return MOE_STATUS_OK;
    int64_t n = d->N * d->C;
    jitter_kernel<<<moe__cuda_blocks(n, MOE_THREADS), MOE_THREADS>>>(r->xr, r->jit, x, n, d->jitter_eps,
                                                                    d->noise_seed ^ SEED_JITTER);
    return MOE_CUDA_LAUNCHED("jitter");
}

extern "C" moe_status moe__cuda_jitter_backward(float *dx, const float *dxr, const float *jit, int64_t n) {
    jitter_backward_kernel<<<moe__cuda_blocks(n, MOE_THREADS), MOE_THREADS>>>(dx, dxr, jit, n);
    return MOE_CUDA_LAUNCHED("jitter_backward");
}

/* ---------------------------------------------------------------- forward
 * One thread a token, looping over the experts in the CPU's order, so a token's numbers differ
 * from the CPU's only by the device's expf, logf and log1pf (within 2 ulps, glibc's within 1):
 * lse, scores, probs, gates and H within a few ulps, the selections equal except where two keys
 * lie that close, GShard's kept 2nd slots equal except where 2 g2 / (g1 + g2) lies that close to
 * its draw. H = logits + eps * std is rounded as the CPU rounds it (no fma), so the noise adds
 * no difference of its own. The z-loss is summed in double by a fixed tree (the CPU: left to
 * right; equal to rounding). */

/* Noisy top-K, token n: the draws, H, the top-K of H, the gates; scores = probs = gates scattered. */
static __device__ void noisy_token_forward(const moe__cuda_route_dims &d, const moe__cuda_route &r, int64_t n) {
    int E = d.E, K = d.K;
    const float *l = r.logits + n * E, *raw = r.noise_raw + n * E;
    float *H = r.noisy + n * E, *eps = r.noise_eps + n * E, *sc = r.scores + n * E, *pr = r.probs + n * E;
    float *gate = r.gate + n * d.slots;
    int *sel = r.sel + n * d.slots;
    for (int e = 0; e < E; e++) {
        eps[e] = d.training ? hash_normal(d.noise_seed ^ SEED_NOISE, (uint64_t)(n * E + e)) : 0.0f;
        H[e] = __fadd_rn(l[e], __fmul_rn(eps[e], router_softplus(raw[e])));
    }
    moe__select_topk(sel, H, NULL, E, K);
    float hmax = H[sel[0]], gs = 0.0f;
    for (int k = 0; k < K; k++) gs += (gate[k] = expf(H[sel[k]] - hmax));
    for (int e = 0; e < E; e++) sc[e] = 0.0f;
    for (int k = 0; k < K; k++) sc[sel[k]] = (gate[k] /= gs);
    for (int k = 0; k < K; k++) gate[k] *= d.route_scale; // the scores stay the softmax
    for (int e = 0; e < E; e++) pr[e] = sc[e];
}

/* Top-K, expert choice and soft, token n (lse its logsumexp): scores, probs, sel, gates, and
 * GShard's random routing. */
static __device__ void clean_token_forward(const moe__cuda_route_dims &d, const moe__cuda_route &r,
                                           const float *bias, int64_t n, float lse) {
    int E = d.E, K = d.K;
    const float *l = r.logits + n * E;
    float *sc = r.scores + n * E, *pr = r.probs + n * E, *gate = r.gate + n * d.slots;
    int *sel = r.sel + n * d.slots, *row = r.row_of + n * d.slots;
    // affinities: softmax or sigmoid; probs normalised over the experts
    if (d.sigmoid) {
        float ssum = 0.0f;
        for (int e = 0; e < E; e++) ssum += (sc[e] = router_sigmoid(l[e]));
        for (int e = 0; e < E; e++) pr[e] = sc[e] / ssum;
    } else {
        for (int e = 0; e < E; e++) pr[e] = sc[e] = expf(l[e] - lse);
    }
    if (d.routing == MOE_ROUTING_TOPK) {
        moe__select_topk(sel, sc, bias, E, K);
        float gs = 0.0f;
        for (int k = 0; k < K; k++) gs += (gate[k] = sc[sel[k]]);
        for (int k = 0; k < K; k++) gate[k] = d.route_scale * (d.norm_topk ? gate[k] / gs : gate[k]);
        if (d.random_routing && d.training && K == 2 &&
            2.0f * gate[1] / (gate[0] + gate[1]) <= hash_uniform(d.noise_seed ^ SEED_RANDOM_ROUTING, (uint64_t)n))
            row[1] = MOE_ROW_UNROUTED;
    } else { // expert choice (selection in dispatch) and soft mixture: a slot per expert
        for (int e = 0; e < E; e++) {
            sel[e] = e;
            gate[e] = d.route_scale * sc[e];
        }
    }
}

static __global__ void router_forward_kernel(moe__cuda_route_dims d, moe__cuda_route r, const float *bias) {
    int E = d.E;
    GRID_STRIDE(n, d.N) {
        const float *l = r.logits + n * E;
        float maxv = l[0];
        for (int e = 1; e < E; e++) maxv = l[e] > maxv ? l[e] : maxv;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += expf(l[e] - maxv);
        float lse = maxv + logf(sum);
        r.lse[n] = lse;
        for (int s = 0; s < d.slots; s++) r.row_of[n * d.slots + s] = 0; // routed, row assigned by dispatch
        if (d.routing == MOE_ROUTING_NOISY_TOPK) noisy_token_forward(d, r, n);
        else clean_token_forward(d, r, bias, n, lse);
    }
}

extern "C" moe_status moe__cuda_router_forward(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *z,
                                               const float *bias) {
    // logits, scores, probs, noise_raw, noise_eps, noisy (N,E); lse (N); sel, gate, row_of (N,slots)
    MOE_TRY(check_dims(d, "CUDA router forward"));
    router_forward_kernel<<<moe__cuda_blocks(d->N, 128), 128>>>(*d, *r, bias);
    MOE_TRY(MOE_CUDA_LAUNCHED("router_forward"));
    moe__mean_kernel<true><<<1, MOE_MEAN_THREADS>>>(z, r->lse, d->N); // z = mean_n lse_n^2
    return MOE_CUDA_LAUNCHED("router_forward (z-loss)");
}

extern "C" moe_status moe__cuda_router_topk(float *z, float *lse, float *scores, float *probs, int *sel, float *gate,
                                            int *row_of, const float *logits, const float *bias, int64_t N, int E, int K,
                                            int sigmoid, int norm_topk, float route_scale) {
    moe__cuda_route_dims d = {};
    d.N = N, d.T = 1, d.E = E, d.K = K, d.slots = K, d.routing = MOE_ROUTING_TOPK;
    d.sigmoid = sigmoid, d.norm_topk = norm_topk, d.route_scale = route_scale;
    moe__cuda_route r = {};
    r.logits = const_cast<float *>(logits); // read only
    r.scores = scores, r.probs = probs, r.lse = lse, r.sel = sel, r.gate = gate, r.row_of = row_of;
    return moe__cuda_router_forward(&d, &r, z, bias);
}

/* ---------------------------------------------------------------- losses
 * One block, so every sum has one fixed order without scratch: the sums over tokens run in
 * double by fixed block trees (the CPU sums left to right: equal to rounding); f and seq_f are
 * the CPU's arithmetic exactly. */

#define LOSS_THREADS 512

typedef struct {
    int64_t N;
    int T, E, K, slots;
    int per_expert; /* expert choice and soft: slot s of every token is expert s */
} loss_args;

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

/* The slots of one token (sel, row: its slots) that route it to expert e; row NULL: all routed. */
static __device__ int routed_slots(const int *sel, const int *row, int e, const loss_args &a) {
    if (a.per_expert) return !row || row[e] != MOE_ROW_UNROUTED;
    int c = 0;
    for (int s = 0; s < a.slots; s++) c += sel[s] == e && (!row || row[s] != MOE_ROW_UNROUTED);
    return c;
}

/* Experts go in tiles of ET lanes; the block's threads are RP = LOSS_THREADS / ET rows of the
 * tile, thread (rr, e) summing the tokens rr, rr + RP, ... (consecutive threads read consecutive
 * probs). Per sequence b the rows are reduced into P_be and the routed slot counts into seq_f;
 * tokens after the last whole sequence count only towards P_e, as on the CPU. Thread 0
 * accumulates the totals, tile by tile. */
static __global__ void __launch_bounds__(LOSS_THREADS)
    router_losses_kernel(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load, const float *probs,
                         const int *sel, const int *row_of, loss_args a) {
    __shared__ double sp[LOSS_THREADS], sc[LOSS_THREADS];
    __shared__ long long total;
    int t = threadIdx.x, E = a.E, T = a.T;
    int64_t B = a.N / T;
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
                cnt += routed_slots(sel + n * a.slots, row_of ? row_of + n * a.slots : NULL, e, a);
            }
            all += p;
            sp[t] = p, sc[t] = cnt;
            __syncthreads();
            tree_sum(sp, RP, ET);
            tree_sum(sc, RP, ET);
            if (t < ET) { // seq_f and this expert's term of sequence b, as router.c computes them
                float fb = (float)sc[t] * ((float)E / ((float)a.K * (float)T));
                seq_f[b * E + e] = fb;
                sp[t] = (double)fb * (sp[t] / T);
            }
            __syncthreads();
            tree_sum(sp, ET, 1);
            if (t == 0) seq_sum += sp[0];
            __syncthreads();
        }
        for (int64_t n = B * T + rr; on && n < a.N; n += RP) all += probs[n * E + e];
        sp[t] = all;
        __syncthreads();
        tree_sum(sp, RP, ET);
        if (t < ET) {
            float fe = total ? (float)((double)load[e] / (double)total) : 0.0f;
            f[e] = fe;
            sp[t] = (double)fe * (sp[t] / (double)a.N);
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

extern "C" moe_status moe__cuda_router_losses_all(const moe__cuda_route_dims *d, const moe__cuda_route *r, float *out) {
    // load, f, imp, loadest (E); probs (N,E); sel, row_of (N,slots); seq_f (N/T,E); out (4)
    MOE_TRY(check_dims(d, "CUDA router losses"));
    loss_args a = {d->N, d->T, d->E, d->K, d->slots,
                   d->routing == MOE_ROUTING_EXPERT_CHOICE || d->routing == MOE_ROUTING_SOFT};
    router_losses_kernel<<<1, LOSS_THREADS>>>(out, out + 1, r->f, r->seq_f, r->load, r->probs, r->sel, r->row_of, a);
    MOE_TRY(MOE_CUDA_LAUNCHED("router_losses"));
    if (d->routing == MOE_ROUTING_NOISY_TOPK) return moe__cuda_noisy_losses(d, r, out + 2);
    return moe__cuda_status(cudaMemsetAsync(out + 2, 0, 2 * sizeof(float)), "router_losses: cudaMemsetAsync");
}

extern "C" moe_status moe__cuda_router_losses(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load,
                                              const float *probs, const int *sel, int64_t N, int T, int E, int K) {
    // load, f (E); probs (N,E); sel (N,K); seq_f (N/T, E); every slot routed
    if (N < 1 || T < 1 || E < 1 || K < 1)
        return moe__err(MOE_STATUS_ARG, "CUDA router losses: N %lld, T %d, E %d, K %d out of range", (long long)N, T, E,
                        K);
    loss_args a = {N, T, E, K, K, 0};
    router_losses_kernel<<<1, LOSS_THREADS>>>(aux, seq_aux, f, seq_f, load, probs, sel, NULL, a);
    return MOE_CUDA_LAUNCHED("router_losses");
}

/* ---------------------------------------------------------------- backward
 * One warp a token, lane l owning the experts e = l, l + 32, ...; the token's row of dlogits
 * holds d/dscores on the way (as dl on the CPU) and each lane touches only its own entries. The
 * sums over experts are warp butterflies (the CPU: left to right) and the multiply-adds may be
 * contracted into fmas, so dlogits matches the CPU's to rounding, not bits; the sums over the K
 * slots run in slot order on every lane, as the CPU's. A token after the last whole sequence
 * belongs to no sequence: no sequence-loss term (the CPU reads past seq_f there). */

static __global__ void clean_backward_kernel(float *dlogits, const float *dgate, moe__cuda_route r,
                                             moe__cuda_route_dims d, moe__cuda_loss_scales ls) {
    int lane = threadIdx.x % MOE_WARP, E = d.E, K = d.K, T = d.T, slots = d.slots;
    int64_t B = d.N / T;
    WARP_STRIDE(n, d.N) {
        const float *sc = r.scores + n * E, *pr = r.probs + n * E, *dg = dgate + n * slots;
        const float *fb = n / T < B ? r.seq_f + (n / T) * E : NULL;
        const int *s = r.sel + n * slots;
        float *dl = dlogits + n * E;
        // aux = E sum_e f_e mean_n probs_ne; seq = mean_b sum_e f_be mean_t probs_bte
        for (int e = lane; e < E; e += MOE_WARP)
            dl[e] = ls.aux * (float)E * r.f[e] / (float)d.N + (fb ? ls.seq_aux * fb[e] / ((float)T * (float)B) : 0.0f);
        if (d.sigmoid) {
            // probs = s / sum s: ds_j = (dprobs_j - sum_e dprobs_e probs_e) / sum s
            float ssum = 0.0f, dot = 0.0f;
            for (int e = lane; e < E; e += MOE_WARP) ssum += sc[e], dot += dl[e] * pr[e];
            ssum = warp_sum(ssum), dot = warp_sum(dot);
            for (int e = lane; e < E; e += MOE_WARP) dl[e] = (dl[e] - dot) / ssum;
        }
        if (d.routing == MOE_ROUTING_TOPK) {
            // gate_k = route_scale * s_k / S (norm_topk) or route_scale * s_k
            float gs = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) gs += sc[s[k]];
            for (int k = 0; k < K; k++) dot += dg[k] * d.route_scale * sc[s[k]] / gs;
            for (int k = 0; k < K; k++)
                if (s[k] % MOE_WARP == lane)
                    dl[s[k]] += d.norm_topk ? (dg[k] * d.route_scale - dot) / gs : dg[k] * d.route_scale;
        } else { // gate_e = route_scale * s_e
            for (int e = lane; e < E; e += MOE_WARP) dl[e] += dg[e] * d.route_scale;
        }
        if (d.sigmoid) {
            for (int e = lane; e < E; e += MOE_WARP) dl[e] *= sc[e] * (1.0f - sc[e]);
        } else {
            // p = softmax(logits): dlogit_e = p_e (dp_e - sum_j p_j dp_j)
            float pdp = 0.0f;
            for (int e = lane; e < E; e += MOE_WARP) pdp += sc[e] * dl[e];
            pdp = warp_sum(pdp);
            for (int e = lane; e < E; e += MOE_WARP) dl[e] = sc[e] * (dl[e] - pdp);
        }
        router_z_grad(dl, r.logits + n * E, r.lse[n], ls.z, d.N, E, lane);
    }
}

extern "C" moe_status moe__cuda_router_backward_all(const moe__cuda_route_dims *d, const moe__cuda_route *r,
                                                    const moe__cuda_loss_scales *ls, float *dlogits, float *dnoise,
                                                    float *gvec, const float *dgate) {
    // dlogits, dnoise, logits, scores, probs (N,E); dgate, sel, gate (N,slots); lse (N); f (E); seq_f (N/T,E)
    MOE_TRY(check_dims(d, "CUDA router backward"));
    if (d->routing == MOE_ROUTING_NOISY_TOPK) {
        if (!dnoise || !gvec)
            return moe__err(MOE_STATUS_ARG, "CUDA router backward: noisy top-K needs dnoise and gvec");
        return moe__cuda_noisy_backward(d, r, ls, dlogits, dnoise, gvec, dgate);
    }
    clean_backward_kernel<<<moe__cuda_blocks(d->N * MOE_WARP, MOE_THREADS), MOE_THREADS>>>(dlogits, dgate, *r, *d,
                                                                                          *ls);
    return MOE_CUDA_LAUNCHED("router_backward");
}

extern "C" moe_status moe__cuda_router_backward(float *dlogits, const float *dgate, const float *logits,
                                                const float *lse, const float *scores, const float *probs,
                                                const int *sel, const float *f, const float *seq_f, int64_t N, int T,
                                                int E, int K, int sigmoid, int norm_topk, float route_scale,
                                                float aux_s, float seq_s, float z_s) {
    moe__cuda_route_dims d = {};
    d.N = N, d.T = T, d.E = E, d.K = K, d.slots = K, d.routing = MOE_ROUTING_TOPK;
    d.sigmoid = sigmoid, d.norm_topk = norm_topk, d.route_scale = route_scale;
    moe__cuda_route r = {}; // read only
    r.logits = const_cast<float *>(logits), r.lse = const_cast<float *>(lse);
    r.scores = const_cast<float *>(scores), r.probs = const_cast<float *>(probs), r.sel = const_cast<int *>(sel);
    r.f = const_cast<float *>(f), r.seq_f = const_cast<float *>(seq_f);
    moe__cuda_loss_scales ls = {aux_s, z_s, seq_s, 0.0f, 0.0f};
    return moe__cuda_router_backward_all(&d, &r, &ls, dlogits, NULL, NULL, dgate);
}
