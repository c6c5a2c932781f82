/*
 * router.c — the router of an MoE layer: scores, expert selection and gate weights for every
 * routing method, and the balance losses with their gradients.
 *
 *   input jitter (Switch): xr = x * U(1-eps, 1+eps) elementwise, training only; else xr = x
 *   logits = xr Wg^T                                                   (N,E)
 *   top-K (token choice): scores = softmax(logits) or sigmoid(logits) (DeepSeek-V3);
 *       selection by scores + bias (aux-loss-free bias selects, never weights), within the
 *       topk_group best of n_group expert groups when grouped (DeepSeek-V2/V3, moe/select.h);
 *       gate_k = route_scale * s_k / sum_j s_j (norm_topk) or route_scale * s_k
 *   noisy top-K (Shazeer et al. 2017): H = logits + eps * softplus(xr Wn^T), eps ~ N(0,1) in
 *       training (0 at eval); top-K of H; gates = route_scale * softmax over the K selected H
 *   expert choice (Zhou et al. 2022) and dense soft mixture: a slot per expert, gate = score
 *   GShard random routing: the 2nd expert is kept with probability 2 g2 / (g1 + g2), training only
 *
 * Balance losses (each with its coefficient, averaged over MoE layers by the model):
 *   Switch aux  E * sum_e f_e P_e, f_e = load_e / sum load, P_e = mean_n probs[n,e]
 *   z-loss      mean_n logsumexp(logits_n)^2 (ST-MoE)
 *   sequence    mean_b sum_e f_be P_be, f_be = E/(K T) * routed count in sequence b,
 *               P_be = mean_t probs (DeepSeek-V3 eq. 17-20)
 *   importance  CV(sum_n gates[n,:])^2;  load  CV(sum_n Phi((logit - threshold) / std))^2
 *               (Shazeer et al. 2017, appendix A; CV^2 = population variance / mean^2)
 * probs are the affinities normalised over the experts: softmax p, or s / sum s for sigmoid,
 * or the gates for noisy top-K.
 */
#include "moe/moe_layer.h"
#include "moe/select.h"
#include "nn/nn.h"

#include <math.h>
#include <string.h>

#define SEED_JITTER 0x6a09e667f3bcc908ULL
#define SEED_NOISE 0xbb67ae8584caa73bULL
#define SEED_RANDOM_ROUTING 0x3c6ef372fe94f82bULL

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

float moe__hash_uniform(uint64_t seed, uint64_t index) {
    return (float)(mix64(seed + 0x9e3779b97f4a7c15ULL * (index + 1)) >> 40) * (1.0f / 16777216.0f);
}

float moe__hash_normal(uint64_t seed, uint64_t index) {
    uint64_t a = mix64(seed + 0x9e3779b97f4a7c15ULL * (2 * index + 1));
    uint64_t b = mix64(seed + 0x9e3779b97f4a7c15ULL * (2 * index + 2));
    double u1 = ((double)(a >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2));
}

moe_routing moe__moe_effective_routing(const moe__moe_dims *d) {
    return d->routing == MOE_ROUTING_EXPERT_CHOICE && !d->training ? MOE_ROUTING_TOPK : d->routing;
}

int moe__moe_slots(const moe__moe_dims *d) {
    moe_routing r = moe__moe_effective_routing(d);
    return r == MOE_ROUTING_EXPERT_CHOICE || r == MOE_ROUTING_SOFT ? d->E : d->K;
}

static int jitter_on(const moe__moe_dims *d) { return d->training && d->jitter_eps > 0.0f; }

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
static double normal_cdf(double z) { return 0.5 * erfc(-z / sqrt(2.0)); }
static double normal_pdf(double z) { return exp(-0.5 * z * z) / sqrt(2.0 * 3.14159265358979323846); }

/* The two thresholds of Shazeer's smooth load for token n: the K-th largest H (threshold for
 * an expert outside the top-K) and the (K+1)-th largest (for one inside). */
