/*
 * test_cuda.c — every CUDA kernel against the CPU function it mirrors, on the same random
 * inputs, including awkward shapes (one row, rows wider than a block, N not a multiple of
 * anything). fp32 throughout: |gpu - cpu| <= atol + rtol |cpu| with rtol 1e-5 and atol scaled
 * to the tensor (1e-6 of its largest value), since reductions run in another order (trees on
 * the GPU, left to right on the CPU) and the GPU contracts multiply-adds into fmas.
 *
 * Kernels: embedding, RMSNorm, SwiGLU, RoPE, causal attention, top-K routing (tokens whose
 * choice is a near-tie are skipped, as the CPU tests do), cross-entropy, the gradient sum of squares, AdamW,
 * and the cuBLAS products in fp32 and in bf16 (against a bf16-rounding reference computed here).
 *
 * Exits 77 (skipped) where there is no usable GPU or the build has no CUDA: CI builds and runs
 * it without a GPU; bench/gpu_check.sh runs it on the GPU machine.
 */
#include "cuda_check.h"
#include "cpu/cpu.h"
#include "moe/moe_layer.h"
#include "nn/nn.h"

#include <string.h>

/* The device array d (n floats) in a new host array. */
static float *host(const void *d, int64_t n) { return host_bytes(d, (size_t)n * sizeof(float)); }

/* got (device, n floats) against want (host): rtol 1e-5, atol scale * the tensor's largest value
 * (1e-6 for elementwise results; 1e-5 for sums over many terms, whose order differs). */
static void compare_at(const void *got_dev, const float *want, int64_t n, double scale, const char *what) {
    float *got = host(got_dev, n);
    CHECK_ARRAYS(got, want, n, scale * maxabs(want, n) + 1e-30, 1e-5, what);
    free(got);
}
#define compare(got, want, n, what) compare_at(got, want, n, 1e-6, what)
#define compare_sum(got, want, n, what) compare_at(got, want, n, 1e-5, what)

static void test_rmsnorm(int64_t N, int C) {
    size_t NC = (size_t)N * C * sizeof(float);
    float *x = randn(N * C, 1), *w = randn(C, 1), *dout = randn(N * C, 1);
    float *out = calloc((size_t)N * C, sizeof(float)), *rstd = calloc((size_t)N, sizeof(float));
    float *dx = randn(N * C, 1), *dw = randn(C, 1); // both accumulate
    void *dX = dev(x, NC), *dW = dev(w, (size_t)C * 4), *dOut = dev(out, NC), *dR = dev(rstd, (size_t)N * 4);
    void *dDout = dev(dout, NC), *dDx = dev(dx, NC), *dDw = dev(dw, (size_t)C * 4);
    moe__rmsnorm_forward(out, rstd, x, w, N, C, 1e-5f);
    CHECK_OK(moe__cuda_rmsnorm_forward(dOut, dR, dX, dW, N, C, 1e-5f));
    compare_sum(dOut, out, N * C, "rmsnorm forward: out");
    compare_sum(dR, rstd, N, "rmsnorm forward: rstd");
    moe__rmsnorm_backward(dx, dw, dout, x, w, rstd, N, C);
    CHECK_OK(moe__cuda_rmsnorm_backward(dDx, dDw, dDout, dX, dW, dR, N, C));
    compare_sum(dDx, dx, N * C, "rmsnorm backward: dx (accumulated)");
    compare_sum(dDw, dw, C, "rmsnorm backward: dw (accumulated)");
    FREE_ALL(x, w, dout, out, rstd, dx, dw);
    DFREE_ALL(dX, dW, dOut, dR, dDout, dDx, dDw);
}

static void test_swiglu(int64_t n) {
    size_t b = (size_t)n * sizeof(float);
    float *h1 = randn(n, 3), *h3 = randn(n, 1), *dact = randn(n, 1);
    float *act = malloc(b), *dh1 = malloc(b), *dh3 = malloc(b);
    void *d1 = dev(h1, b), *d3 = dev(h3, b), *dA = dev(dact, b), *dAct = dev(h1, b), *dG1 = dev(h1, b), *dG3 = dev(h1, b);
    moe__swiglu_forward(act, h1, h3, n);
    CHECK_OK(moe__cuda_swiglu_forward(dAct, d1, d3, n));
    compare(dAct, act, n, "swiglu forward");
    moe__swiglu_backward(dh1, dh3, dact, h1, h3, n);
    CHECK_OK(moe__cuda_swiglu_backward(dG1, dG3, dA, d1, d3, n));
    compare(dG1, dh1, n, "swiglu backward: dh1");
    compare(dG3, dh3, n, "swiglu backward: dh3");
    FREE_ALL(h1, h3, dact, act, dh1, dh3);
    DFREE_ALL(d1, d3, dA, dAct, dG1, dG3);
}

