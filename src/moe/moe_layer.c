/*
 * moe_layer.c — the Mixture-of-Experts FFN layer: router (router.c), capacity and dispatch
 * (dispatch.c), experts, combine, and shared experts.
 *
 *   kept assignments are gathered into expert-contiguous rows; each expert is one SwiGLU
 *   (three GEMMs) on its rows, never a dense all-experts compute; the combine is a per-token
 *   weighted sum over its slots, in slot order (deterministic, no atomics);
 *   S shared experts (DeepSeekMoE) are one fused SwiGLU of width S*F on every token, added.
 *
 * Backward: dx accumulates; parameter gradients accumulate; scratch is overwritten.
 */
#include "moe/moe_layer.h"
#include "nn/nn.h"
#include "dist/dist.h"

#include <math.h>
#include <string.h>

void moe__experts_forward(float *y, float *h1, float *h3, float *act, const float *x, const int64_t *off, int n,
                          const moe__moe_weights *w, const moe__moe_dims *d) {
    for (int e = 0; d->expert_ready && e < n; e++)
        if (off[e + 1] > off[e]) d->expert_ready(d->expert_ctx, e);
    moe__ffn_forward_blocks(y, h1, h3, act, x, w->w1, w->w3, w->w2, off, n, d->C, d->F, 0);
}

void moe__experts_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy, const float *x,
                           const float *h1, const float *h3, const float *act, const int64_t *off, int n,
                           const moe__moe_weights *w, const moe__moe_dims *d) {
    moe__ffn_backward_blocks(dx, g->w1, g->w3, g->w2, s->dact, s->dh1, s->dh3, dy, x, h1, h3, act, w->w1, w->w3,
                             w->w2, off, n, d->C, d->F);
}

/* y += the shared experts' output (times its gate with shared_gate: Qwen2-MoE). */
static void shared_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                           const moe__moe_dims *d, int64_t N) {
    int C = d->C;
    double t = moe__prof_begin(d->prof);
    if (d->SF > 0 && !d->shared_gate)
        moe__ffn_forward(y, c->sh1, c->sh3, c->sact, x, w->sw1, w->sw3, w->sw2, N, C, d->SF, 1);
    if (d->SF > 0 && d->shared_gate) { // y_n += sigmoid(x_n . sg) sy_n
        moe__ffn_forward(c->sy, c->sh1, c->sh3, c->sact, x, w->sw1, w->sw3, w->sw2, N, C, d->SF, 0);
        moe__matmul_forward(c->sgate, x, w->sg, N, C, 1, 0); // the gate's logit, then its sigmoid
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const float *sy = c->sy + n * C;
            float g = c->sgate[n] = 1.0f / (1.0f + expf(-c->sgate[n])), *yn = y + n * C;
            for (int i = 0; i < C; i++) yn[i] += g * sy[i];
        }
    }
    moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
}

moe_status moe__moe_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                            const moe__moe_dims *d, int64_t N) {
    // x and y are (N,C); experts w1, w3 are (E,F,C), w2 is (E,C,F)
    int E = d->E, C = d->C, slots = moe__moe_slots(d);
    c->n_tokens = N;
    double t = moe__prof_begin(d->prof);
    moe__router_forward(c, x, w, d, N);
    moe__prof_end(d->prof, MOE_PHASE_ROUTER, t);
    t = moe__prof_begin(d->prof);
    moe__dispatch(c, d, N);
    moe__router_losses(c, d, N);
    int64_t R = c->offsets[E];
    if (d->ep > 1) { // gather, experts and combine through the ep group (moe_ep.c)
        moe__prof_end(d->prof, MOE_PHASE_DISPATCH, t);
        t = moe__prof_begin(d->prof);
        moe_status st = moe__ep_forward(y, c, x, w, d, N);
        moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
        if (st != MOE_STATUS_OK) return st;
        shared_forward(y, c, x, w, d, N);
        return MOE_STATUS_OK;
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < R; r++) memcpy(c->xe + r * C, x + (int64_t)c->row_token[r] * C, (size_t)C * sizeof(float));
    moe__prof_end(d->prof, MOE_PHASE_DISPATCH, t);
    t = moe__prof_begin(d->prof);
    moe__experts_forward(c->ye, c->h1, c->h3, c->act, c->xe, c->offsets, E, w, d);
    moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
    t = moe__prof_begin(d->prof);
    // combine: y_n = sum_s gate_ns ye_row(n,s)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *yn = y + n * C;
        for (int i = 0; i < C; i++) yn[i] = 0.0f;
        for (int s = 0; s < slots; s++) {
            int r = c->row_of[n * slots + s];
            if (r < 0) continue;
            float g = c->gate[n * slots + s];
            const float *ye = c->ye + (int64_t)r * C;
            for (int i = 0; i < C; i++) yn[i] += g * ye[i];
        }
    }
    moe__prof_end(d->prof, MOE_PHASE_COMBINE, t);
    shared_forward(y, c, x, w, d, N);
    return MOE_STATUS_OK;
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