static void noisy_thresholds(const float *H, const int *sel, int E, int K, int *idx_out, int *idx_in) {
    *idx_out = sel[K - 1];
    int best = -1;
    for (int e = 0; e < E; e++) {
        int taken = 0;
        for (int j = 0; j < K; j++) taken |= sel[j] == e;
        if (!taken && (best < 0 || H[e] > H[best])) best = e;
    }
    *idx_in = best;
}

/* CV^2 = var / (mean^2 + 1e-10) with the population variance; grad (may be NULL) gets dCV^2/dx. */
static float cv_squared(const float *x, int n, float *grad) {
    double m = 0, v = 0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
    v /= n;
    double den = m * m + 1e-10;
    if (grad)
        for (int i = 0; i < n; i++) grad[i] = (float)((2.0 * (x[i] - m) / n * den - v * 2.0 * m / n) / (den * den));
    return (float)(v / den);
}

void moe__router_forward(moe__moe_cache *c, const float *x, const moe__moe_weights *w, const moe__moe_dims *d,
                         int64_t N) {
    // x is (N,C); logits, scores, probs are (N,E); sel, gate, row_of are (N,slots)
    int E = d->E, K = d->K, C = d->C, slots = moe__moe_slots(d);
    moe_routing routing = moe__moe_effective_routing(d);
    const float *xr = x;
    if (jitter_on(d)) {
        float eps = d->jitter_eps;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * C; i++) {
            c->jit[i] = 1.0f - eps + 2.0f * eps * moe__hash_uniform(d->noise_seed ^ SEED_JITTER, (uint64_t)i);
            c->xr[i] = x[i] * c->jit[i];
        }
        xr = c->xr;
    }
    moe__matmul_forward(c->logits, xr, w->wg, N, C, E, 0);
    if (routing == MOE_ROUTING_NOISY_TOPK) moe__matmul_forward(c->noise_raw, xr, w->wnoise, N, C, E, 0);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *l = c->logits + n * E;
        float *sc = c->scores + n * E, *pr = c->probs + n * E;
        int *sel = c->sel + n * slots;
        float *gate = c->gate + n * slots;
        int *row = c->row_of + n * slots;
        float maxv = l[0];
        for (int e = 1; e < E; e++) maxv = l[e] > maxv ? l[e] : maxv;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += expf(l[e] - maxv);
        float lse = maxv + logf(sum);
        c->lse[n] = lse;
        for (int s = 0; s < slots; s++) row[s] = 0; // routed, row assigned by dispatch
        if (routing == MOE_ROUTING_NOISY_TOPK) {
            float *H = c->noisy + n * E, *eps = c->noise_eps + n * E;
            const float *raw = c->noise_raw + n * E;
            for (int e = 0; e < E; e++) {
                eps[e] = d->training ? moe__hash_normal(d->noise_seed ^ SEED_NOISE, (uint64_t)(n * E + e)) : 0.0f;
                H[e] = l[e] + eps[e] * softplus(raw[e]);
            }
            moe__select_topk(sel, H, NULL, E, K);
            float hmax = H[sel[0]], gs = 0.0f;
            for (int k = 0; k < K; k++) gs += (gate[k] = expf(H[sel[k]] - hmax));
            for (int e = 0; e < E; e++) sc[e] = 0.0f;
            for (int k = 0; k < K; k++) sc[sel[k]] = (gate[k] /= gs);
            for (int k = 0; k < K; k++) gate[k] *= d->route_scale; // the scores stay the softmax
            for (int e = 0; e < E; e++) pr[e] = sc[e];
            continue;
        }
        // affinities: softmax or sigmoid; probs normalised over the experts
        if (d->score == MOE_SCORE_SIGMOID) {
            float ssum = 0.0f;
            for (int e = 0; e < E; e++) ssum += (sc[e] = sigmoidf_(l[e]));
            for (int e = 0; e < E; e++) pr[e] = sc[e] / ssum;
        } else {
            for (int e = 0; e < E; e++) pr[e] = sc[e] = expf(l[e] - lse);
        }
        if (routing == MOE_ROUTING_TOPK) {
            if (d->n_group > 1)
                moe__select_topk_grouped(sel, sc, w->bias, E, K, d->n_group, d->topk_group,
                                         d->group_score == MOE_GROUP_TOP2_SUM);
            else
                moe__select_topk(sel, sc, w->bias, E, K);
            float gs = 0.0f;
            for (int k = 0; k < K; k++) gs += (gate[k] = sc[sel[k]]);
            for (int k = 0; k < K; k++) gate[k] = d->route_scale * (d->norm_topk ? gate[k] / gs : gate[k]);
            if (d->random_routing && d->training && K == 2 &&
                2.0f * gate[1] / (gate[0] + gate[1]) <= moe__hash_uniform(d->noise_seed ^ SEED_RANDOM_ROUTING, (uint64_t)n))
                row[1] = MOE_ROW_UNROUTED;
        } else { // expert choice (selection in dispatch) and soft mixture: a slot per expert
            for (int e = 0; e < E; e++) {
                sel[e] = e;
                gate[e] = d->route_scale * sc[e];
            }
        }
    }
    double z = 0.0;
    for (int64_t n = 0; n < N; n++) z += (double)c->lse[n] * c->lse[n];
    c->z = (float)(z / (double)N);
    c->imp_loss = c->load_loss = 0.0f;
    if (routing == MOE_ROUTING_NOISY_TOPK) {
        // importance = sum_n gates; smooth load = sum_n P(expert selected | other noise)
#pragma omp parallel for schedule(static)
        for (int e = 0; e < E; e++) {
            double imp = 0.0, ld = 0.0;
            for (int64_t n = 0; n < N; n++) {
                imp += c->scores[n * E + e];
                const float *H = c->noisy + n * E;
                int io, ii, in = 0;
                noisy_thresholds(H, c->sel + n * K, E, K, &io, &ii);
                for (int k = 0; k < K; k++) in |= c->sel[n * K + k] == e;
                float stdv = softplus(c->noise_raw[n * E + e]);
                ld += normal_cdf(((double)c->logits[n * E + e] - H[in ? ii : io]) / stdv);
            }
            c->imp[e] = (float)imp;
            c->loadest[e] = (float)ld;
        }
        c->imp_loss = cv_squared(c->imp, E, NULL);
        c->load_loss = cv_squared(c->loadest, E, NULL);
    }
}