static void test_embedding(int64_t N, int V, int C) {
    size_t xb = (size_t)N * C * sizeof(float), wb = (size_t)V * C * sizeof(float);
    float *wte = randn((int64_t)V * C, 1), *gwte = randn((int64_t)V * C, 1), *dx = randn(N * C, 1);
    float *x = calloc((size_t)N * C, sizeof(float));
    int *tok = malloc((size_t)N * sizeof(int));
    for (int64_t n = 0; n < N; n++) tok[n] = (int)(moe__rng_u64(&rng) % (uint64_t)V); // repeats: sums per row
    void *dW = dev(wte, wb), *dG = dev(gwte, wb), *dDx = dev(dx, xb), *dX = dev(x, xb), *dT = dev(tok, (size_t)N * 4);
    moe__embedding_forward(x, wte, tok, N, C);
    CHECK_OK(moe__cuda_embedding_forward(dX, dW, dT, N, C));
    compare(dX, x, N * C, "embedding forward");
    moe__embedding_backward(gwte, dx, tok, N, C);
    CHECK_OK(moe__cuda_embedding_backward(dG, dDx, dT, N, C));
    compare(dG, gwte, (int64_t)V * C, "embedding backward (accumulated)");
    FREE_ALL(wte, gwte, dx, x, tok);
    DFREE_ALL(dW, dG, dDx, dX, dT);
}

static void test_rope(int B, int T, int C, int H) {
    int64_t n = (int64_t)B * T * C, half = C / H / 2;
    size_t b = (size_t)n * sizeof(float), tb = (size_t)(T * half) * sizeof(float);
    float *x = randn(n, 1), *cos_t = malloc(tb), *sin_t = malloc(tb);
    moe__rope_tables(cos_t, sin_t, T, C / H, 10000.0f);
    void *dX = dev(x, b), *dC = dev(cos_t, tb), *dS = dev(sin_t, tb);
    moe__rope_forward(x, cos_t, sin_t, B, T, C, H);
    CHECK_OK(moe__cuda_rope_forward(dX, dC, dS, B, T, C, H));
    compare(dX, x, n, "rope forward");
    moe__rope_backward(x, cos_t, sin_t, B, T, C, H);
    CHECK_OK(moe__cuda_rope_backward(dX, dC, dS, B, T, C, H));
    compare(dX, x, n, "rope backward");
    FREE_ALL(x, cos_t, sin_t);
    DFREE_ALL(dX, dC, dS);
}

static moe__cuda_blas *blas; // for the products of attention and the GEMM tests (main makes it)

/* x rounded to bf16 (nearest, ties to even), as __float2bfloat16_rn; values are finite here */
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

/* The bf16-rounding reference of attention: the inputs of every product rounded to bf16 (q, k,
 * v, P, dout, dS), the products and the softmax in fp32, as autocast computes it. out, dq, dk, dv
 * as moe__attention_forward/_backward's (dq, dk, dv accumulate). */
