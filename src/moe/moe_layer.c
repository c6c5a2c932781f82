/*
 * moe_layer.c — the Mixture-of-Experts FFN layer: router, capacity and dispatch, experts,
 * combine, shared experts, and the Switch auxiliary loss and router z-loss.
 *
 *   logits = x Wg^T (N,E); p = softmax(logits); top-K of p per token (ties: lower expert id);
 *   gate w_k = p_k / sum_j p_j (norm_topk) or p_k;
 *   capacity = max(min_capacity, ceil(K*N/E * cf)), cf = 0 meaning dropless; an expert over
 *   capacity keeps its assignments with the highest p (drop_policy probability, Megatron) or
 *   the earliest tokens (position); a dropped assignment contributes zero output;
 *   kept assignments are permuted into expert-contiguous rows (token order within an expert),
 *   each expert is one SwiGLU on its rows (GEMMs), and the combine is a per-token weighted sum;
 *   S shared experts are one fused SwiGLU of width S*F on every token, added to the output.
 *   aux = E * sum_e f_e P_e, f_e = load_e / (K*N) (routed, before dropping), P_e = mean_n p_ne
 *   (Switch Transformer eq. 4, Megatron normalisation); z = mean_n logsumexp(logits_n)^2
 *   (ST-MoE eq. 5).
 *
 * Backward: dx accumulates; parameter gradients accumulate; scratch is overwritten.
 */
#include "internal.h"

#include <math.h>
#include <string.h>

int moe__capacity(const moe__moe_dims *d, int64_t N, float cf) {
    if (cf <= 0.0f) return 0;
    double c = ceil((double)d->K * (double)N / (double)d->E * (double)cf);
    if (c < d->min_capacity) c = d->min_capacity;
    if (c > (double)N) c = (double)N; /* an expert never takes a token twice */
    return (int)c;
}

/* ---------------------------------------------------------------- router */

static void router_forward(moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                           const moe__moe_dims *d, int64_t N) {
    // x is (N,C), wg is (E,C), logits and probs are (N,E), topk_idx and topk_w are (N,K)
    int E = d->E, K = d->K;
    moe__matmul_forward(c->logits, x, w->wg, N, d->C, E, 0);
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *l = c->logits + n * E;
        float *p = c->probs + n * E;
        float maxv = l[0];
        for (int e = 1; e < E; e++) maxv = l[e] > maxv ? l[e] : maxv;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += expf(l[e] - maxv);
        float lse = maxv + logf(sum);
        c->lse[n] = lse;
        for (int e = 0; e < E; e++) p[e] = expf(l[e] - lse);
        // top-K by repeated selection: K is small; the first maximum wins ties
        int *idx = c->topk_idx + n * K;
        float *gw = c->topk_w + n * K;
        float sel = 0.0f;
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= idx[j] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            idx[k] = best;
            gw[k] = p[best];
            sel += p[best];
        }
        if (d->norm_topk)
            for (int k = 0; k < K; k++) gw[k] /= sel;
    }
    // statistics, summed in a fixed order
    memset(c->load, 0, (size_t)E * sizeof(int64_t));
    double z = 0.0;
    for (int64_t n = 0; n < N; n++) {
        z += (double)c->lse[n] * c->lse[n];
        for (int k = 0; k < K; k++) c->load[c->topk_idx[n * K + k]]++;
    }
    c->z = (float)(z / (double)N);
    double aux = 0.0;
    for (int e = 0; e < E; e++) {
        double P = 0.0;
        for (int64_t n = 0; n < N; n++) P += c->probs[n * E + e];
        P /= (double)N;
        c->f[e] = (float)((double)c->load[e] / ((double)K * (double)N));
        aux += (double)c->f[e] * P;
    }
    c->aux = (float)(E * aux);
}

/* ---------------------------------------------------------------- dispatch */

/* Sorts a[0..n) by decreasing probability of expert e, then increasing token (merge sort,
 * stable and allocation-free: tmp has room for n). Entries are n*K + k. */
static int prio_before(int a, int b, const float *probs, int E, int K, int e) {
    float pa = probs[(int64_t)(a / K) * E + e], pb = probs[(int64_t)(b / K) * E + e];
    if (pa != pb) return pa > pb;
    return a < b;
}