void moe__router_losses(moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int E = d->E, K = d->K, T = d->T, slots = moe__moe_slots(d);
    int64_t total = 0;
    for (int e = 0; e < E; e++) total += c->load[e];
    double aux = 0.0;
    for (int e = 0; e < E; e++) {
        double P = 0.0;
        for (int64_t n = 0; n < N; n++) P += c->probs[n * E + e];
        c->f[e] = total ? (float)((double)c->load[e] / (double)total) : 0.0f;
        aux += (double)c->f[e] * (P / (double)N);
    }
    c->aux = (float)(E * aux);
    // sequence-wise: per sequence b of T tokens
    int64_t B = N / T;
    double seq = 0.0;
    for (int64_t b = 0; b < B; b++) {
        float *fb = c->seq_f + b * E;
        for (int e = 0; e < E; e++) fb[e] = 0.0f;
        for (int64_t n = b * T; n < (b + 1) * T; n++)
            for (int s = 0; s < slots; s++)
                if (c->row_of[n * slots + s] != MOE_ROW_UNROUTED) fb[c->sel[n * slots + s]] += 1.0f;
        for (int e = 0; e < E; e++) {
            fb[e] *= (float)E / ((float)K * (float)T);
            double P = 0.0;
            for (int64_t n = b * T; n < (b + 1) * T; n++) P += c->probs[n * E + e];
            seq += (double)fb[e] * (P / T);
        }
    }
    c->seq_aux = B > 0 ? (float)(seq / (double)B) : 0.0f;
}

/* Per token n of the backward: dl (E) gets d loss / d logits before the z-loss (d/dscores on
 * the way), from the gate gradients dg (slots), the balance losses' per-expert terms and, for
 * noisy top-K, the noise path (dn (E) gets d loss / d noise_raw). */
typedef struct {
    const moe__moe_cache *c;
    const moe__moe_dims *d;
    const moe__moe_loss_scales *ls;
    const float *gimp, *gload;   /* (E) importance and load loss gradients (noisy top-K) */
    int64_t N, B;
} token_grad_ctx;