static void attention_bf16_ref(float *out, float *dq, float *dk, float *dv, const float *q, const float *k,
                               const float *v, const float *dout, int B, int T, int C, int H) {
    int D = C / H;
    float scale = 1.0f / sqrtf((float)D), *P = malloc((size_t)T * sizeof(float)), *dS = malloc((size_t)T * T * sizeof(float));
    float *Pm = malloc((size_t)T * T * sizeof(float));
#define R(x) bf16_round(x)
#define AT(a, b_, t, h, i) a[((int64_t)(b_) * T + (t)) * C + (h) * D + (i)]
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            for (int t = 0; t < T; t++) {
                float mx = -INFINITY, sum = 0.0f;
                for (int s2 = 0; s2 <= t; s2++) {
                    float acc = 0.0f;
                    for (int i = 0; i < D; i++) acc += R(AT(q, b, t, h, i)) * R(AT(k, b, s2, h, i));
                    P[s2] = acc * scale;
                    mx = fmaxf(mx, P[s2]);
                }
                for (int s2 = 0; s2 <= t; s2++) sum += (P[s2] = expf(P[s2] - mx));
                for (int s2 = 0; s2 < T; s2++) Pm[(int64_t)t * T + s2] = s2 <= t ? P[s2] / sum : 0.0f;
                for (int i = 0; i < D; i++) {
                    float acc = 0.0f;
                    for (int s2 = 0; s2 <= t; s2++) acc += R(Pm[(int64_t)t * T + s2]) * R(AT(v, b, s2, h, i));
                    AT(out, b, t, h, i) = acc;
                }
                float dot = 0.0f;
                for (int s2 = 0; s2 <= t; s2++) {
                    float dp = 0.0f;
                    for (int i = 0; i < D; i++) dp += R(AT(dout, b, t, h, i)) * R(AT(v, b, s2, h, i));
                    dS[(int64_t)t * T + s2] = dp;
                    dot += Pm[(int64_t)t * T + s2] * dp;
                }
                for (int s2 = 0; s2 < T; s2++)
                    dS[(int64_t)t * T + s2] = s2 <= t ? Pm[(int64_t)t * T + s2] * (dS[(int64_t)t * T + s2] - dot) * scale : 0.0f;
            }
            for (int t = 0; t < T; t++)
                for (int i = 0; i < D; i++) {
                    float aq = 0.0f, ak = 0.0f, av = 0.0f;
                    for (int s2 = 0; s2 < T; s2++) {
                        aq += R(dS[(int64_t)t * T + s2]) * R(AT(k, b, s2, h, i));
                        ak += R(dS[(int64_t)s2 * T + t]) * R(AT(q, b, s2, h, i));
                        av += R(Pm[(int64_t)s2 * T + t]) * R(AT(dout, b, s2, h, i));
                    }
                    AT(dq, b, t, h, i) += aq, AT(dk, b, t, h, i) += ak, AT(dv, b, t, h, i) += av;
                }
        }
#undef R
#undef AT
    FREE_ALL(P, dS, Pm);
}

static double max_err(const float *a, const float *b, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs((double)a[i] - b[i]) > m ? fabs((double)a[i] - b[i]) : m;
    return m;
}

/* Attention through cuBLAS against the CPU: fp32 within rtol 1e-5; bf16 with an error against the
 * CPU's fp32 of at most 2x that of the bf16-rounding reference (largest element error per tensor). */
static void test_attention(int B, int T, int C, int H, int bf16) {
    int64_t n = (int64_t)B * T * C, na = (int64_t)B * H * T * T;
    size_t b = (size_t)n * sizeof(float), ab = (size_t)na * sizeof(float);
    float *q = randn(n, 1), *k = randn(n, 1), *v = randn(n, 1), *dout = randn(n, 1);
    float *dq = randn(n, 1), *dk = randn(n, 1), *dv = randn(n, 1); // accumulate
    float *out = calloc((size_t)n, sizeof(float)), *att = calloc((size_t)na, sizeof(float));
    float *datt = calloc((size_t)na, sizeof(float)), *r[4];
    void *dQ = dev(q, b), *dK = dev(k, b), *dV = dev(v, b), *dO = dev(out, b), *dA = dev(att, ab), *dDA = dev(datt, ab);
    void *dDout = dev(dout, b), *dDq = dev(dq, b), *dDk = dev(dk, b), *dDv = dev(dv, b);
    for (int i = 0; i < 4; i++) r[i] = malloc(b);
    memcpy(r[1], dq, b), memcpy(r[2], dk, b), memcpy(r[3], dv, b);
    if (bf16) attention_bf16_ref(r[0], r[1], r[2], r[3], q, k, v, dout, B, T, C, H);
    moe__attention_forward(out, att, q, k, v, B, T, C, H, H);
    moe__attention_backward(dq, dk, dv, datt, dout, q, k, v, att, B, T, C, H, H);
    CHECK_OK(moe__cuda_attention_forward(blas, bf16, dO, dA, dQ, dK, dV, B, T, C, H));
    CHECK_OK(moe__cuda_attention_backward(blas, bf16, dDq, dDk, dDv, dDA, dDout, dQ, dK, dV, dA, B, T, C, H));
    const char *what[4] = {"attention forward: out", "attention backward: dq (accumulated)",
                           "attention backward: dk (accumulated)", "attention backward: dv (accumulated)"};
    void *got[4] = {dO, dDq, dDk, dDv};
    float *want[4] = {out, dq, dk, dv};
    for (int i = 0; i < 4; i++) {
        if (!bf16) {
            compare_sum(got[i], want[i], n, what[i]);
            continue;
        }
        float *g = host(got[i], n);
        double eg = max_err(g, want[i], n), er = max_err(r[i], want[i], n);
        CHECK(eg <= 2.0 * er + 1e-6 * maxabs(want[i], n), "bf16 %s (B %d T %d C %d H %d): error %.3g, the bf16 reference's %.3g",
              what[i], B, T, C, H, eg, er);
        free(g);
    }
    if (!bf16) compare_sum(dA, att, na, "attention forward: att (zero above the diagonal)");
    FREE_ALL(q, k, v, dout, dq, dk, dv, out, att, datt, r[0], r[1], r[2], r[3]);
    DFREE_ALL(dQ, dK, dV, dO, dA, dDA, dDout, dDq, dDk, dDv);
}

