/*
 * test_layers.c — every layer against an independent reference:
 *   - BLAS matmul against the plain _ref loops (odd shapes);
 *   - finite-difference gradient checks (central differences, tolerance atol + rtol*|ref|) of
 *     RMSNorm, RoPE + causal attention, the SwiGLU FFN, cross-entropy, and the MoE layer with
 *     K = 1, 2 and E, with and without renormalisation, dropless and with dropping by
 *     probability or position, with shared experts, through the aux and z losses;
 *   - the permuted MoE forward against the token-by-token _ref forward;
 *   - routing edge cases: every token to one expert, experts with no tokens, capacity 1, K = E;
 *   - the whole model: finite differences on sampled coordinates of every tensor.
 * Routing is piecewise constant: a finite difference whose perturbation changes any routing
 * decision (selected experts or kept/dropped) measures a jump, not a slope, and is skipped; a
 * test fails if more than half of its samples are skipped.
 */
#include "check.h"
#include "core/core.h"
#include "nn/nn.h"
#include "moe/moe_layer.h"
#include "moe/select.h"
#include "model/model.h"
#include "cpu/cpu.h"

#include <string.h>

static moe__rng rng;

static float *randn(int64_t n, float std) {
    float *p = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = std * moe__rng_normal(&rng);
    return p;
}
static float *zeros(int64_t n) { return calloc((size_t)(n ? n : 1), sizeof(float)); }

static double dot_d(const float *a, const float *b, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* ---------------------------------------------------------------- generic FD */

typedef double (*loss_fn)(void *ctx);
typedef uint64_t (*sig_fn)(void *ctx); /* routing signature after the last loss_fn call */

static void fd_check(const char *what, float *param, const float *grad, int64_t n, int samples, loss_fn f,
                     sig_fn sig, void *ctx, float eps, double atol, double rtol) {
    uint64_t base = 0;
    if (sig) {
        f(ctx);
        base = sig(ctx);
    }
    int skipped = 0, done = 0;
    double worst = 0;
    for (int s = 0; s < samples; s++) {
        int64_t i = samples >= n ? s : (int64_t)(moe__rng_u64(&rng) % (uint64_t)n);
        if (i >= n) break;
        float orig = param[i];
        param[i] = orig + eps;
        double lp = f(ctx);
        uint64_t sp = sig ? sig(ctx) : 0;
        param[i] = orig - eps;
        double lm = f(ctx);
        uint64_t sm = sig ? sig(ctx) : 0;
        param[i] = orig;
        if (sig && (sp != base || sm != base)) {
            skipped++;
            continue;
        }
        double num = (lp - lm) / (2.0 * eps);
        double err = fabs(num - grad[i]);
        if (err > worst) worst = err;
        done++;
        CHECK(err <= atol + rtol * fabs(num), "%s[%lld]: analytic %.6g numeric %.6g", what, (long long)i, grad[i], num);
    }
    CHECK(skipped * 2 <= samples, "%s: %d of %d samples changed the routing", what, skipped, samples);
    CHECK(done > 0, "%s: no sample checked", what);
    (void)worst;
}

/* ---------------------------------------------------------------- matmul */

static void test_matmul(void) {
    int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 9}, {64, 48, 80}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int N = shapes[s][0], I = shapes[s][1], O = shapes[s][2];
        float *x = randn((int64_t)N * I, 1), *w = randn((int64_t)O * I, 1), *dout = randn((int64_t)N * O, 1);
        float *o1 = randn((int64_t)N * O, 1), *o2 = malloc((size_t)N * O * sizeof(float));
        memcpy(o2, o1, (size_t)N * O * sizeof(float));
        moe__matmul_forward(o1, x, w, N, I, O, 1);
        moe__matmul_forward_ref(o2, x, w, N, I, O, 1);
        CHECK_ARRAYS(o1, o2, (int64_t)N * O, 1e-4, 1e-4, "matmul forward vs ref");
        float *dx1 = zeros((int64_t)N * I), *dx2 = zeros((int64_t)N * I), *dw1 = zeros((int64_t)O * I),
              *dw2 = zeros((int64_t)O * I);
        moe__matmul_backward(dx1, dw1, dout, x, w, N, I, O);
        moe__matmul_backward_ref(dx2, dw2, dout, x, w, N, I, O);
        CHECK_ARRAYS(dx1, dx2, (int64_t)N * I, 1e-4, 1e-4, "matmul dx vs ref");
        CHECK_ARRAYS(dw1, dw2, (int64_t)O * I, 1e-4, 1e-4, "matmul dw vs ref");
        free(x), free(w), free(dout), free(o1), free(o2), free(dx1), free(dx2), free(dw1), free(dw2);
    }
}

/* ---------------------------------------------------------------- RMSNorm */

typedef struct {
    int64_t N;
    int C;
    float *x, *w, *out, *rstd, *r;
} norm_ctx;

static double norm_loss(void *p) {
    norm_ctx *c = p;
    moe__rmsnorm_forward(c->out, c->rstd, c->x, c->w, c->N, c->C, 1e-5f);
    return dot_d(c->out, c->r, c->N * c->C);
}

