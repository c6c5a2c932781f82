/*
 * matmul.c — linear layers on rows: out (N,Cout) = x (N,Cin) @ w^T with w stored (Cout,Cin), the
 * Hugging Face / PyTorch nn.Linear layout. The fast path is BLAS sgemm; the _ref path is a
 * plain triple loop for tests.
 */
#include "core/core.h"
#include "nn/nn.h"

#include <cblas.h>

void moe__matmul_forward(float *out, const float *x, const float *w, int64_t N, int Cin, int Cout, int accumulate) {
    // x is (N,Cin), w is (Cout,Cin), out is (N,Cout)
    if (N == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, Cout, Cin, 1.0f, x, Cin, w, Cin,
                accumulate ? 1.0f : 0.0f, out, Cout);
}

void moe__matmul_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                          int64_t N, int Cin, int Cout) {
    if (N == 0) return;
    // forward: out = x @ w^T, so dx += dout @ w and dw += dout^T @ x
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, Cin, Cout, 1.0f, dout, Cout, w, Cin, 1.0f, dx, Cin);
    if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Cout, Cin, (int)N, 1.0f, dout, Cout, x, Cin, 1.0f, dw, Cin);
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