moe_status moe__moe_forward_ref(float *y, const moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                                const moe__moe_dims *d, int64_t N) {
    int C = d->C, F = d->F, SF = d->SF, slots = moe__moe_slots(d);
    double *acc = malloc((size_t)C * sizeof(double));
    if (!acc) return moe__err(MOE_STATUS_NOMEM, "MoE reference forward: cannot allocate %d doubles", C);
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        for (int i = 0; i < C; i++) acc[i] = 0.0;
        for (int s = 0; s < slots; s++) {
            if (c->row_of[n * slots + s] < 0) continue;
            int e = c->sel[n * slots + s];
            ffn_token_ref(acc, xn, w->w1 + (int64_t)e * F * C, w->w3 + (int64_t)e * F * C,
                          w->w2 + (int64_t)e * C * F, C, F, c->gate[n * slots + s]);
        }
        double sg = 1.0;
        if (SF > 0 && d->shared_gate) {
            double z = 0;
            for (int i = 0; i < C; i++) z += (double)xn[i] * w->sg[i];
            sg = 1.0 / (1.0 + exp(-z));
        }
        if (SF > 0) ffn_token_ref(acc, xn, w->sw1, w->sw3, w->sw2, C, SF, sg);
        for (int i = 0; i < C; i++) y[n * C + i] = (float)acc[i];
    }
    free(acc);
    return MOE_STATUS_OK;
}

/* y_n += g_n sy_n with g_n = sigmoid(x_n . sg): dsy_n = g_n dy_n (into dsy, the caller's scratch
 * of N rows, free before the combine's), dz_n = (dy_n . sy_n) g_n (1 - g_n) (into dz), then the
 * gate's linear map backward: dsg += dz^T x, dx += dz sg. */
static void shared_gate_backward(float *dx, float *dsg, float *dsy, float *dz, const float *dy, const float *x,
                                 const float *sg, const moe__moe_cache *c, int64_t N, int C) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *dyn = dy + n * C, *sy = c->sy + n * C;
        float g = c->sgate[n], dot = 0.0f, *d = dsy + n * C;
        for (int i = 0; i < C; i++) {
            dot += dyn[i] * sy[i];
            d[i] = g * dyn[i];
        }
        dz[n] = dot * g * (1.0f - g);
    }
    moe__matmul_backward(dx, dsg, dz, x, sg, N, C, 1);
}

/* The routed experts' backward on one process: the combine (dgate of every slot, d expert
 * output), the experts, and dx of every kept slot's row added to its token. */