static void sort_by_priority(int *a, int *tmp, int64_t n, const float *probs, int E, int K, int e) {
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) tmp[o++] = prio_before(a[j], a[i], probs, E, K, e) ? a[j++] : a[i++];
            while (i < mid) tmp[o++] = a[i++];
            while (j < hi) tmp[o++] = a[j++];
        }
        memcpy(a, tmp, (size_t)n * sizeof(int));
    }
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static void dispatch(moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int E = d->E, K = d->K;
    int64_t A = (int64_t)K * N;
    int *list = c->scratch_idx, *tmp = c->scratch_idx + A;
    // counting sort of assignments (n*K + k) by expert, token order within an expert;
    // offsets serves as the fill cursors here and is rewritten with row offsets below
    int64_t *cur = c->offsets;
    cur[0] = 0;
    for (int e = 1; e < E; e++) cur[e] = cur[e - 1] + c->load[e - 1];
    for (int64_t a = 0; a < A; a++) list[cur[c->topk_idx[a]]++] = (int)a;
    c->capacity = moe__capacity(d, N, d->capacity_factor);
    int cap = c->capacity;
    c->dropped = 0;
    for (int64_t a = 0; a < A; a++) c->row_of[a] = -1;
    // keep at most cap per expert, then assign rows in token order
    int64_t row = 0, s0 = 0;
    for (int e = 0; e < E; e++) {
        int64_t n_e = c->load[e], keep = n_e;
        int *le = list + s0;
        s0 += n_e;
        if (cap > 0 && n_e > cap) {
            keep = cap;
            if (d->drop_policy == MOE_DROP_PROBABILITY) {
                sort_by_priority(le, tmp, n_e, c->probs, E, K, e);
                qsort(le, (size_t)keep, sizeof(int), cmp_int); // back to token order
            }
            c->dropped += n_e - keep;
        }
        c->offsets[e] = row;
        for (int64_t i = 0; i < keep; i++) {
            c->row_of[le[i]] = (int)row;
            c->row_token[row] = le[i] / K;
            row++;
        }
    }
    c->offsets[E] = row;
    // what the training capacity would drop, for dropless evaluation
    c->would_drop = 0;
    if (cap == 0) {
        int tcap = moe__capacity(d, N, d->train_capacity_factor);
        if (tcap > 0)
            for (int e = 0; e < E; e++)
                if (c->load[e] > tcap) c->would_drop += c->load[e] - tcap;
    }
}

/* ---------------------------------------------------------------- forward */

void moe__moe_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                      const moe__moe_dims *d, int64_t N) {
    // x and y are (N,C); experts w1, w3 are (E,F,C), w2 is (E,C,F)
    int E = d->E, K = d->K, C = d->C, F = d->F;
    c->n_tokens = N;
    router_forward(c, x, w, d, N);
    dispatch(c, d, N);
    int64_t R = c->offsets[E];
    // gather token rows into expert-contiguous order
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) memcpy(c->xe + r * C, x + (int64_t)c->row_token[r] * C, (size_t)C * sizeof(float));
    // one SwiGLU (three GEMMs) per expert on its rows; an expert with no rows does nothing
    for (int e = 0; e < E; e++) {
        int64_t r0 = c->offsets[e], ne = c->offsets[e + 1] - r0;
        if (ne == 0) continue;
        moe__ffn_forward(c->ye + r0 * C, c->h1 + r0 * F, c->h3 + r0 * F, c->act + r0 * F, c->xe + r0 * C,
                         w->w1 + (int64_t)e * F * C, w->w3 + (int64_t)e * F * C, w->w2 + (int64_t)e * C * F,
                         ne, C, F, 0);
    }
    // combine: y_n = sum_k w_nk ye_row(n,k), gathered per token so the sum order is fixed
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *yn = y + n * C;
        for (int i = 0; i < C; i++) yn[i] = 0.0f;
        for (int k = 0; k < K; k++) {
            int r = c->row_of[n * K + k];
            if (r < 0) continue;
            float g = c->topk_w[n * K + k];
            const float *ye = c->ye + (int64_t)r * C;
            for (int i = 0; i < C; i++) yn[i] += g * ye[i];
        }
    }
    if (d->S > 0)
        moe__ffn_forward(y, c->sh1, c->sh3, c->sact, x, w->sw1, w->sw3, w->sw2, N, C, d->S * F, 1);
}

static float silu_ref(double z) { return (float)(z / (1.0 + exp(-z))); }

static void ffn_token_ref(double *out, const float *xn, const float *w1, const float *w3, const float *w2,
                          int C, int F, double scale) {
    for (int f = 0; f < F; f++) {
        double a = 0, b = 0;
        for (int i = 0; i < C; i++) {
            a += (double)xn[i] * w1[(int64_t)f * C + i];
            b += (double)xn[i] * w3[(int64_t)f * C + i];
        }
        double h = (double)silu_ref(a) * b;
        for (int i = 0; i < C; i++) out[i] += scale * h * w2[(int64_t)i * F + f];
    }
}