static void test_router(int64_t N, int E, int K, moe_score score, int norm_topk, int with_bias) {
    int C = 16;
    moe__moe_dims d;
    memset(&d, 0, sizeof d);
    d.E = E, d.K = K, d.C = C, d.T = (int)N, d.F = 1, d.ep = 1, d.El = E, d.training = 1;
    d.routing = MOE_ROUTING_TOPK, d.score = score, d.norm_topk = norm_topk, d.route_scale = 2.5f;
    moe__moe_cache c;
    moe__planner pl = {NULL, 0};
    moe__moe_plan_cache(&pl, &c, &d, N, N * K);
    char *arena = moe__calloc(pl.off);
    pl.base = arena, pl.off = 0;
    moe__moe_plan_cache(&pl, &c, &d, N, N * K);
    float *x = randn(N * C, 1), *wg = randn((int64_t)E * C, 0.5f), *bias = randn(E, 0.05f);
    moe__moe_weights w;
    memset(&w, 0, sizeof w);
    w.wg = wg, w.bias = with_bias ? bias : NULL;
    moe__router_forward(&c, x, &w, &d, N);
    size_t NE = (size_t)N * E * sizeof(float), NK = (size_t)N * K * sizeof(float);
    void *dL = dev(c.logits, NE), *dB = dev(bias, (size_t)E * 4), *dLse = dev(c.lse, (size_t)N * 4), *dSc = dev(c.scores, NE);
    void *dPr = dev(c.probs, NE), *dSel = dev(c.sel, NK), *dGate = dev(c.gate, NK), *dRow = dev(c.row_of, NK), *dZ = dev(x, 4);
    CHECK_OK(moe__cuda_router_topk(dZ, dLse, dSc, dPr, dSel, dGate, dRow, dL, with_bias ? dB : NULL, N, E, K,
                                   score == MOE_SCORE_SIGMOID, norm_topk, d.route_scale));
    compare_sum(dLse, c.lse, N, "router: lse");
    compare_sum(dSc, c.scores, N * E, "router: scores");
    compare_sum(dPr, c.probs, N * E, "router: probs");
    compare_sum(dZ, &c.z, 1, "router: z-loss");
    int *sel = malloc(NK), *row = malloc(NK);
    float *gate = host(dGate, N * K);
    CHECK_OK(moe__cuda_to_host(sel, dSel, NK));
    CHECK_OK(moe__cuda_to_host(row, dRow, NK));
    float *key = malloc((size_t)E * sizeof(float));
    int64_t skipped = 0, bad_sel = 0, bad_gate = 0, bad_row = 0;
    for (int64_t n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) key[e] = c.scores[n * E + e] + (with_bias ? bias[e] : 0.0f);
        if (near_tie(key, c.sel + n * K, E, K)) {
            skipped++;
            continue;
        }
        for (int k = 0; k < K; k++) {
            int64_t a = n * K + k;
            bad_sel += sel[a] != c.sel[a];
            bad_gate += !(fabsf(gate[a] - c.gate[a]) <= 1e-6f + 1e-5f * fabsf(c.gate[a]));
            bad_row += row[a] != 0;
        }
    }
    CHECK(bad_sel == 0 && bad_gate == 0 && bad_row == 0 && skipped < N / 2 + 1,
          "router N %lld E %d K %d: %lld selections, %lld gates, %lld rows differ (%lld near-tie tokens skipped)",
          (long long)N, E, K, (long long)bad_sel, (long long)bad_gate, (long long)bad_row, (long long)skipped);
    FREE_ALL(x, wg, bias, sel, row, gate, key, arena);
    DFREE_ALL(dL, dB, dLse, dSc, dPr, dSel, dGate, dRow, dZ);
}

