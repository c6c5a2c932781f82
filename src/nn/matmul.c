/*
 * matmul.c — linear layers on rows: out (N,Cout) = x (N,Cin) @ w^T with w stored (Cout,Cin), the
 * Hugging Face / PyTorch nn.Linear layout. The fast path is BLAS sgemm on fixed tiles (below);
 * the _ref path is a plain triple loop for tests.
 */
#include "core/core.h"
#include "nn/nn.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

moe__gemm moe__linear_fwd(float *out, const float *x, const float *w, int64_t N, int Cin, int Cout, int accumulate) {
    // x is (N,Cin), w is (Cout,Cin), out is (N,Cout): out = x @ w^T
    return (moe__gemm){.A = x, .B = w, .C = out, .M = (int)N, .N = Cout, .K = Cin, .lda = Cin, .ldb = Cin,
                       .ldc = Cout, .ta = 0, .tb = 1, .alpha = 1.0f, .beta = accumulate ? 1.0f : 0.0f};
}

moe__gemm moe__linear_dx(float *dx, const float *dout, const float *w, int64_t N, int Cin, int Cout, int accumulate) {
    // dx (N,Cin) (+)= dout (N,Cout) @ w (Cout,Cin)
    return (moe__gemm){.A = dout, .B = w, .C = dx, .M = (int)N, .N = Cin, .K = Cout, .lda = Cout, .ldb = Cin,
                       .ldc = Cin, .ta = 0, .tb = 0, .alpha = 1.0f, .beta = accumulate ? 1.0f : 0.0f};
}

moe__gemm moe__linear_dw(float *dw, const float *dout, const float *x, int64_t N, int Cin, int Cout) {
    // dw (Cout,Cin) += dout^T (Cout,N) @ x (N,Cin)
    return (moe__gemm){.A = dout, .B = x, .C = dw, .M = Cout, .N = Cin, .K = (int)N, .lda = Cout, .ldb = Cin,
                       .ldc = Cin, .ta = 1, .tb = 0, .alpha = 1.0f, .beta = 1.0f};
}

void moe__matmul_forward(float *out, const float *x, const float *w, int64_t N, int Cin, int Cout, int accumulate) {
    if (N == 0) return;
    moe__gemm g = moe__linear_fwd(out, x, w, N, Cin, Cout, accumulate);
    moe__gemm_run(&g, 1);
}

void moe__matmul_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                          int64_t N, int Cin, int Cout) {
    if (N == 0) return;
    // forward: out = x @ w^T, so dx += dout @ w and dw += dout^T @ x (different outputs: one list)
    moe__gemm g[2];
    int n = 0;
    if (dx) g[n++] = moe__linear_dx(dx, dout, w, N, Cin, Cout, 1);
    if (dw) g[n++] = moe__linear_dw(dw, dout, x, N, Cin, Cout);
    moe__gemm_run(g, n);
}

void moe__matmul_forward_ref(float *out, const float *x, const float *w, int64_t N, int Cin, int Cout, int accumulate) {
    for (int64_t n = 0; n < N; n++)
        for (int o = 0; o < Cout; o++) {
            double acc = accumulate ? out[n * Cout + o] : 0.0;
            for (int i = 0; i < Cin; i++) acc += (double)x[n * Cin + i] * w[(int64_t)o * Cin + i];
            out[n * Cout + o] = (float)acc;
        }
}

void moe__matmul_backward_ref(float *dx, float *dw, const float *dout, const float *x, const float *w,
                              int64_t N, int Cin, int Cout) {
    if (dx)
        for (int64_t n = 0; n < N; n++)
            for (int i = 0; i < Cin; i++) {
                double acc = 0;
                for (int o = 0; o < Cout; o++) acc += (double)dout[n * Cout + o] * w[(int64_t)o * Cin + i];
                dx[n * Cin + i] += (float)acc;
            }
    if (dw)
        for (int o = 0; o < Cout; o++)
            for (int i = 0; i < Cin; i++) {
                double acc = 0;
                for (int64_t n = 0; n < N; n++) acc += (double)dout[n * Cout + o] * x[n * Cin + i];
                dw[(int64_t)o * Cin + i] += (float)acc;
            }
}