void moe__moe_forward_ref(float *y, const moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                          const moe__moe_dims *d, int64_t N) {
    int K = d->K, C = d->C, F = d->F, SF = d->S * d->F;
    double *acc = malloc((size_t)C * sizeof(double));
    MOE_ASSERT(acc);
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        for (int i = 0; i < C; i++) acc[i] = 0.0;
        for (int k = 0; k < K; k++) {
            if (c->row_of[n * K + k] < 0) continue;
            int e = c->topk_idx[n * K + k];
            ffn_token_ref(acc, xn, w->w1 + (int64_t)e * F * C, w->w3 + (int64_t)e * F * C,
                          w->w2 + (int64_t)e * C * F, C, F, c->topk_w[n * K + k]);
        }
        if (d->S > 0) ffn_token_ref(acc, xn, w->sw1, w->sw3, w->sw2, C, SF, 1.0);
        for (int i = 0; i < C; i++) y[n * C + i] = (float)acc[i];
    }
    free(acc);
}

/* ---------------------------------------------------------------- backward */

void moe__moe_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                       const float *x, const moe__moe_weights *w, const moe__moe_cache *c,
                       const moe__moe_dims *d, int64_t N, float aux_scale, float z_scale) {
    int E = d->E, K = d->K, C = d->C, F = d->F;
    int64_t R = c->offsets[E];
    // y += shared(x)
    if (d->S > 0)
        moe__ffn_backward(dx, g->sw1, g->sw3, g->sw2, s->dact, s->dh1, s->dh3, dy, x, c->sh1, c->sh3, c->sact,
                          w->sw1, w->sw3, w->sw2, N, C, d->S * F);
    // y_n = sum_k w_nk ye_row: dye_row = w_nk dy_n, dw_nk = dy_n . ye_row (0 when dropped)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *dyn = dy + n * C;
        for (int k = 0; k < K; k++) {
            int r = c->row_of[n * K + k];
            if (r < 0) {
                s->dw[n * K + k] = 0.0f;
                continue;
            }
            const float *ye = c->ye + (int64_t)r * C;
            float *dye = s->dye + (int64_t)r * C;
            float gw = c->topk_w[n * K + k], dot = 0.0f;
            for (int i = 0; i < C; i++) {
                dye[i] = gw * dyn[i];
                dot += dyn[i] * ye[i];
            }
            s->dw[n * K + k] = dot;
        }
    }
    // experts
    memset(s->dxe, 0, (size_t)R * C * sizeof(float));
    for (int e = 0; e < E; e++) {
        int64_t r0 = c->offsets[e], ne = c->offsets[e + 1] - r0;
        if (ne == 0) continue;
        int64_t wo = (int64_t)e * F * C;
        moe__ffn_backward(s->dxe + r0 * C, g->w1 + wo, g->w3 + wo, g->w2 + wo, s->dact, s->dh1, s->dh3,
                          s->dye + r0 * C, c->xe + r0 * C, c->h1 + r0 * F, c->h3 + r0 * F, c->act + r0 * F,
                          w->w1 + wo, w->w3 + wo, w->w2 + wo, ne, C, F);
    }
    // xe_row = x_n: dx_n += dxe_row for each kept assignment of token n
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *dxn = dx + n * C;
        for (int k = 0; k < K; k++) {
            int r = c->row_of[n * K + k];
            if (r < 0) continue;
            const float *dxe = s->dxe + (int64_t)r * C;
            for (int i = 0; i < C; i++) dxn[i] += dxe[i];
        }
    }
    // gate weights and losses back to the router logits
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *p = c->probs + n * E;
        const int *idx = c->topk_idx + n * K;
        const float *gw = c->topk_w + n * K;
        const float *dw = s->dw + n * K;
        float *dl = s->dlogits + n * E; // holds d/dp first, then d/dlogits
        for (int e = 0; e < E; e++) dl[e] = 0.0f;
        if (d->norm_topk) {
            // w_k = p_k / S with S = sum_j p_j: dp_k = (dw_k - sum_j dw_j w_j) / S
            float sel = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) {
                sel += p[idx[k]];
                dot += dw[k] * gw[k];
            }
            for (int k = 0; k < K; k++) dl[idx[k]] += (dw[k] - dot) / sel;
        } else {
            for (int k = 0; k < K; k++) dl[idx[k]] += dw[k];
        }
        // aux = E sum_e f_e (1/N) sum_n p_ne: d aux / d p_ne = E f_e / N
        for (int e = 0; e < E; e++) dl[e] += aux_scale * (float)E * c->f[e] / (float)N;
        // p = softmax(logits): dlogit_e = p_e (dp_e - sum_j p_j dp_j)
        float pdp = 0.0f;
        for (int e = 0; e < E; e++) pdp += p[e] * dl[e];
        // z = mean_n lse_n^2: dz / dlogit_ne = 2 lse_n p_ne / N
        float zc = z_scale * 2.0f * c->lse[n] / (float)N;
        for (int e = 0; e < E; e++) dl[e] = p[e] * (dl[e] - pdp) + zc * p[e];
    }
    // logits = x Wg^T
    moe__matmul_backward(dx, g->wg, s->dlogits, x, w->wg, N, C, E);
}