static void test_crossentropy(int64_t N, int V) {
    size_t NV = (size_t)N * V * sizeof(float);
    float *logits = randn(N * V, 4), *dlogits = malloc(NV), *row = calloc((size_t)N, sizeof(float));
    int *tgt = malloc((size_t)N * sizeof(int));
    for (int64_t n = 0; n < N; n++) tgt[n] = (int)(moe__rng_u64(&rng) % (uint64_t)V);
    void *dL = dev(logits, NV), *dD = dev(logits, NV), *dRow = dev(row, (size_t)N * 4), *dT = dev(tgt, (size_t)N * 4);
    void *dLoss = dev(row, sizeof(float));
    float loss = moe__crossentropy(dlogits, row, logits, tgt, N, V, 0.5f);
    CHECK_OK(moe__cuda_crossentropy(dLoss, dD, dRow, dL, dT, N, V, 0.5f));
    compare_sum(dLoss, &loss, 1, "crossentropy: mean loss");
    compare_sum(dRow, row, N, "crossentropy: row losses");
    compare_sum(dD, dlogits, N * V, "crossentropy: dlogits");
    FREE_ALL(logits, dlogits, row, tgt);
    DFREE_ALL(dL, dD, dRow, dT, dLoss);
}

static void test_sumsq(int64_t n) {
    float *g = randn(n, 2);
    double want = 0.25, got; // accumulates into what is there
    for (int64_t i = 0; i < n; i++) want += (double)g[i] * g[i];
    double start = 0.25;
    void *dG = dev(g, (size_t)n * 4), *dOut = dev(&start, sizeof start), *scratch;
    CHECK_OK(moe__cuda_malloc(&scratch, moe__cuda_sumsq_scratch()));
    CHECK_OK(moe__cuda_sumsq(dOut, scratch, dG, n));
    CHECK_OK(moe__cuda_sync());
    CHECK_OK(moe__cuda_to_host(&got, dOut, sizeof got));
    CHECK_CLOSE(got, want, 1e-300, 1e-12, "sumsq");
    free(g);
    DFREE_ALL(dG, dOut, scratch);
}

static void test_adamw(int64_t n) {
    size_t b = (size_t)n * sizeof(float);
    float *p = randn(n, 1), *m = randn(n, 0.1f), *g = randn(n, 1), *v = randn(n, 0.1f);
    for (int64_t i = 0; i < n; i++) v[i] = v[i] * v[i]; // second moments are >= 0
    void *dP = dev(p, b), *dM = dev(m, b), *dV = dev(v, b), *dG = dev(g, b);
    // step 3 of lr 3e-3, weight decay 0.1, clipped to 0.7 of the gradient
    float bc1 = 1.0f - powf(0.9f, 3.0f), bc2 = 1.0f - powf(0.95f, 3.0f), lr = 3e-3f;
    moe__cpu_adamw_tensor(p, m, v, g, n, 0.7f, 0.9f, 0.95f, 1e-8f, 1.0f - lr * 0.1f, lr / bc1, sqrtf(bc2));
    CHECK_OK(moe__cuda_adamw(dP, dM, dV, dG, n, 0.7f, 0.9f, 0.95f, 1e-8f, 1.0f - lr * 0.1f, lr / bc1, sqrtf(bc2)));
    compare(dP, p, n, "adamw: parameters");
    compare(dM, m, n, "adamw: first moments");
    compare(dV, v, n, "adamw: second moments");
    FREE_ALL(p, m, v, g);
    DFREE_ALL(dP, dM, dV, dG);
}