static void noisy_token_backward(float *dl, float *dn, const token_grad_ctx *x, int64_t n, const float *dg) {
    const moe__moe_cache *c = x->c;
    const moe__moe_dims *d = x->d;
    const moe__moe_loss_scales *ls = x->ls;
    int E = d->E, K = d->K, T = d->T, slots = moe__moe_slots(d);
    int64_t N = x->N, B = x->B;
    const float *gimp = x->gimp, *gload = x->gload, *l = c->logits + n * E, *fb = c->seq_f + (n / T) * E;
    const int *sel = c->sel + n * slots;
    // dl accumulates dH first; dn accumulates d/dstd, then d/draw
    const float *H = c->noisy + n * E, *eps = c->noise_eps + n * E, *raw = c->noise_raw + n * E;
    for (int e = 0; e < E; e++) dn[e] = 0.0f;
    // probs = scores = the gates scattered, so the aux, sequence and importance
    // gradients reach the K gates: dg_k = dgate_k * scale + (those at expert sel_k)
#define DG(k) (dg[k] * d->route_scale + gimp[sel[k]] + ls->aux * (float)E * c->f[sel[k]] / (float)N + \
       ls->seq_aux * fb[sel[k]] / ((float)T * (float)B))
    // g_k = softmax over the selected H (the scores; the gates are route_scale g_k)
    const float *g = c->scores + n * E;
    float dot = 0.0f;
    for (int k = 0; k < K; k++) dot += DG(k) * g[sel[k]];
    // dH_k = g_k (dg_k - sum_j g_j dg_j)
    for (int k = 0; k < K; k++) dl[sel[k]] += g[sel[k]] * (DG(k) - dot);
#undef DG
    // smooth load: prob_e = Phi(z_e), z_e = (logit_e - H_thr(e)) / std_e
    int io, ii;
    noisy_thresholds(H, sel, E, K, &io, &ii);
    float dthr_in = 0.0f, dthr_out = 0.0f;
    for (int e = 0; e < E; e++) {
        int in = 0;
        for (int k = 0; k < K; k++) in |= sel[k] == e;
        float stdv = softplus(raw[e]);
        double z = ((double)l[e] - H[in ? ii : io]) / stdv;
        float gp = (float)(gload[e] * normal_pdf(z)) / stdv; // d loss / d logit_e (direct)
        dn[e] -= gp * (float)z;                                // d loss / d std_e (direct)
        if (in) dthr_in -= gp;
        else dthr_out -= gp;
    }
    dl[ii] += dthr_in; // the thresholds are entries of H
    dl[io] += dthr_out;
    // H = logit + eps * std, std = softplus(raw); then the direct logit part of the load
    for (int e = 0; e < E; e++) {
        int in = 0;
        for (int k = 0; k < K; k++) in |= sel[k] == e;
        float stdv = softplus(raw[e]);
        double z = ((double)l[e] - H[in ? ii : io]) / stdv;
        dn[e] = (dn[e] + dl[e] * eps[e]) * sigmoidf_(raw[e]);
        dl[e] += (float)(gload[e] * normal_pdf(z)) / stdv;
    }
}