static void test_rmsnorm(void) {
    norm_ctx c = {5, 12, NULL, NULL, NULL, NULL, NULL};
    int64_t n = c.N * c.C;
    c.x = randn(n, 1), c.w = randn(c.C, 1), c.out = zeros(n), c.rstd = zeros(c.N), c.r = randn(n, 1);
    float *dx = zeros(n), *dw = zeros(c.C);
    norm_loss(&c);
    moe__rmsnorm_backward(dx, dw, c.r, c.x, c.w, c.rstd, c.N, c.C);
    fd_check("rmsnorm dx", c.x, dx, n, 60, norm_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    fd_check("rmsnorm dw", c.w, dw, c.C, 12, norm_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    free(c.x), free(c.w), free(c.out), free(c.rstd), free(c.r), free(dx), free(dw);
}

/* ---------------------------------------------------------------- RoPE + attention */

typedef struct {
    int B, T, C, H, Hkv;
    float *q, *k, *v, *qr, *kr, *out, *att, *cos_t, *sin_t, *r;
} attn_ctx;

static double attn_loss(void *p) {
    attn_ctx *c = p;
    size_t n = (size_t)c->B * c->T * c->C, nk = (size_t)c->B * c->T * (c->C / c->H) * c->Hkv;
    memcpy(c->qr, c->q, n * sizeof(float));
    memcpy(c->kr, c->k, nk * sizeof(float));
    moe__rope_forward(c->qr, c->cos_t, c->sin_t, c->B, c->T, c->C, c->H);
    moe__rope_forward(c->kr, c->cos_t, c->sin_t, c->B, c->T, c->C / c->H * c->Hkv, c->Hkv);
    moe__attention_forward(c->out, c->att, c->qr, c->kr, c->v, c->B, c->T, c->C, c->H, c->Hkv);
    return dot_d(c->out, c->r, (int64_t)n);
}

/* Hkv key/value heads (Hkv = H: multi-head; fewer: grouped-query, each shared by H/Hkv heads). */
static void test_attention_shape(int B, int T, int C, int H, int Hkv, int samples) {
    attn_ctx c = {B, T, C, H, Hkv, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int D = c.C / c.H, KC = D * Hkv;
    int64_t n = (int64_t)c.B * c.T * c.C, nk = (int64_t)c.B * c.T * KC;
    c.q = randn(n, 1), c.k = randn(nk, 1), c.v = randn(nk, 1), c.qr = zeros(n), c.kr = zeros(nk), c.out = zeros(n);
    c.att = zeros((int64_t)c.B * c.H * c.T * c.T), c.r = randn(n, 1);
    c.cos_t = zeros((int64_t)c.T * D / 2), c.sin_t = zeros((int64_t)c.T * D / 2);
    moe__rope_tables(c.cos_t, c.sin_t, c.T, D, 10000.0f);
    attn_loss(&c);
    // causality: changing the last position's k and v leaves earlier outputs unchanged
    float *before = malloc((size_t)n * sizeof(float));
    memcpy(before, c.out, (size_t)n * sizeof(float));
    for (int i = 0; i < KC; i++) c.v[(int64_t)(c.T - 1) * KC + i] += 1.0f, c.k[(int64_t)(c.T - 1) * KC + i] += 1.0f;
    attn_loss(&c);
    CHECK_ARRAYS(c.out, before, (int64_t)(c.T - 1) * c.C, 0, 0, "attention is causal");
    for (int i = 0; i < KC; i++) c.v[(int64_t)(c.T - 1) * KC + i] -= 1.0f, c.k[(int64_t)(c.T - 1) * KC + i] -= 1.0f;
    free(before);
    attn_loss(&c);
    // grouped-query attention is multi-head attention with each key/value head repeated
    if (Hkv < H) {
        attn_ctx r = c;
        r.Hkv = H;
        r.k = zeros(n), r.v = zeros(n), r.kr = zeros(n), r.out = zeros(n), r.att = zeros((int64_t)c.B * c.H * c.T * c.T);
        for (int64_t bt = 0; bt < (int64_t)c.B * c.T; bt++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < D; i++) {
                    r.k[bt * C + h * D + i] = c.k[bt * KC + h / (H / Hkv) * D + i];
                    r.v[bt * C + h * D + i] = c.v[bt * KC + h / (H / Hkv) * D + i];
                }
        attn_loss(&r);
        CHECK_ARRAYS(c.out, r.out, n, 1e-6, 1e-5, "grouped-query attention = repeated key/value heads");
        free(r.k), free(r.v), free(r.kr), free(r.out), free(r.att);
    }
    // the BLAS-tiled kernel against the plain loops, forward and backward, and the tiled forward
    float *out_ref = zeros(n), *att_ref = zeros((int64_t)c.B * c.H * c.T * c.T);
    moe__attention_forward_ref(out_ref, att_ref, c.qr, c.kr, c.v, c.B, c.T, c.C, c.H, c.Hkv);
    CHECK_ARRAYS(c.out, out_ref, n, 1e-6, 1e-5, "attention forward vs ref");
    CHECK_ARRAYS(c.att, att_ref, (int64_t)c.B * c.H * c.T * c.T, 1e-6, 1e-5, "attention probabilities vs ref");
    float *scratch = zeros((int64_t)4 * moe__attention_tile() * c.T), *out_tiled = zeros(n);
    moe__attention_forward_tiled(out_tiled, scratch, 4, c.qr, c.kr, c.v, c.B, c.T, c.C, c.H, c.Hkv);
    CHECK_ARRAYS(out_tiled, c.out, n, 0, 0, "the tiled attention forward (inference) = the full one, bit for bit");
    free(scratch), free(out_tiled);
    float *dq = zeros(n), *dk = zeros(nk), *dv = zeros(nk), *datt = zeros((int64_t)c.B * c.H * c.T * c.T);
    float *dq2 = zeros(n), *dk2 = zeros(nk), *dv2 = zeros(nk);
    moe__attention_backward(dq, dk, dv, datt, c.r, c.qr, c.kr, c.v, c.att, c.B, c.T, c.C, c.H, c.Hkv);
    moe__attention_backward_ref(dq2, dk2, dv2, c.r, c.qr, c.kr, c.v, c.att, c.B, c.T, c.C, c.H, c.Hkv);
    CHECK_ARRAYS(dq, dq2, n, 1e-5, 1e-4, "attention dq vs ref");
    CHECK_ARRAYS(dk, dk2, nk, 1e-5, 1e-4, "attention dk vs ref");
    CHECK_ARRAYS(dv, dv2, nk, 1e-5, 1e-4, "attention dv vs ref");
    free(out_ref), free(att_ref), free(datt), free(dq2), free(dk2), free(dv2);
    moe__rope_backward(dq, c.cos_t, c.sin_t, c.B, c.T, c.C, c.H);
    moe__rope_backward(dk, c.cos_t, c.sin_t, c.B, c.T, KC, c.Hkv);
    fd_check("attention dq", c.q, dq, n, samples, attn_loss, NULL, &c, 1e-2f, 2e-3, 2e-2);
    fd_check("attention dk", c.k, dk, nk, samples, attn_loss, NULL, &c, 1e-2f, 2e-3, 2e-2);
    fd_check("attention dv", c.v, dv, nk, samples, attn_loss, NULL, &c, 1e-2f, 2e-3, 2e-2);
    free(c.q), free(c.k), free(c.v), free(c.qr), free(c.kr), free(c.out), free(c.att), free(c.r), free(c.cos_t),
        free(c.sin_t), free(dq), free(dk), free(dv);
}

static void test_attention(void) {
    test_attention_shape(2, 7, 12, 2, 2, 80);
    test_attention_shape(1, 150, 16, 2, 2, 40); // more than two row tiles, the last one partial
    test_attention_shape(2, 9, 24, 6, 2, 80);   // grouped-query: 6 heads on 2 key/value heads
    test_attention_shape(1, 70, 16, 4, 1, 40);  // multi-query: one key/value head, two tiles
}

/* ---------------------------------------------------------------- FFN, cross-entropy */

typedef struct {
    int64_t N;
    int C, F;
    float *x, *w1, *w3, *w2, *h1, *h3, *act, *y, *r;
} ffn_ctx;

static double ffn_loss(void *p) {
    ffn_ctx *c = p;
    moe__ffn_forward(c->y, c->h1, c->h3, c->act, c->x, c->w1, c->w3, c->w2, c->N, c->C, c->F, 0);
    return dot_d(c->y, c->r, c->N * c->C);
}

static void test_ffn(void) {
    ffn_ctx c = {6, 8, 10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int64_t nx = c.N * c.C, nw = (int64_t)c.F * c.C, nh = c.N * c.F;
    c.x = randn(nx, 1), c.w1 = randn(nw, 0.5f), c.w3 = randn(nw, 0.5f), c.w2 = randn(nw, 0.5f);
    c.h1 = zeros(nh), c.h3 = zeros(nh), c.act = zeros(nh), c.y = zeros(nx), c.r = randn(nx, 1);
    float *dx = zeros(nx), *dw1 = zeros(nw), *dw3 = zeros(nw), *dw2 = zeros(nw);
    float *s1 = zeros(nh), *s2 = zeros(nh), *s3 = zeros(nh);
    ffn_loss(&c);
    moe__ffn_backward(dx, dw1, dw3, dw2, s1, s2, s3, c.r, c.x, c.h1, c.h3, c.act, c.w1, c.w3, c.w2, c.N, c.C, c.F);
    fd_check("ffn dx", c.x, dx, nx, 40, ffn_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    fd_check("ffn dw1", c.w1, dw1, nw, 40, ffn_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    fd_check("ffn dw3", c.w3, dw3, nw, 40, ffn_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    fd_check("ffn dw2", c.w2, dw2, nw, 40, ffn_loss, NULL, &c, 1e-2f, 1e-3, 1e-2);
    free(c.x), free(c.w1), free(c.w3), free(c.w2), free(c.h1), free(c.h3), free(c.act), free(c.y), free(c.r);
    free(dx), free(dw1), free(dw3), free(dw2), free(s1), free(s2), free(s3);
}

typedef struct {
    int64_t N;
    int V;
    float *logits, *rows;
    int *tgt;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    return moe__crossentropy(NULL, c->rows, c->logits, c->tgt, c->N, c->V, 1.0f);
}

static void test_crossentropy(void) {
    ce_ctx c = {5, 11, NULL, NULL, NULL};
    c.logits = randn(c.N * c.V, 2), c.rows = zeros(c.N);
    c.tgt = malloc((size_t)c.N * sizeof(int));
    for (int i = 0; i < c.N; i++) c.tgt[i] = (i * 7) % c.V;
    float *d = zeros(c.N * c.V);
    double loss = moe__crossentropy(d, c.rows, c.logits, c.tgt, c.N, c.V, 1.0f);
    // against a direct double-precision computation
    double want = 0;
    for (int n = 0; n < c.N; n++) {
        double s = 0;
        for (int v = 0; v < c.V; v++) s += exp((double)c.logits[n * c.V + v]);
        want += log(s) - c.logits[n * c.V + c.tgt[n]];
    }
    CHECK_CLOSE(loss, want / c.N, 1e-5, 1e-5, "cross-entropy value");
    fd_check("cross-entropy dlogits", c.logits, d, c.N * c.V, 55, ce_loss, NULL, &c, 1e-2f, 1e-4, 1e-2);
    free(c.logits), free(c.rows), free(c.tgt), free(d);
}

/* ---------------------------------------------------------------- MoE layer */

typedef struct {
    moe__moe_dims d;
    int64_t N;
    float *x, *y, *r;
    moe__moe_weights w, g;
    moe__moe_cache c;
    moe__moe_scratch s;
    char *arena;             /* c and s, from moe__moe_plan_cache and moe__moe_plan_scratch */
    moe__moe_loss_scales ls; /* loss coefficients: the checked function is y.r + sum ls.x * loss_x */
} moe_ctx;

/* Allocates a layer for every method: slots up to E, all optional buffers present. */
static void moe_alloc(moe_ctx *m, int64_t N, int C, int E, int K, int F, int S, int T) {
    memset(m, 0, sizeof *m);
    m->N = N;
    m->d.E = E, m->d.K = K, m->d.F = F, m->d.SF = S * F, m->d.C = C, m->d.T = T;
    m->d.norm_topk = 1;
    m->d.route_scale = 1.0f;
    m->d.min_capacity = 1;
    m->d.training = 1;
    m->d.noise_seed = 77;
    int64_t P = (int64_t)E * N, SF = (int64_t)S * F;
    m->x = randn(N * C, 1), m->y = zeros(N * C), m->r = randn(N * C, 1);
    m->w.wg = randn((int64_t)E * C, 1), m->w.wnoise = randn((int64_t)E * C, 0.5f), m->w.bias = NULL;
    m->w.w1 = randn((int64_t)E * F * C, 0.5f), m->w.w3 = randn((int64_t)E * F * C, 0.5f);
    m->w.w2 = randn((int64_t)E * F * C, 0.5f);
    m->w.sw1 = randn(SF * C, 0.5f), m->w.sw3 = randn(SF * C, 0.5f), m->w.sw2 = randn(SF * C, 0.5f);
    m->w.sg = randn(C, 0.5f), m->g.sg = zeros(C);
    m->g.wg = zeros((int64_t)E * C), m->g.wnoise = zeros((int64_t)E * C), m->g.w1 = zeros((int64_t)E * F * C);
    m->g.w3 = zeros((int64_t)E * F * C), m->g.w2 = zeros((int64_t)E * F * C);
    m->g.sw1 = zeros(SF * C), m->g.sw3 = zeros(SF * C), m->g.sw2 = zeros(SF * C);
    // the cache and scratch come from the layer's own memory plan (the one the model uses),
    // sized for every method: noise and jitter buffers present, P = E*N assignments
    moe__moe_dims all = m->d;
    all.routing = MOE_ROUTING_NOISY_TOPK, all.jitter_eps = 1.0f, all.ep = 1, all.shared_gate = 1;
    int64_t hid = moe__moe_hidden_scratch(&all, N, P);
    for (int pass = 0; pass < 2; pass++) { // size, then hand out
        moe__planner pl = {m->arena, 0};
        moe__moe_plan_cache(&pl, &m->c, &all, N, P);
        moe__moe_plan_scratch(&pl, &m->s, &all, N, P);
        m->s.dact = MOE_TAKE_F(&pl, hid), m->s.dh1 = MOE_TAKE_F(&pl, hid), m->s.dh3 = MOE_TAKE_F(&pl, hid);
        if (!pass) m->arena = moe__calloc(pl.off);
    }
}

static void moe_release(moe_ctx *m) {
    void *ptrs[] = {m->x, m->y, m->r, m->w.wg, m->w.wnoise, m->w.bias, m->w.w1, m->w.w3, m->w.w2, m->w.sw1,
                    m->w.sw3, m->w.sw2, m->g.wg, m->g.wnoise, m->g.w1, m->g.w3, m->g.w2, m->g.sw1, m->g.sw3,
                    m->g.sw2, m->w.sg, m->g.sg, m->arena};
    for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++) free(ptrs[i]);
}

static double moe_loss(void *p) {
    moe_ctx *m = p;
    moe_status st = moe__moe_forward(m->y, &m->c, m->x, &m->w, &m->d, m->N);
    if (st != MOE_STATUS_OK) CHECK_OK(st); // counted only when it fails: this runs for every difference quotient
    return dot_d(m->y, m->r, m->N * m->d.C) + m->ls.aux * m->c.aux + m->ls.z * m->c.z + m->ls.seq_aux * m->c.seq_aux +
           m->ls.importance * m->c.imp_loss + m->ls.load * m->c.load_loss;
}

static uint64_t moe_sig(void *p) {
    moe_ctx *m = p;
    size_t P = (size_t)moe__moe_slots(&m->d) * (size_t)m->N;
    uint64_t h = moe__fnv1a(MOE_FNV_INIT, m->c.sel, P * sizeof(int));
    h = moe__fnv1a(h, m->c.row_of, P * sizeof(int));
    if (moe__moe_effective_routing(&m->d) == MOE_ROUTING_NOISY_TOPK) {
        // the smooth load's threshold is the (K+1)-th largest H: which expert holds it is a
        // routing decision too (a kink of the loss where it changes hands)
        int E = m->d.E, K = m->d.K;
        for (int64_t n = 0; n < m->N; n++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int k = 0; k < K; k++) taken |= m->c.sel[n * K + k] == e;
                if (!taken && (best < 0 || m->c.noisy[n * E + e] > m->c.noisy[n * E + best])) best = e;
            }
            h = moe__fnv1a(h, &best, sizeof best);
        }
    }
    return h;
}

static void moe_zero_grads(moe_ctx *m) {
    int64_t C = m->d.C, E = m->d.E, F = m->d.F, SF = m->d.SF;
    float *gs[] = {m->g.wg, m->g.wnoise, m->g.w1, m->g.w3, m->g.w2, m->g.sw1, m->g.sw3, m->g.sw2, m->g.sg};
    int64_t ns[] = {E * C, E * C, E * F * C, E * F * C, E * F * C, SF * C, SF * C, SF * C, C};
    for (int i = 0; i < 9; i++) memset(gs[i], 0, (size_t)ns[i] * sizeof(float));
}

typedef struct {
    const char *label;
    int64_t N;
    int C, E, K, F, S, T;
    int norm;
    float cf;
    moe_drop_policy pol;
    moe_routing routing;
    moe_score score;
    float route_scale, jitter;
    int random_routing, with_bias, eval;
    int shared_gate;
} moe_variant;

/* With groups (G >= 2): group-limited routing, topk_group TG, a group scored by its max or the
 * sum of its top 2. */
static void run_moe_fd_grouped(const moe_variant *v, int G, int TG, moe_group_score gs) {
    moe_ctx m;
    moe_alloc(&m, v->N, v->C, v->E, v->K, v->F, v->S, v->T);
    int64_t N = v->N, C = v->C, E = v->E, F = v->F;
    m.d.norm_topk = v->norm;
    m.d.capacity_factor = v->cf;
    m.d.drop_policy = v->pol;
    m.d.routing = v->routing;
    m.d.score = v->score;
    m.d.route_scale = v->route_scale > 0 ? v->route_scale : 1.0f;
    m.d.jitter_eps = v->jitter;
    m.d.random_routing = v->random_routing;
    m.d.training = !v->eval;
    m.d.shared_gate = v->shared_gate;
    m.d.n_group = G, m.d.topk_group = TG, m.d.group_score = gs;
    if (v->with_bias) m.w.bias = randn(E, 0.3f);
    moe__moe_loss_scales ls = {0.7f, 0.3f, 0.5f, 0.4f, 0.6f};
    m.ls = ls;
    moe_loss(&m);
    const char *label = v->label;
    // the permuted forward equals the token-by-token reference
    float *yref = zeros(N * C);
    CHECK_OK(moe__moe_forward_ref(yref, &m.c, m.x, &m.w, &m.d, N));
    char what[200];
    snprintf(what, sizeof what, "%s: forward vs ref", label);
    CHECK_ARRAYS(m.y, yref, N * C, 1e-5, 1e-4, what);
    free(yref);
    // bookkeeping: kept + dropped = routed = sum of loads; kept per expert <= capacity
    int64_t kept = m.c.offsets[E], total = 0;
    for (int e = 0; e < E; e++) {
        total += m.c.load[e];
        if (m.c.capacity > 0)
            CHECK(m.c.offsets[e + 1] - m.c.offsets[e] <= m.c.capacity, "%s: expert %d keeps %lld > capacity %d",
                  label, e, (long long)(m.c.offsets[e + 1] - m.c.offsets[e]), m.c.capacity);
    }
    CHECK(total == m.c.routed, "%s: loads sum to %lld, routed %lld", label, (long long)total, (long long)m.c.routed);
    CHECK(kept + m.c.dropped == m.c.routed, "%s: kept %lld + dropped %lld != routed %lld", label, (long long)kept,
          (long long)m.c.dropped, (long long)m.c.routed);
    // gradients
    moe_zero_grads(&m);
    float *dx = zeros(N * C);
    CHECK_OK(moe__moe_backward(dx, &m.g, &m.s, m.r, m.x, &m.w, &m.c, &m.d, N, &m.ls));
    // float32 forward passes: the loss is O(10), so its rounding noise is ~1e-6 and the
    // difference quotient's noise ~1e-6 / eps; eps = 1e-2 keeps that below the tolerance
    // (noisy gating: its normal-CDF load term curves faster, and it has more kinks; 3e-3)
    float eps = v->routing == MOE_ROUTING_NOISY_TOPK ? 3e-3f : 1e-2f;
    double atol = 2e-3, rtol = 2e-2;
    struct {
        const char *name;
        float *p, *g;
        int64_t n;
        int on;
    } parts[] = {{"dx", m.x, dx, N * C, 1},
                 {"dwg", m.w.wg, m.g.wg, E * C, 1},
                 {"dwnoise", m.w.wnoise, m.g.wnoise, E * C, v->routing == MOE_ROUTING_NOISY_TOPK},
                 {"dw1", m.w.w1, m.g.w1, E * F * C, 1},
                 {"dw3", m.w.w3, m.g.w3, E * F * C, 1},
                 {"dw2", m.w.w2, m.g.w2, E * F * C, 1},
                 {"shared dw1", m.w.sw1, m.g.sw1, (int64_t)v->S * F * C, v->S > 0},
                 {"shared dw2", m.w.sw2, m.g.sw2, (int64_t)v->S * F * C, v->S > 0},
                 {"shared gate", m.w.sg, m.g.sg, C, v->shared_gate}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i].on) continue;
        snprintf(what, sizeof what, "%s %s", label, parts[i].name);
        fd_check(what, parts[i].p, parts[i].g, parts[i].n, 40, moe_loss, moe_sig, &m, eps, atol, rtol);
    }
    free(dx);
    moe_release(&m);
}

static void run_moe_fd(const moe_variant *v) { run_moe_fd_grouped(v, 0, 0, MOE_GROUP_TOP2_SUM); }

static void test_moe_gradients(void) {
    const moe_drop_policy PROB = MOE_DROP_PROBABILITY, POS = MOE_DROP_POSITION;
    const moe_routing TOPK = MOE_ROUTING_TOPK;
    const moe_score SOFTMAX = MOE_SCORE_SOFTMAX, SIGMOID = MOE_SCORE_SIGMOID;
    const moe_variant variants[] = {
        // label, N, C, E, K, F, S, T, norm, cf, policy, routing, score, scale, jitter, random, bias, eval, shared gate
        {"moe K=1 dropless", 24, 8, 4, 1, 6, 0, 8, 1, 0.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=1 switch no-renorm dropping", 24, 8, 4, 1, 6, 0, 8, 0, 0.8f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 renorm dropless", 24, 8, 5, 2, 6, 0, 6, 1, 0.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 no-renorm dropless", 24, 8, 5, 2, 6, 0, 6, 0, 0.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 renorm dropping by probability", 24, 8, 5, 2, 6, 0, 8, 1, 0.7f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 no-renorm dropping by position", 24, 8, 5, 2, 6, 0, 8, 0, 0.7f, POS, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 shared experts S=2", 19, 8, 4, 2, 5, 2, 19, 1, 1.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe K=2 no-renorm gated shared expert", 19, 8, 4, 2, 5, 1, 19, 0, 0.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 1},
        {"moe K=E", 13, 8, 3, 3, 5, 0, 13, 1, 0.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe sigmoid renorm scale 2.5 + bias", 24, 8, 6, 2, 5, 1, 8, 1, 1.0f, PROB, TOPK, SIGMOID, 2.5f, 0, 0, 1, 0, 0},
        {"moe sigmoid no-renorm", 24, 8, 6, 2, 5, 0, 12, 0, 0.0f, PROB, TOPK, SIGMOID, 1, 0, 0, 0, 0, 0},
        {"moe noisy top-2", 24, 8, 5, 2, 5, 0, 8, 1, 0.0f, PROB, MOE_ROUTING_NOISY_TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe noisy top-2 route scale 2.5", 24, 8, 5, 2, 5, 0, 8, 1, 0.0f, PROB, MOE_ROUTING_NOISY_TOPK, SOFTMAX, 2.5f, 0, 0, 0, 0, 0},
        {"moe noisy top-1 dropping", 24, 8, 4, 1, 5, 0, 8, 1, 1.0f, PROB, MOE_ROUTING_NOISY_TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe noisy top-2 eval (clean)", 24, 8, 5, 2, 5, 0, 8, 1, 0.0f, PROB, MOE_ROUTING_NOISY_TOPK, SOFTMAX, 1, 0, 0, 0, 1, 0},
        {"moe expert choice", 24, 8, 4, 2, 5, 0, 8, 1, 1.0f, PROB, MOE_ROUTING_EXPERT_CHOICE, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe expert choice sigmoid", 20, 8, 5, 1, 5, 0, 10, 1, 1.5f, PROB, MOE_ROUTING_EXPERT_CHOICE, SIGMOID, 1, 0, 0, 0, 0, 0},
        {"moe soft mixture", 16, 8, 4, 1, 5, 1, 8, 1, 0.0f, PROB, MOE_ROUTING_SOFT, SOFTMAX, 1, 0, 0, 0, 0, 0},
        {"moe jitter", 24, 8, 5, 2, 5, 0, 8, 1, 0.0f, PROB, TOPK, SOFTMAX, 1, 0.1f, 0, 0, 0, 0},
        {"moe GShard random routing", 16, 8, 5, 2, 5, 0, 8, 1, 1.0f, PROB, TOPK, SOFTMAX, 1, 0, 1, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) run_moe_fd(&variants[i]);
    // group-limited routing (DeepSeek-V3: sigmoid, bias, top-2 sums; V2: softmax, group max)
    const moe_variant v3 = {"moe grouped V3: 4 groups of 2, 2 kept, K=3, sigmoid + bias, scale 2.5", 24, 8, 8, 3, 5, 1, 8,
                            1, 0.0f, PROB, TOPK, SIGMOID, 2.5f, 0, 0, 1, 0, 0};
    run_moe_fd_grouped(&v3, 4, 2, MOE_GROUP_TOP2_SUM);
    const moe_variant v2 = {"moe grouped V2: 3 groups of 2, 1 kept, K=2, softmax, dropping", 24, 8, 6, 2, 5, 0, 8, 0,
                            1.0f, PROB, TOPK, SOFTMAX, 1, 0, 0, 0, 0, 0};
    run_moe_fd_grouped(&v2, 3, 1, MOE_GROUP_MAX);
}

/* The groups and experts moe__select_topk_grouped should pick, computed another way: group
 * scores by sorting, groups by sorting (stable: ties to the lower group), experts by sorting the
 * kept ones (ties to the lower expert). */
static void grouped_ref(int *sel, const float *v, int E, int K, int G, int TG, int top2) {
    int S = E / G, gi[64], ei[256];
    float gsc[64];
    for (int g = 0; g < G; g++) {
        float a[64];
        for (int i = 0; i < S; i++) a[i] = v[g * S + i];
        for (int i = 0; i < S; i++) // sort descending
            for (int j = i + 1; j < S; j++)
                if (a[j] > a[i]) { float t = a[i]; a[i] = a[j]; a[j] = t; }
        gsc[g] = top2 && S > 1 ? a[0] + a[1] : a[0];
        gi[g] = g;
    }
    for (int i = 0; i < G; i++) // stable selection sort by score, descending
        for (int j = i + 1; j < G; j++)
            if (gsc[gi[j]] > gsc[gi[i]] || (gsc[gi[j]] == gsc[gi[i]] && gi[j] < gi[i])) { int t = gi[i]; gi[i] = gi[j]; gi[j] = t; }
    int n = 0;
    for (int e = 0; e < E; e++)
        for (int k = 0; k < TG; k++)
            if (e / S == gi[k]) ei[n++] = e;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (v[ei[j]] > v[ei[i]] || (v[ei[j]] == v[ei[i]] && ei[j] < ei[i])) { int t = ei[i]; ei[i] = ei[j]; ei[j] = t; }
    for (int k = 0; k < K; k++) sel[k] = ei[k];
}

/* Group-limited selection: against grouped_ref on random and tied scores; all groups kept is
 * plain top-K; groups of one with topk_group = K are plain top-K; one group kept holds every
 * choice; V2 and V3 group scores pick differently where they should; the bias counts. */
static void test_grouped_selection(void) {
    int sel[16], ref[16], plain[16];
    for (int trial = 0; trial < 3000; trial++) {
        int G = 1 + (int)(moe__rng_u64(&rng) % 8), S = 1 + (int)(moe__rng_u64(&rng) % 5), E = G * S;
        int TG = 1 + (int)(moe__rng_u64(&rng) % (uint64_t)G), K = 1 + (int)(moe__rng_u64(&rng) % (uint64_t)(TG * S < 8 ? TG * S : 8));
        int top2 = trial % 2, ties = trial % 3 == 0;
        float v[64];
        for (int e = 0; e < E; e++) v[e] = ties ? (float)(moe__rng_u64(&rng) % 3) : moe__rng_normal(&rng);
        moe__select_topk_grouped(sel, v, NULL, E, K, G, TG, top2);
        grouped_ref(ref, v, E, K, G, TG, top2);
        CHECK(!memcmp(sel, ref, (size_t)K * sizeof(int)), "grouped selection E %d G %d TG %d K %d top2 %d ties %d: %d.. vs %d..",
              E, G, TG, K, top2, ties, sel[0], ref[0]);
        if (TG == G || (S == 1 && TG == K)) { // no limit in effect: plain top-K
            moe__select_topk(plain, v, NULL, E, K);
            CHECK(!memcmp(sel, plain, (size_t)K * sizeof(int)), "all groups (or groups of one) are plain top-K: E %d G %d TG %d K %d",
                  E, G, TG, K);
        }
        if (TG == 1)
            for (int k = 1; k < K; k++) CHECK(sel[k] / S == sel[0] / S, "one group kept: expert %d outside group %d", sel[k], sel[0] / S);
    }
    // V3 (sum of top 2) against V2 (max): group 0 = {0.9, 0.0}, group 1 = {0.5, 0.5}
    float v[4] = {0.9f, 0.0f, 0.5f, 0.5f}, bias[4] = {0.0f, 0.0f, -0.6f, 0.0f};
    moe__select_topk_grouped(sel, v, NULL, 4, 1, 2, 1, 1);
    CHECK(sel[0] == 2, "top2_sum keeps group 1 (1.0 > 0.9), picks expert 2: %d", sel[0]);
    moe__select_topk_grouped(sel, v, NULL, 4, 1, 2, 1, 0);
    CHECK(sel[0] == 0, "max keeps group 0 (0.9 > 0.5), picks expert 0: %d", sel[0]);
    moe__select_topk_grouped(sel, v, bias, 4, 2, 2, 1, 1);
    CHECK(sel[0] == 0 && sel[1] == 1, "the bias scores the groups too (group 1: 0.4 < 0.9): %d %d", sel[0], sel[1]);
    // tied groups: the lower group
    float t[6] = {0.2f, 0.7f, 0.7f, 0.2f, 0.1f, 0.1f};
    moe__select_topk_grouped(sel, t, NULL, 6, 2, 3, 1, 1);
    CHECK(sel[0] == 1 && sel[1] == 0, "tied groups 0 and 1: group 0 wins, experts 1 then 0: %d %d", sel[0], sel[1]);
}

/* ---------------------------------------------------------------- routing edge cases */

/* Tokens (top-1, E = 4) whose selected expert is not the argmax of the clean logits. */
static int count_not_clean_argmax(const moe_ctx *m) {
    int differ = 0;
    for (int64_t n = 0; n < m->N; n++) {
        int best = 0;
        for (int e = 1; e < 4; e++) best = m->c.logits[n * 4 + e] > m->c.logits[n * 4 + best] ? e : best;
        differ += m->c.sel[n] != best;
    }
    return differ;
}

static void test_routing_edges(void) {
    int64_t N = 16;
    int C = 4, E = 4, F = 3;
    {
        // every token prefers expert 2: positive inputs, router row 2 positive, the others negative
        moe_ctx m;
        moe_alloc(&m, N, C, E, 1, F, 0, 16);
        for (int64_t i = 0; i < N * C; i++) m.x[i] = 0.5f + fabsf(m.x[i]);
        for (int e = 0; e < E; e++)
            for (int i = 0; i < C; i++) m.w.wg[e * C + i] = e == 2 ? 1.0f : -1.0f - 0.1f * e;
        m.d.capacity_factor = 0.0f; // dropless
        moe_loss(&m);
        CHECK(m.c.load[2] == N && m.c.load[0] == 0 && m.c.load[1] == 0 && m.c.load[3] == 0,
              "all tokens to expert 2: loads %lld %lld %lld %lld", (long long)m.c.load[0], (long long)m.c.load[1],
              (long long)m.c.load[2], (long long)m.c.load[3]);
        CHECK(m.c.dropped == 0, "dropless drops nothing, dropped %lld", (long long)m.c.dropped);
        // f = (0,0,1,0): aux = E * P_2; the sequence loss has f_2 = E/(K T) * T = E
        double P2 = 0;
        for (int64_t n = 0; n < N; n++) P2 += m.c.probs[n * E + 2];
        CHECK_CLOSE(m.c.aux, E * P2 / N, 1e-6, 1e-5, "aux with one expert taking all");
        CHECK_CLOSE(m.c.seq_aux, E * P2 / N, 1e-6, 1e-5, "sequence aux with one expert taking all");
        // with capacity factor 1: cap = ceil(16/4) = 4 kept, 12 dropped; by position: the first 4 tokens
        m.d.capacity_factor = 1.0f;
        m.d.drop_policy = MOE_DROP_POSITION;
        moe_loss(&m);
        CHECK(m.c.capacity == 4 && m.c.dropped == 12, "capacity %d dropped %lld", m.c.capacity, (long long)m.c.dropped);
        for (int64_t n = 0; n < N; n++)
            CHECK((m.c.row_of[n] >= 0) == (n < 4), "position policy keeps the first tokens: token %lld row %d",
                  (long long)n, m.c.row_of[n]);
        // by probability: the 4 tokens with the highest p[n,2]
        m.d.drop_policy = MOE_DROP_PROBABILITY;
        moe_loss(&m);
        for (int64_t n = 0; n < N; n++) {
            int higher = 0;
            // ties go to the lower token index
            for (int64_t j = 0; j < N; j++)
                higher += m.c.probs[j * E + 2] > m.c.probs[n * E + 2] ||
                          (m.c.probs[j * E + 2] == m.c.probs[n * E + 2] && j < n);
            CHECK((m.c.row_of[n] >= 0) == (higher < 4), "probability policy: token %lld rank %d kept %d", (long long)n,
                  higher, m.c.row_of[n] >= 0);
            if (m.c.row_of[n] < 0) CHECK(m.y[n * C] == 0.0f && m.y[n * C + 1] == 0.0f, "dropped token has zero output");
        }
        // capacity 1
        m.d.capacity_factor = 0.01f;
        moe_loss(&m);
        CHECK(m.c.capacity == 1 && m.c.offsets[E] == 1 && m.c.dropped == N - 1, "capacity 1: cap %d kept %lld",
              m.c.capacity, (long long)m.c.offsets[E]);
        float *dx = zeros(N * C);
        moe_zero_grads(&m);
        CHECK_OK(moe__moe_backward(dx, &m.g, &m.s, m.r, m.x, &m.w, &m.c, &m.d, N, &m.ls));
        // experts 0, 1, 3 took no tokens: their weights get no gradient
        double g0 = 0;
        for (int64_t i = 0; i < (int64_t)F * C; i++) g0 += fabs(m.g.w1[i]) + fabs(m.g.w1[3 * F * C + i]);
        CHECK(g0 == 0.0, "experts without tokens have zero gradient, got %g", g0);
        // aux-loss-free bias: a bias on expert 0 larger than any score gap moves every token
        // there, and leaves the gate weights (the unbiased scores) unchanged
        float bias[4] = {10.0f, 0.0f, 0.0f, 0.0f};
        m.w.bias = bias;
        m.d.capacity_factor = 0.0f;
        moe_loss(&m);
        CHECK(m.c.load[0] == N, "bias selects expert 0 for every token: load %lld", (long long)m.c.load[0]);
        for (int64_t n = 0; n < N; n++)
            CHECK(m.c.gate[n] == 1.0f, "K=1 renormalised gate is 1 whatever the bias, got %g", m.c.gate[n]);
        m.d.norm_topk = 0;
        moe_loss(&m);
        CHECK_CLOSE(m.c.gate[3], m.c.scores[3 * E + 0], 0, 0, "unnormalised gate is the unbiased score");
        m.w.bias = NULL;
        free(dx);
        moe_release(&m);
    }
    {
        // capacity formula: max(min_capacity, ceil(K*N/E*cf)), at most N
        moe__moe_dims d;
        memset(&d, 0, sizeof d);
        d.E = 8, d.K = 2, d.min_capacity = 4;
        CHECK(moe__capacity(&d, 100, 1.25f) == 32, "ceil(2*100/8*1.25) = 32, got %d", moe__capacity(&d, 100, 1.25f));
        CHECK(moe__capacity(&d, 3, 1.0f) == 3, "min_capacity 4 capped at N = 3, got %d", moe__capacity(&d, 3, 1.0f));
        CHECK(moe__capacity(&d, 10, 1.0f) == 4, "min_capacity floor, got %d", moe__capacity(&d, 10, 1.0f));
        CHECK(moe__capacity(&d, 10, 0.0f) == 0, "cf 0 is dropless, got %d", moe__capacity(&d, 10, 0.0f));
    }
    {
        // K = E: every token to every expert in decreasing probability order; renormalised weights sum to 1
        moe_ctx m;
        moe_alloc(&m, 9, C, 3, 3, F, 0, 9);
        moe_loss(&m);
        for (int e = 0; e < 3; e++) CHECK(m.c.load[e] == 9, "K=E load %lld", (long long)m.c.load[e]);
        for (int n = 0; n < 9; n++) {
            float s = m.c.gate[n * 3] + m.c.gate[n * 3 + 1] + m.c.gate[n * 3 + 2];
            CHECK_CLOSE(s, 1.0, 1e-6, 0, "renormalised gates sum to 1");
            CHECK(m.c.probs[n * 3 + m.c.sel[n * 3]] >= m.c.probs[n * 3 + m.c.sel[n * 3 + 1]],
                  "top-k is sorted by probability");
        }
        moe_release(&m);
    }
    {
        // expert choice: each expert takes exactly capacity tokens, its highest-scoring ones; a
        // token may get none or several experts; at eval it routes by token choice
        moe_ctx m;
        moe_alloc(&m, 20, C, 4, 2, F, 0, 10);
        m.d.routing = MOE_ROUTING_EXPERT_CHOICE;
        m.d.capacity_factor = 1.0f; // cap = ceil(2*20/4) = 10
        moe_loss(&m);
        int none = 0, several = 0;
        for (int e = 0; e < 4; e++) {
            CHECK(m.c.offsets[e + 1] - m.c.offsets[e] == 10, "expert choice: expert %d takes %lld", e,
                  (long long)(m.c.offsets[e + 1] - m.c.offsets[e]));
            for (int n = 0; n < 20; n++) {
                if (m.c.row_of[n * 4 + e] < 0) continue;
                int better = 0; // tokens with a higher score for e that e did not take
                for (int j = 0; j < 20; j++)
                    better += m.c.scores[j * 4 + e] > m.c.scores[n * 4 + e] && m.c.row_of[j * 4 + e] < 0;
                CHECK(better == 0, "expert choice takes the top-scoring tokens (expert %d token %d)", e, n);
            }
        }
        for (int n = 0; n < 20; n++) {
            int k = 0;
            for (int e = 0; e < 4; e++) k += m.c.row_of[n * 4 + e] >= 0;
            none += k == 0, several += k > 1;
        }
        CHECK(several > 0, "expert choice gives some token several experts");
        // with capacity factor 0.5 the experts take 20 slots for 20 tokens: a token with
        // several experts means another with none
        m.d.capacity_factor = 0.5f;
        moe_loss(&m);
        none = several = 0;
        for (int n = 0; n < 20; n++) {
            int k = 0;
            for (int e = 0; e < 4; e++) k += m.c.row_of[n * 4 + e] >= 0;
            none += k == 0, several += k > 1;
        }
        CHECK(m.c.offsets[4] == 20 && several > 0 && none > 0,
              "expert choice at cf 0.5: %lld rows, %d tokens with several experts, %d with none",
              (long long)m.c.offsets[4], several, none);
        CHECK(m.c.dropped == 0, "expert choice drops nothing");
        m.d.training = 0;
        moe_loss(&m);
        CHECK(moe__moe_slots(&m.d) == 2 && m.c.routed == 40, "expert choice evaluates by token choice: routed %lld",
              (long long)m.c.routed);
        moe_release(&m);
    }
    {
        // soft mixture: equals the dense softmax-weighted sum of all experts
        moe_ctx m;
        moe_alloc(&m, 6, C, 3, 1, F, 0, 6);
        m.d.routing = MOE_ROUTING_SOFT;
        m.d.capacity_factor = 0.5f; // capacity does not apply
        moe_loss(&m);
        CHECK(m.c.offsets[3] == 18 && m.c.dropped == 0, "soft mixture: %lld rows", (long long)m.c.offsets[3]);
        for (int n = 0; n < 6; n++)
            for (int e = 0; e < 3; e++) CHECK_CLOSE(m.c.gate[n * 3 + e], m.c.probs[n * 3 + e], 0, 0, "soft gate = p");
        moe_release(&m);
    }
    {
        // GShard random routing keeps the 2nd expert with probability 2 g2 / (g1 + g2)
        moe_ctx m;
        moe_alloc(&m, 4000, C, 4, 2, F, 0, 4000);
        for (int64_t i = 0; i < 4000 * C; i++) m.x[i] *= 0.3f; // moderate gate ratios
        m.d.random_routing = 1;
        moe_loss(&m);
        double expect = 0;
        int kept2 = 0;
        for (int n = 0; n < 4000; n++) {
            expect += 2.0 * m.c.gate[n * 2 + 1] / (m.c.gate[n * 2] + m.c.gate[n * 2 + 1]);
            kept2 += m.c.row_of[n * 2 + 1] != MOE_ROW_UNROUTED;
            CHECK(m.c.row_of[n * 2] >= 0, "the 1st expert is always routed");
        }
        CHECK(fabs(kept2 - expect) < 4 * sqrt(expect), "random routing kept %d second experts, expected %.0f", kept2, expect);
        CHECK(m.c.routed == 4000 + kept2, "routed counts the kept second experts");
        m.d.training = 0;
        moe_loss(&m);
        CHECK(m.c.routed == 8000, "no random routing at eval, routed %lld", (long long)m.c.routed);
        moe_release(&m);
    }
    {
        // noisy gating: noise only in training, and a different seed draws different noise
        moe_ctx m;
        moe_alloc(&m, 32, C, 4, 1, F, 0, 32);
        m.d.routing = MOE_ROUTING_NOISY_TOPK;
        m.d.training = 0;
        moe_loss(&m);
        CHECK(count_not_clean_argmax(&m) == 0, "noisy top-K at eval routes by the clean logits");
        for (int n = 0; n < 32; n++) CHECK(m.c.gate[n] == 1.0f, "top-1 gate is 1, got %g", m.c.gate[n]);
        m.d.training = 1;
        moe_loss(&m);
        int differ = count_not_clean_argmax(&m);
        CHECK(differ > 0, "noise changes some routing decisions in training");
        CHECK(m.c.imp_loss >= 0 && m.c.load_loss >= 0, "CV^2 losses are non-negative");
        moe_release(&m);
    }
}

/* ---------------------------------------------------------------- whole model */

typedef struct {
    moe_model *m;
    int *tok, *tgt;
    int B, T;
} model_ctx;

static double model_loss(void *p) {
    model_ctx *c = p;
    moe_losses l;
    moe_model_forward(c->m, c->tok, c->tgt, c->B, c->T, 1, &l);
    return l.total;
}

static uint64_t model_sig(void *p) {
    model_ctx *c = p;
    const moe_config *cfg = moe_model_config(c->m);
    uint64_t h = MOE_FNV_INIT;
    size_t KN = (size_t)cfg->top_k * c->B * c->T;
    for (int l = 0; l < cfg->n_layer; l++) {
        const moe__moe_cache *mc = moe__cpu_moe_cache(c->m, l);
        if (!mc) continue;
        h = moe__fnv1a(h, mc->sel, KN * sizeof(int));
        h = moe__fnv1a(h, mc->row_of, KN * sizeof(int));
    }
    return h;
}

/* Every tensor's gradient of a whole model by finite differences: a Mixtral-like model with a
 * dense layer and a shared expert; then Qwen2-MoE's parts (q/k/v biases, a gated shared expert
 * of its own width, top-K not renormalised) with grouped-query attention; then OLMoE's QK-norm. */
static void test_model_gradients_of(const char *const *extra, int gqa_unnormalised);
static void test_model_gradients(void) {
    const char *extra[][8] = {
        {"n_shared", "1"},
        {"n_shared", "1", "shared_gate", "1", "shared_hidden", "9", "qkv_bias", "1"},
        {"qk_norm", "1", "n_kv_head", "1", "moe_layers", "all"},
    };
    for (size_t v = 0; v < sizeof extra / sizeof extra[0]; v++) test_model_gradients_of(extra[v], v > 0);
}

static void test_model_gradients_of(const char *const *extra, int gqa_unnormalised) {
    moe_config cfg = moe_config_default();
    const char *sets[][2] = {{"vocab_size", "32"}, {"seq_len", "6"},     {"n_embd", "8"},      {"n_layer", "2"},
                             {"n_head", "2"},      {"ffn_hidden", "10"}, {"n_experts", "4"},   {"top_k", "2"},
                             {"expert_hidden", "6"}, {"moe_layers", "0"},  {"capacity_factor", "1.0"},
                             {"min_capacity", "1"}, {"aux_loss_coef", "0.1"}, {"z_loss_coef", "0.01"},
                             {"init_std", "0.3"},  {"router_init_std", "0.5"}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) CHECK_OK(moe_config_set(&cfg, sets[i][0], sets[i][1]));
    for (int i = 0; i < 8 && extra[i]; i += 2) CHECK_OK(moe_config_set(&cfg, extra[i], extra[i + 1]));
    if (gqa_unnormalised) {
        CHECK_OK(moe_config_set(&cfg, "n_kv_head", "1"));
        CHECK_OK(moe_config_set(&cfg, "norm_topk", "false"));
    }
    model_ctx c = {NULL, NULL, NULL, 2, 6};
    CHECK_OK(moe_model_create(&cfg, c.B, &c.m));
    moe_model_init(c.m, 7);
    float *p0 = moe_model_params(c.m); // biases start at zero, norms at one: move them off
    for (int64_t i = 0; i < moe_model_n_params(c.m); i++) p0[i] += 0.1f * (float)moe__rng_normal(&rng);
    c.tok = malloc(12 * sizeof(int)), c.tgt = malloc(12 * sizeof(int));
    for (int i = 0; i < 12; i++) c.tok[i] = (i * 5 + 3) % 32, c.tgt[i] = (i * 11 + 1) % 32;
    model_loss(&c);
    moe_model_zero_grad(c.m);
    CHECK_OK(moe_model_backward(c.m, 1.0f));
    float *params = moe_model_params(c.m), *grads = moe_model_grads(c.m);
    for (int i = 0; i < moe_model_n_tensors(c.m); i++) {
        const moe_tensor_info *t = moe_model_tensor(c.m, i);
        char what[200];
        snprintf(what, sizeof what, "model %s", t->name);
        fd_check(what, params + t->offset, grads + t->offset, t->numel, 20, model_loss, model_sig, &c, 1e-3f, 2e-3,
                 3e-2);
    }
    free(c.tok), free(c.tgt);
    moe_model_free(c.m);
}

/* recompute=1 keeps only each block's input and redoes its forward in backward: losses,
 * statistics and every gradient must be bit-identical to the stored-activation run, for each
 * routing method (random draws included), dense and MoE blocks mixed, and pyramid experts. */
static void test_recompute(void) {
    const char *variants[][4] = {
        {"routing", "topk", "moe_layers", "all"},
        {"routing", "topk", "moe_layers", "0,2"},
        {"routing", "noisy_topk", "load_loss_coef", "0.1"},
        {"routing", "expert_choice", "n_shared", "1"},
        {"routing", "soft", "moe_layers", "1"},
        {"qk_norm", "1", "qkv_bias", "1"},
        {"n_shared", "1", "shared_gate", "1"},
        {"n_shared", "1", "shared_hidden", "7"},
        {"n_group", "2", "topk_group", "1"},
        {"jitter_eps", "0.1", "random_routing", "1"},
        {"expert_counts", "2,4,8", "router_score", "sigmoid"},
        {"bias_update_rate", "0.01", "seq_aux_loss_coef", "0.01"},
    };
    int B = 3, T = 8, N = B * T;
    int *tok = malloc((size_t)N * sizeof(int)), *tgt = malloc((size_t)N * sizeof(int));
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        moe_model *m[2];
        moe_losses l[2];
        for (int r = 0; r < 2; r++) {
            moe_config cfg = moe_config_default();
            const char *sets[][2] = {{"vocab_size", "40"}, {"seq_len", "8"}, {"n_embd", "16"}, {"n_layer", "3"},
                                     {"n_head", "2"}, {"ffn_hidden", "24"}, {"n_experts", "4"}, {"top_k", "2"},
                                     {"expert_hidden", "12"}, {"capacity_factor", "1.0"}, {"min_capacity", "1"},
                                     {"init_std", "0.2"}, {"recompute", r ? "1" : "0"}};
            for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
                CHECK_OK(moe_config_set(&cfg, sets[i][0], sets[i][1]));
            CHECK_OK(moe_config_set(&cfg, variants[v][0], variants[v][1]));
            CHECK_OK(moe_config_set(&cfg, variants[v][2], variants[v][3]));
            CHECK_OK(moe_model_create(&cfg, B, &m[r]));
            moe_model_init(m[r], 11);
            moe_model_zero_grad(m[r]);
        }
        for (int pass = 0; pass < 2; pass++) { // gradients accumulate over two micro-batches
            for (int i = 0; i < N; i++) tok[i] = (i * 7 + 3 * pass + 1) % 40, tgt[i] = (i * 13 + pass) % 40;
            for (int r = 0; r < 2; r++) {
                moe__model_set_noise_seed(m[r], 99 + (uint64_t)pass);
                CHECK_OK(moe_model_forward(m[r], tok, tgt, B, T, 1, &l[r]));
                CHECK_OK(moe_model_backward(m[r], 0.5f));
            }
            CHECK(memcmp(&l[0], &l[1], sizeof l[0]) == 0, "recompute %s=%s %s=%s pass %d: losses %.9g vs %.9g",
                  variants[v][0], variants[v][1], variants[v][2], variants[v][3], pass, l[0].total, l[1].total);
            for (int i = 0; i < moe_model_n_moe_layers(m[0]); i++) {
                const moe_layer_stats *a = moe_model_layer_stats(m[0], i), *b = moe_model_layer_stats(m[1], i);
                CHECK(!memcmp(a->load, b->load, (size_t)a->n_experts * sizeof(int64_t)) && a->dropped == b->dropped,
                      "recompute %s=%s: loads of MoE layer %d", variants[v][1], variants[v][3], i);
            }
        }
        int64_t P = moe_model_n_params(m[0]), bad = 0;
        const float *g0 = moe_model_grads(m[0]), *g1 = moe_model_grads(m[1]);
        for (int64_t i = 0; i < P; i++) bad += memcmp(&g0[i], &g1[i], sizeof(float)) != 0;
        CHECK(bad == 0, "recompute %s=%s %s=%s: %lld of %lld gradients differ", variants[v][0], variants[v][1],
              variants[v][2], variants[v][3], (long long)bad, (long long)P);
        double gsum = 0;
        for (int64_t i = 0; i < P; i++) gsum += fabs(g0[i]);
        CHECK(gsum > 0, "recompute %s=%s: gradients are not all zero", variants[v][1], variants[v][3]);
        int routes[3 * 8 * 8], slots = -1;
        moe_status st = moe_model_routing(m[1], 0, routes, &slots);
        CHECK(st == MOE_STATUS_CONFIG && slots == 0 && strstr(moe_last_error(), "recompute"),
              "routing of a recompute model: %s (%s), slots %d", moe_status_str(st), moe_last_error(), slots);
        moe_model_free(m[0]);
        moe_model_free(m[1]);
    }
    free(tok), free(tgt);
}

int main(void) {
    // MOE_TEST_SEED draws other random shapes and values (the default is what CI runs)
    const char *seed = getenv("MOE_TEST_SEED");
    moe__rng_seed(&rng, seed ? strtoull(seed, NULL, 10) : 20240520);
    test_matmul();
    test_rmsnorm();
    test_attention();
    test_ffn();
    test_crossentropy();
    test_moe_gradients();
    test_grouped_selection();
    test_routing_edges();
    test_model_gradients();
    test_recompute();
    CHECK_SUMMARY("test_layers");
}