static float *rounded(const float *x, int64_t n) {
    float *r = malloc((size_t)n * sizeof(float));
    for (int64_t i = 0; i < n; i++) r[i] = bf16_round(x[i]);
    return r;
}

/* One product's three results (forward with accumulate, dx, dw) on the GPU: fp32 against the CPU
 * within rtol 1e-5; bf16 with an error against the CPU's fp32 of at most 2x (per tensor, largest
 * element error) that of the bf16-rounding reference: the CPU's product of bf16-rounded inputs. */
static void test_gemm(moe__cuda_blas *b, int64_t N, int I, int O, int bf16) {
    int64_t nx = N * I, nw = (int64_t)O * I, no = N * O;
    float *x = randn(nx, 1), *w = randn(nw, 0.1f), *dout = randn(no, 1), *out0 = randn(no, 1);
    float *out = malloc((size_t)no * 4), *dx = randn(nx, 1), *dw = randn(nw, 1), *dx0 = malloc((size_t)nx * 4), *dw0 = malloc((size_t)nw * 4);
    memcpy(out, out0, (size_t)no * 4), memcpy(dx0, dx, (size_t)nx * 4), memcpy(dw0, dw, (size_t)nw * 4);
    void *dX = dev(x, (size_t)nx * 4), *dW = dev(w, (size_t)nw * 4), *dD = dev(dout, (size_t)no * 4);
    void *dO = dev(out0, (size_t)no * 4), *dDx = dev(dx0, (size_t)nx * 4), *dDw = dev(dw0, (size_t)nw * 4);
    moe__matmul_forward(out, x, w, N, I, O, 1);
    moe__matmul_backward(dx, dw, dout, x, w, N, I, O);
    CHECK_OK(moe__cuda_matmul_forward(b, bf16, dO, dX, dW, N, I, O, 1));
    CHECK_OK(moe__cuda_matmul_backward(b, bf16, dDx, dDw, dD, dX, dW, N, I, O));
    float *res[3] = {out, dx, dw};
    void *got[3] = {dO, dDx, dDw};
    int64_t n[3] = {no, nx, nw};
    const char *what[3] = {"matmul forward (accumulated)", "matmul backward: dx", "matmul backward: dw"};
    if (!bf16) {
        for (int i = 0; i < 3; i++) compare_sum(got[i], res[i], n[i], what[i]);
    } else {
        float *xr = rounded(x, nx), *wr = rounded(w, nw), *dr = rounded(dout, no);
        float *ro = malloc((size_t)no * 4), *rdx = malloc((size_t)nx * 4), *rdw = malloc((size_t)nw * 4);
        memcpy(ro, out0, (size_t)no * 4), memcpy(rdx, dx0, (size_t)nx * 4), memcpy(rdw, dw0, (size_t)nw * 4);
        moe__matmul_forward(ro, xr, wr, N, I, O, 1);
        moe__matmul_backward(rdx, rdw, dr, xr, wr, N, I, O);
        float *ref[3] = {ro, rdx, rdw};
        for (int i = 0; i < 3; i++) {
            float *g = host(got[i], n[i]);
            double eg = max_err(g, res[i], n[i]), er = max_err(ref[i], res[i], n[i]);
            CHECK(eg <= 2.0 * er + 1e-6 * maxabs(res[i], n[i]), "bf16 %s (%lld x %d x %d): error %.3g, the bf16 reference's %.3g",
                  what[i], (long long)N, I, O, eg, er);
            free(g);
        }
        FREE_ALL(xr, wr, dr, ro, rdx, rdw);
    }
    FREE_ALL(x, w, dout, out0, out, dx, dw, dx0, dw0);
    DFREE_ALL(dX, dW, dD, dO, dDx, dDw);
}