static void routed_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                            const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int E = d->E, C = d->C, slots = moe__moe_slots(d);
    int64_t R = c->offsets[E];
    double t;
    t = moe__prof_begin(d->prof);
    // y_n = sum_s gate_ns ye_row: dye_row = gate_ns dy_n, dgate_ns = dy_n . ye_row (0 if not kept)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *dyn = dy + n * C;
        for (int k = 0; k < slots; k++) {
            int r = c->row_of[n * slots + k];
            if (r < 0) {
                s->dgate[n * slots + k] = 0.0f;
                continue;
            }
            const float *ye = c->ye + (int64_t)r * C;
            float *dye = s->dye + (int64_t)r * C;
            float gw = c->gate[n * slots + k], dot = 0.0f;
            for (int i = 0; i < C; i++) {
                dye[i] = gw * dyn[i];
                dot += dyn[i] * ye[i];
            }
            s->dgate[n * slots + k] = dot;
        }
    }
    moe__prof_end(d->prof, MOE_PHASE_COMBINE, t);
    t = moe__prof_begin(d->prof);
    memset(s->dxe, 0, (size_t)R * C * sizeof(float));
    moe__experts_backward(s->dxe, g, s, s->dye, c->xe, c->h1, c->h3, c->act, c->offsets, E, w, d);
    moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
    t = moe__prof_begin(d->prof);
    // xe_row = x_n: dx_n += dxe_row for each kept slot of token n
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        float *dxn = dx + n * C;
        for (int k = 0; k < slots; k++) {
            int r = c->row_of[n * slots + k];
            if (r < 0) continue;
            const float *dxe = s->dxe + (int64_t)r * C;
            for (int i = 0; i < C; i++) dxn[i] += dxe[i];
        }
    }
    moe__prof_end(d->prof, MOE_PHASE_DISPATCH, t);
}

moe_status moe__moe_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                             const float *x, const moe__moe_weights *w, const moe__moe_cache *c,
                             const moe__moe_dims *d, int64_t N, const moe__moe_loss_scales *ls) {
    int C = d->C;
    // y += shared(x), or y += sigmoid(x . sg) shared(x)
    double t = moe__prof_begin(d->prof);
    const float *dys = dy;
    if (d->SF > 0 && d->shared_gate) {
        shared_gate_backward(dx, g->sg, s->dye, s->dgate, dy, x, w->sg, c, N, C);
        dys = s->dye;
    }
    if (d->SF > 0)
        moe__ffn_backward(dx, g->sw1, g->sw3, g->sw2, s->dact, s->dh1, s->dh3, dys, x, c->sh1, c->sh3, c->sact,
                          w->sw1, w->sw3, w->sw2, N, C, d->SF);
    moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
    if (d->ep > 1) { // through the ep group (moe_ep.c): every slot's dgate, dx, the experts' gradients
        t = moe__prof_begin(d->prof);
        moe_status st = moe__ep_backward(dx, g, s, dy, w, c, d, N);
        moe__prof_end(d->prof, MOE_PHASE_EXPERTS, t);
        if (st != MOE_STATUS_OK) return st;
    } else {
        routed_backward(dx, g, s, dy, w, c, d, N);
    }
    t = moe__prof_begin(d->prof);
    moe__router_backward(dx, g, s, x, w, c, d, N, ls);
    moe__prof_end(d->prof, MOE_PHASE_ROUTER, t);
    return MOE_STATUS_OK;
}

/* ---------------------------------------------------------------- memory plan */