/* ---------------------------------------------------------------- tiled GEMMs
 *
 * Every product outside attention runs here: a list of independent GEMMs, each cut into tiles of
 * its output whose shape depends on (M, N, K) only, every tile one single-threaded BLAS call
 * with the whole K. All tiles of the list share one parallel region. So a product's bits never
 * depend on the thread count (OpenBLAS's own threading does change them: it was 1 thread against
 * 2 on every shape tried), and the experts of a layer share the cores, however few rows each
 * has. */

enum {
    TILE_ALIGN = 16,              // tile sides are multiples of this (the kernels' register blocks)
    TILE_MAX = 64,                // tiles per GEMM at most
    TILE_MIN_FLOP = 1 << 25,      // a tile is not cut below this many multiply-adds (its packing
                                  // would cost too much against its products)
    TILE_MIN_GEMV = 1 << 16,      // a product of one row is a GEMV, bound by reading the weights
                                  // (no packing): its tiles may be much smaller
};

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Halves the longer side of the tile until there are TILE_MAX tiles or a tile would be too small. */
static void tile_shape(const moe__gemm *g, int *tm, int *tn) {
    int64_t m = g->M, n = g->N;
    for (;;) {
        if (ceil_div(g->M, m) * ceil_div(g->N, n) * 2 > TILE_MAX ||
            m * n * g->K < (g->M == 1 ? TILE_MIN_GEMV : TILE_MIN_FLOP))
            break;
        if (m >= n && m > TILE_ALIGN) m = ceil_div(ceil_div(m, 2), TILE_ALIGN) * TILE_ALIGN;
        else if (n > TILE_ALIGN) n = ceil_div(ceil_div(n, 2), TILE_ALIGN) * TILE_ALIGN;
        else break;
    }
    *tm = (int)m, *tn = (int)n;
}

static void gemm_tile(const moe__gemm *g, int tm, int tn, int64_t t) {
    int64_t per_row = ceil_div(g->N, tn);
    int m0 = (int)(t / per_row) * tm, n0 = (int)(t % per_row) * tn;
    int m = g->M - m0 < tm ? g->M - m0 : tm, n = g->N - n0 < tn ? g->N - n0 : tn;
    // op(A) rows m0.. are A's rows (or its columns when transposed); op(B) columns likewise
    const float *A = g->ta ? g->A + m0 : g->A + (int64_t)m0 * g->lda;
    const float *B = g->tb ? g->B + (int64_t)n0 * g->ldb : g->B + n0;
    if (g->M == 1) { // one row: a GEMV (sgemm would pack all of B first); c = op(B)^T a
        cblas_sgemv(CblasRowMajor, g->tb ? CblasNoTrans : CblasTrans, g->tb ? n : g->K, g->tb ? g->K : n, g->alpha, B,
                    g->ldb, A, g->ta ? g->lda : 1, g->beta, g->C + n0, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans, g->tb ? CblasTrans : CblasNoTrans, m, n, g->K,
                g->alpha, A, g->lda, B, g->ldb, g->beta, g->C + (int64_t)m0 * g->ldc + n0, g->ldc);
}

void moe__gemm_run(const moe__gemm *g, int n) {
    enum { MAX_LIST = 1024 };
    int tm[MAX_LIST], tn[MAX_LIST];
    int64_t first[MAX_LIST + 1];
    if (n > MAX_LIST) { // longer lists (thousands of experts) go in parts
        for (int i = 0; i < n; i += MAX_LIST) moe__gemm_run(g + i, n - i < MAX_LIST ? n - i : MAX_LIST);
        return;
    }
    first[0] = 0;
    for (int i = 0; i < n; i++) {
        int64_t tiles = 0;
        if (g[i].M > 0 && g[i].N > 0) {
            tile_shape(&g[i], &tm[i], &tn[i]);
            tiles = ceil_div(g[i].M, tm[i]) * ceil_div(g[i].N, tn[i]);
        }
        first[i + 1] = first[i] + tiles;
    }
    int64_t tasks = first[n];
#pragma omp parallel if (tasks > 1)
    {
#ifdef _OPENMP
        omp_set_num_threads(1); // for this thread's tasks only: each BLAS call runs on its caller
#endif
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            int i = 0;
            while (first[i + 1] <= t) i++;
            gemm_tile(&g[i], tm[i], tn[i], t - first[i]);
        }
    }
}