/* Forward overwriting (beta 0, over garbage) and a backward with dx or dw left out (NULL). */
static void test_gemm_overwrite(moe__cuda_blas *b, int64_t N, int I, int O) {
    int64_t nx = N * I, nw = (int64_t)O * I, no = N * O;
    float *x = randn(nx, 1), *w = randn(nw, 0.1f), *dout = randn(no, 1), *out = randn(no, 1), *dx = randn(nx, 1);
    float *dw = randn(nw, 1);
    void *dX = dev(x, (size_t)nx * 4), *dW = dev(w, (size_t)nw * 4), *dD = dev(dout, (size_t)no * 4);
    void *dO = dev(out, (size_t)no * 4), *dDx = dev(dx, (size_t)nx * 4), *dDw = dev(dw, (size_t)nw * 4);
    moe__matmul_forward(out, x, w, N, I, O, 0);
    moe__matmul_backward(NULL, dw, dout, x, w, N, I, O);
    moe__matmul_backward(dx, NULL, dout, x, w, N, I, O);
    CHECK_OK(moe__cuda_matmul_forward(b, 0, dO, dX, dW, N, I, O, 0));
    CHECK_OK(moe__cuda_matmul_backward(b, 0, NULL, dDw, dD, dX, dW, N, I, O));
    CHECK_OK(moe__cuda_matmul_backward(b, 0, dDx, NULL, dD, dX, dW, N, I, O));
    compare_sum(dO, out, no, "matmul forward (overwritten)");
    compare_sum(dDw, dw, nw, "matmul backward: dw alone");
    compare_sum(dDx, dx, nx, "matmul backward: dx alone");
    FREE_ALL(x, w, dout, out, dx, dw);
    DFREE_ALL(dX, dW, dD, dO, dDx, dDw);
}

#define SCRATCH_BYTES ((size_t)2 * 2 * 1000 * 1000) /* bf16 scratch of the tests' blas: 2M elements */

static void test_gemms(void *dsc) {
    moe__cuda_blas *b = blas;
    const int shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {300, 128, 384}, {1000, 256, 1000}, {33, 1000, 7}};
    for (int bf16 = 0; bf16 <= 1; bf16++)
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
            test_gemm(b, shapes[i][0], shapes[i][1], shapes[i][2], bf16);
    test_gemm_overwrite(b, 65, 48, 80);
    CHECK_OK(moe__cuda_matmul_forward(b, 0, dsc, dsc, dsc, 0, 4, 4, 0)); // no rows: nothing to do
    CHECK(moe__cuda_matmul_forward(b, 1, dsc, dsc, dsc, 1001, 1000, 1000, 0) == MOE_STATUS_ARG,
          "a bf16 product larger than the scratch is refused");
}

int main(void) {
    if (gpu_or_skip("test_cuda")) return 77;
    moe__rng_seed(&rng, 20261130);
    const int64_t rows[] = {1, 7, 33, 300};
    const int widths[] = {1, 13, 256, 384, 1000};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 5; j++) test_rmsnorm(rows[i], widths[j]);
    const int64_t lens[] = {1, 255, 4097, 1000003};
    for (int i = 0; i < 4; i++) test_swiglu(lens[i]), test_sumsq(lens[i]), test_adamw(lens[i]);
    test_embedding(1, 2, 1);
    test_embedding(300, 7, 33);
    test_embedding(1000, 256, 384);
    size_t ws = moe__cuda_blas_workspace_bytes();
    void *dws, *dsc;
    CHECK_OK(moe__cuda_malloc(&dws, ws));
    CHECK_OK(moe__cuda_malloc(&dsc, SCRATCH_BYTES));
    CHECK_OK(moe__cuda_blas_create(&blas, dws, ws, dsc, SCRATCH_BYTES));
    for (int bf16 = 0; bf16 <= 1; bf16++) {
        test_attention(1, 1, 2, 1, bf16);
        test_attention(2, 13, 24, 3, bf16);
        test_attention(2, 130, 128, 4, bf16); // T over the block width
    }
    test_router(1, 1, 1, MOE_SCORE_SOFTMAX, 1, 0);
    test_router(257, 8, 2, MOE_SCORE_SOFTMAX, 1, 0);
    test_router(257, 8, 2, MOE_SCORE_SOFTMAX, 0, 0);
    test_router(100, 64, 6, MOE_SCORE_SIGMOID, 1, 1);
    test_router(100, 16, 16, MOE_SCORE_SIGMOID, 0, 1);
    test_rope(1, 1, 2, 1);
    test_rope(3, 17, 24, 3);
    test_rope(2, 128, 128, 4);
    const int vocabs[] = {2, 256, 1000, 32000};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) test_crossentropy(rows[i], vocabs[j]);
    test_gemms(dsc);
    moe__cuda_blas_free(blas);
    DFREE_ALL(dws, dsc);
    CHECK_SUMMARY("test_cuda");
}
