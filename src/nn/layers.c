/*
 * layers.c — the dense layers of the transformer: RMSNorm, RoPE, causal attention, SwiGLU,
 * the SwiGLU FFN, cross-entropy and the token embedding (attention is in attention.c). Conventions follow Hugging Face Llama/Mixtral:
 * RMSNorm y = x / sqrt(mean(x^2) + eps) * w; RoPE with rotate-half pairing (i, i + D/2) and
 * inv_freq_i = theta^(-2i/D); attention softmax(q k^T / sqrt(D)) with a causal mask.
 *
 * Backward passes accumulate (+=) into parameter gradients and into input gradients (dx, dq,
 * dk, dv); scratch buffers named as such are overwritten.
 */
#include "core/core.h"
#include "nn/nn.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* ---------------------------------------------------------------- embedding */

void moe__embedding_forward(float *x, const float *wte, const int *tokens, int64_t N, int C) {
    // x_n = wte[token_n]
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) memcpy(x + n * C, wte + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
}

void moe__embedding_backward(float *gwte, const float *dx, const int *tokens, int64_t N, int C) {
    // parallel over channels so each gradient row is summed in token order
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++)
        for (int64_t n = 0; n < N; n++) gwte[(int64_t)tokens[n] * C + i] += dx[n * C + i];
}

/* ---------------------------------------------------------------- RMSNorm */

void moe__rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int C, float eps) {
    // x is (N,C), w is (C), out is (N,C), rstd is (N)
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += xn[i] * xn[i];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
        float *on = out + n * C;
        for (int i = 0; i < C; i++) on[i] = xn[i] * r * w[i];
    }
}

void moe__rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int64_t N, int C) {
    // out_i = x_i * r * w_i with r = (mean(x^2) + eps)^(-1/2), dr/dx_j = -r^3 x_j / C
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C, *dn = dout + n * C;
        float r = rstd[n];
        float dot = 0.0f; // sum_i dout_i w_i x_i
        for (int i = 0; i < C; i++) dot += dn[i] * w[i] * xn[i];
        float k = r * r * r * dot / (float)C;
        float *dxn = dx + n * C;
        for (int i = 0; i < C; i++) dxn[i] += dn[i] * w[i] * r - k * xn[i];
    }
    // dw_i = sum_n dout_i x_i r; parallel over channels so the sum order is fixed
#pragma omp parallel for schedule(static)
    for (int i = 0; i < C; i++) {
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) acc += dout[n * C + i] * x[n * C + i] * rstd[n];
        dw[i] += acc;
    }
}

/* ---------------------------------------------------------------- RoPE */

void moe__rope_tables(float *cos_t, float *sin_t, int T, int D, float theta) {
    int half = D / 2;
    for (int i = 0; i < half; i++) {
        // inv_freq in float32, as Hugging Face computes it
        float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
        for (int t = 0; t < T; t++) {
            float a = (float)t * inv_freq;
            cos_t[t * half + i] = cosf(a);
            sin_t[t * half + i] = sinf(a);
        }
    }
}

static void rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H, float sign) {
    // x is (B,T,C) with H heads of size D; rotate pairs (i, i+D/2) by angle sign * t * inv_freq_i
    int D = C / H, half = D / 2;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < (int64_t)B * T; bt++) {
        int t = (int)(bt % T);
        const float *ct = cos_t + (int64_t)t * half, *st = sin_t + (int64_t)t * half;
        for (int h = 0; h < H; h++) {
            float *v = x + bt * C + (int64_t)h * D;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], c = ct[i], s = sign * st[i];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

void moe__rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H) {
    rope_apply(x, cos_t, sin_t, B, T, C, H, 1.0f);
}

void moe__rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int C, int H) {
    // the rotation is orthogonal: its transpose is the rotation by the opposite angle
    rope_apply(dx, cos_t, sin_t, B, T, C, H, -1.0f);
}

/* ---------------------------------------------------------------- SwiGLU */

void moe__swiglu_forward(float *act, const float *h1, const float *h3, int64_t n) {
    // act = silu(h1) * h3, silu(z) = z * sigmoid(z)
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float z = h1[i];
        act[i] = z / (1.0f + expf(-z)) * h3[i];
    }
}

void moe__swiglu_backward(float *dh1, float *dh3, const float *dact, const float *h1, const float *h3, int64_t n) {
    // silu'(z) = sig(z) (1 + z (1 - sig(z))); dh1, dh3 are overwritten
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float z = h1[i];
        float sg = 1.0f / (1.0f + expf(-z));
        dh3[i] = dact[i] * z * sg;
        dh1[i] = dact[i] * h3[i] * sg * (1.0f + z * (1.0f - sg));
    }
}

void moe__ffn_forward(float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                      const float *w3, const float *w2, int64_t N, int C, int F, int accumulate) {
    // x is (N,C), w1 and w3 are (F,C), w2 is (C,F); h1, h3, act are (N,F); y is (N,C)
    moe__matmul_forward(h1, x, w1, N, C, F, 0);
    moe__matmul_forward(h3, x, w3, N, C, F, 0);
    moe__swiglu_forward(act, h1, h3, N * F);
    moe__matmul_forward(y, act, w2, N, F, C, accumulate);
}

void moe__ffn_backward(float *dx, float *dw1, float *dw3, float *dw2, float *dact, float *dh1, float *dh3,
                       const float *dy, const float *x, const float *h1, const float *h3, const float *act,
                       const float *w1, const float *w3, const float *w2, int64_t N, int C, int F) {
    if (N == 0) return;
    // y = act @ w2^T: dact = dy @ w2 (overwritten, no memset pass), dw2 += dy^T @ act
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, F, C, 1.0f, dy, C, w2, F, 0.0f, dact, F);
    moe__matmul_backward(NULL, dw2, dy, act, w2, N, F, C);
    // act = silu(h1) * h3
    moe__swiglu_backward(dh1, dh3, dact, h1, h3, N * F);
    // h1 = x @ w1^T, h3 = x @ w3^T
    moe__matmul_backward(dx, dw1, dh1, x, w1, N, C, F);
    moe__matmul_backward(dx, dw3, dh3, x, w3, N, C, F);
}

/* ---------------------------------------------------------------- cross-entropy */

float moe__crossentropy(float *dlogits, float *row_loss, const float *logits, const int *targets, int64_t N,
                        int V, float scale) {
    // logits and dlogits are (N,V); loss = mean_n (logsumexp(logits_n) - logits_n[target_n]).
    // Per-row losses go to row_loss (N) and are summed in a fixed order, so the value does not
    // depend on how OpenMP combines partial sums.
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *l = logits + n * V;
        float maxv = l[0];
        for (int i = 1; i < V; i++) maxv = l[i] > maxv ? l[i] : maxv;
        float sum = 0.0f;
        for (int i = 0; i < V; i++) sum += expf(l[i] - maxv);
        float lse = maxv + logf(sum);
        row_loss[n] = lse - l[targets[n]];
        if (dlogits) {
            float *d = dlogits + n * V;
            float k = scale / (float)N;
            for (int i = 0; i < V; i++) d[i] = expf(l[i] - lse) * k;
            d[targets[n]] -= k;
        }
    }
    double total = 0.0;
    for (int64_t n = 0; n < N; n++) total += row_loss[n];
    return (float)(total / (double)N);
}