void moe__moe_plan_cache(moe__planner *p, moe__moe_cache *c, const moe__moe_dims *d, int64_t N, int64_t P) {
    int64_t B = N / d->T, C = d->C, E = d->E, F = d->F, SF = d->SF;
    int noisy = d->routing == MOE_ROUTING_NOISY_TOPK, jitter = d->jitter_eps > 0.0f;
    c->xr = jitter ? MOE_TAKE_F(p, N * C) : NULL;
    c->jit = jitter ? MOE_TAKE_F(p, N * C) : NULL;
    c->logits = MOE_TAKE_F(p, N * E);
    c->scores = MOE_TAKE_F(p, N * E);
    c->probs = MOE_TAKE_F(p, N * E);
    c->noise_raw = noisy ? MOE_TAKE_F(p, N * E) : NULL;
    c->noise_eps = noisy ? MOE_TAKE_F(p, N * E) : NULL;
    c->noisy = noisy ? MOE_TAKE_F(p, N * E) : NULL;
    c->lse = MOE_TAKE_F(p, N);
    c->sel = MOE_TAKE_I(p, P);
    c->gate = MOE_TAKE_F(p, P);
    c->row_of = MOE_TAKE_I(p, P);
    c->row_token = MOE_TAKE_I(p, P);
    c->offsets = MOE_TAKE_I64(p, E + 1);
    c->load = MOE_TAKE_I64(p, E);
    c->f = MOE_TAKE_F(p, E);
    c->seq_f = MOE_TAKE_F(p, B * E);
    c->imp = MOE_TAKE_F(p, E);
    c->loadest = MOE_TAKE_F(p, E);
    c->xe = MOE_TAKE_F(p, P * C + (d->ep > 1 ? 2 * P : 0));
    c->ye = MOE_TAKE_F(p, P * C);
    int64_t PL = d->ep > 1 ? d->ep * P : P; // rows the experts of this rank may receive
    c->h1 = MOE_TAKE_F(p, PL * F);
    c->h3 = MOE_TAKE_F(p, PL * F);
    c->act = MOE_TAKE_F(p, PL * F);
    if (d->ep > 1) {
        c->xl = MOE_TAKE_F(p, PL * C);
        c->yl = MOE_TAKE_F(p, PL * C);
        c->perm = MOE_TAKE_I(p, PL);
        c->loff = MOE_TAKE_I64(p, E / d->ep + 1);
        c->send_rows = MOE_TAKE_I64(p, d->ep);
        c->recv_rows = MOE_TAKE_I64(p, d->ep);
        c->unit_token = MOE_TAKE_I(p, P);
        c->unit_send = MOE_TAKE_I64(p, d->ep);
        c->unit_recv = MOE_TAKE_I64(p, d->ep);
        c->ep_meta_out = MOE_TAKE_F(p, 2 * P);
        c->ep_meta = MOE_TAKE_F(p, 2 * PL);
    }
    c->sh1 = MOE_TAKE_F(p, N * SF);
    c->sh3 = MOE_TAKE_F(p, N * SF);
    c->sact = MOE_TAKE_F(p, N * SF);
    c->sy = d->shared_gate ? MOE_TAKE_F(p, N * C) : NULL;
    c->sgate = d->shared_gate ? MOE_TAKE_F(p, N) : NULL;
    c->scratch_idx = MOE_TAKE_I(p, 2 * (P > N ? P : N));
}

void moe__moe_plan_scratch(moe__planner *p, moe__moe_scratch *s, const moe__moe_dims *d, int64_t N, int64_t P) {
    int64_t C = d->C, E = d->E;
    int noisy = d->routing == MOE_ROUTING_NOISY_TOPK, jitter = d->jitter_eps > 0.0f;
    if (d->ep > 1) {
        s->dyl = MOE_TAKE_F(p, d->ep * P * C);
        s->dxl = MOE_TAKE_F(p, d->ep * P * C);
        s->ep_dgate = MOE_TAKE_F(p, d->ep * P);
        s->ep_dgate_back = MOE_TAKE_F(p, P);
    }
    s->dye = MOE_TAKE_F(p, P * C);
    s->dxe = MOE_TAKE_F(p, P * C + (d->ep > 1 ? P : 0));
    s->dgate = MOE_TAKE_F(p, P);
    s->dlogits = MOE_TAKE_F(p, N * E);
    s->dnoise = noisy ? MOE_TAKE_F(p, N * E) : NULL;
    s->dxr = jitter ? MOE_TAKE_F(p, N * C) : NULL;
    s->gvec = MOE_TAKE_F(p, 2 * E);
}

int64_t moe__moe_hidden_scratch(const moe__moe_dims *d, int64_t N, int64_t P) {
    int64_t PL = d->ep > 1 ? d->ep * P : P, a = PL * d->F, b = N * d->SF;
    return a > b ? a : b;
}