static void clean_token_backward(float *dl, const token_grad_ctx *x, int64_t n, const float *dg) {
    const moe__moe_cache *c = x->c;
    const moe__moe_dims *d = x->d;
    const moe__moe_loss_scales *ls = x->ls;
    int E = d->E, K = d->K, T = d->T, slots = moe__moe_slots(d);
    int64_t N = x->N, B = x->B;
    const float *sc = c->scores + n * E, *pr = c->probs + n * E, *fb = c->seq_f + (n / T) * E;
    const int *sel = c->sel + n * slots;
    moe_routing routing = moe__moe_effective_routing(d);
    for (int e = 0; e < E; e++)
        dl[e] = ls->aux * (float)E * c->f[e] / (float)N + ls->seq_aux * fb[e] / ((float)T * (float)B);
    if (d->score == MOE_SCORE_SIGMOID) {
        // probs = s / sum s: ds_j = (dprobs_j - sum_e dprobs_e probs_e) / sum s
        float ssum = 0.0f, dot = 0.0f;
        for (int e = 0; e < E; e++) ssum += sc[e], dot += dl[e] * pr[e];
        for (int e = 0; e < E; e++) dl[e] = (dl[e] - dot) / ssum;
    }
    if (routing == MOE_ROUTING_TOPK) {
        // gate_k = route_scale * s_k / S (norm_topk) or route_scale * s_k
        float gs = 0.0f, dot = 0.0f;
        for (int k = 0; k < K; k++) gs += sc[sel[k]];
        for (int k = 0; k < K; k++) dot += dg[k] * d->route_scale * sc[sel[k]] / gs;
        for (int k = 0; k < K; k++)
            dl[sel[k]] += d->norm_topk ? (dg[k] * d->route_scale - dot) / gs : dg[k] * d->route_scale;
    } else {
        for (int e = 0; e < E; e++) dl[e] += dg[e] * d->route_scale;
    }
    if (d->score == MOE_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) dl[e] *= sc[e] * (1.0f - sc[e]);
    } else {
        // p = softmax(logits): dlogit_e = p_e (dp_e - sum_j p_j dp_j)
        float pdp = 0.0f;
        for (int e = 0; e < E; e++) pdp += sc[e] * dl[e];
        for (int e = 0; e < E; e++) dl[e] = sc[e] * (dl[e] - pdp);
    }
}

void moe__router_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *x,
                          const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N,
                          const moe__moe_loss_scales *ls) {
    int E = d->E, C = d->C, slots = moe__moe_slots(d);
    moe_routing routing = moe__moe_effective_routing(d);
    float *gimp = s->gvec, *gload = s->gvec + E;
    if (routing == MOE_ROUTING_NOISY_TOPK) {
        cv_squared(c->imp, E, gimp);
        cv_squared(c->loadest, E, gload);
        for (int e = 0; e < E; e++) gimp[e] *= ls->importance, gload[e] *= ls->load;
    }
    token_grad_ctx ctx = {c, d, ls, gimp, gload, N, N / d->T};
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *l = c->logits + n * E, *dg = s->dgate + n * slots;
        float *dl = s->dlogits + n * E; // d/dscores first, d/dlogits at the end
        for (int e = 0; e < E; e++) dl[e] = 0.0f;
        if (routing == MOE_ROUTING_NOISY_TOPK) noisy_token_backward(dl, s->dnoise + n * E, &ctx, n, dg);
        else clean_token_backward(dl, &ctx, n, dg);
        // z = mean_n lse_n^2: dz / dlogit_ne = 2 lse_n softmax(logits_n)_e / N
        float zc = ls->z * 2.0f * c->lse[n] / (float)N;
        for (int e = 0; e < E; e++) dl[e] += zc * expf(l[e] - c->lse[n]);
    }
    // logits = xr Wg^T (and noise_raw = xr Wn^T)
    int jit = jitter_on(d);
    const float *xr = jit ? c->xr : x;
    float *dxr = jit ? s->dxr : dx;
    if (jit) memset(s->dxr, 0, (size_t)N * C * sizeof(float));
    moe__matmul_backward(dxr, g->wg, s->dlogits, xr, w->wg, N, C, E);
    if (routing == MOE_ROUTING_NOISY_TOPK) moe__matmul_backward(dxr, g->wnoise, s->dnoise, xr, w->wnoise, N, C, E);
    if (jit) {
        // xr = x * jit
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * C; i++) dx[i] += s->dxr[i] * c->jit[i];
    }
}

/* ---------------------------------------------------------------- aux-loss-free bias */

void moe__router_bias_update(float *bias, const int64_t *load, int E, float rate) {
    // DeepSeek-V3: b_e += rate * sign(mean load - load_e); the bias selects, never weights
    double mean = 0.0;
    for (int e = 0; e < E; e++) mean += (double)load[e];
    mean /= E;
    for (int e = 0; e < E; e++) bias[e] += rate * (float)(((double)load[e] < mean) - ((double)load[e] > mean));
}
