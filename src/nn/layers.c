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

void moe__bias_forward(float *out, const float *b, int64_t N, int O) {
#pragma omp parallel for schedule(static) if (N * O > 4096)
    for (int64_t n = 0; n < N; n++)
        for (int o = 0; o < O; o++) out[n * O + o] += b[o];
}

void moe__bias_backward(float *db, const float *dout, int64_t N, int O) {
#pragma omp parallel for schedule(static) if (N * O > 4096)
    for (int o = 0; o < O; o++) {
        float acc = 0.0f;
        for (int64_t n = 0; n < N; n++) acc += dout[n * O + o];
        db[o] += acc;
    }
}

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

/* Rotates the H heads of one row (C = H * D) at the position whose table rows are ct, st: pairs
 * (i, i+D/2) by angle sign * pos * inv_freq_i. */
static void rope_row(float *x, const float *ct, const float *st, int C, int H, float sign) {
    int D = C / H, half = D / 2;
    for (int h = 0; h < H; h++) {
        float *v = x + (int64_t)h * D;
        for (int i = 0; i < half; i++) {
            float a = v[i], b = v[i + half], c = ct[i], s = sign * st[i];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

static void rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H, float sign) {
    // x is (B,T,C): row bt is at position bt % T
    int64_t half = C / H / 2;
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < (int64_t)B * T; bt++)
        rope_row(x + bt * C, cos_t + bt % T * half, sin_t + bt % T * half, C, H, sign);
}

void moe__rope_rows(float *x, const float *cos_t, const float *sin_t, int64_t N, int C, int H, const int *pos) {
    int64_t half = C / H / 2;
#pragma omp parallel for schedule(static) if (N > 1)
    for (int64_t n = 0; n < N; n++) rope_row(x + n * C, cos_t + pos[n] * half, sin_t + pos[n] * half, C, H, 1.0f);
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

/* The expert blocks of a layer go to moe__gemm_run CHUNK at a time: one parallel region per
 * product for all of them, so few rows per expert still fill the cores. */
enum { CHUNK = 128 };

void moe__ffn_forward_blocks(float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                             const float *w3, const float *w2, const int64_t *rows, int n, int C, int F,
                             int accumulate) {
    // block i: rows rows[i] .. rows[i+1]-1 of x, y (C wide) and h1, h3, act (F wide); weights
    // w1 + i F C, w3 + i F C (F,C) and w2 + i F C (C,F)
    moe__gemm g[2 * CHUNK];
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        int k = 0;
        for (int i = i0; i < n && i < i0 + CHUNK; i++) {
            int64_t r = rows[i], ne = rows[i + 1] - r, wo = (int64_t)i * F * C;
            if (ne == 0) continue;
            g[k++] = moe__linear_fwd(h1 + r * F, x + r * C, w1 + wo, ne, C, F, 0);
            g[k++] = moe__linear_fwd(h3 + r * F, x + r * C, w3 + wo, ne, C, F, 0);
        }
        moe__gemm_run(g, k);
    }
    moe__swiglu_forward(act + rows[0] * F, h1 + rows[0] * F, h3 + rows[0] * F, (rows[n] - rows[0]) * F);
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        int k = 0;
        for (int i = i0; i < n && i < i0 + CHUNK; i++) {
            int64_t r = rows[i], ne = rows[i + 1] - r, wo = (int64_t)i * F * C;
            if (ne > 0) g[k++] = moe__linear_fwd(y + r * C, act + r * F, w2 + wo, ne, F, C, accumulate);
        }
        moe__gemm_run(g, k);
    }
}

void moe__ffn_backward_blocks(float *dx, float *dw1, float *dw3, float *dw2, float *dact, float *dh1, float *dh3,
                              const float *dy, const float *x, const float *h1, const float *h3, const float *act,
                              const float *w1, const float *w3, const float *w2, const int64_t *rows, int n, int C,
                              int F) {
    moe__gemm g[3 * CHUNK];
    // y = act @ w2^T: dact = dy @ w2 (overwritten, no memset pass), dw2 += dy^T @ act
    for (int i0 = 0; i0 < n; i0 += CHUNK) {
        int k = 0;
        for (int i = i0; i < n && i < i0 + CHUNK; i++) {
            int64_t r = rows[i], ne = rows[i + 1] - r, wo = (int64_t)i * F * C;
            if (ne == 0) continue;
            g[k++] = moe__linear_dx(dact + r * F, dy + r * C, w2 + wo, ne, F, C, 0);
            g[k++] = moe__linear_dw(dw2 + wo, dy + r * C, act + r * F, ne, F, C);
        }
        moe__gemm_run(g, k);
    }
    // act = silu(h1) * h3
    int64_t r0 = rows[0];
    moe__swiglu_backward(dh1 + r0 * F, dh3 + r0 * F, dact + r0 * F, h1 + r0 * F, h3 + r0 * F, (rows[n] - r0) * F);
    // h1 = x @ w1^T, h3 = x @ w3^T: dx += dh1 @ w1, then dx += dh3 @ w3 (one output, two passes)
    for (int pass = 0; pass < 2; pass++)
        for (int i0 = 0; i0 < n; i0 += CHUNK) {
            int k = 0;
            for (int i = i0; i < n && i < i0 + CHUNK; i++) {
                int64_t r = rows[i], ne = rows[i + 1] - r, wo = (int64_t)i * F * C;
                if (ne == 0) continue;
                if (pass == 0) {
                    g[k++] = moe__linear_dx(dx + r * C, dh1 + r * F, w1 + wo, ne, C, F, 1);
                    g[k++] = moe__linear_dw(dw1 + wo, dh1 + r * F, x + r * C, ne, C, F);
                    g[k++] = moe__linear_dw(dw3 + wo, dh3 + r * F, x + r * C, ne, C, F);
                } else {
                    g[k++] = moe__linear_dx(dx + r * C, dh3 + r * F, w3 + wo, ne, C, F, 1);
                }
            }
            moe__gemm_run(g, k);
        }
}

void moe__ffn_forward(float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                      const float *w3, const float *w2, int64_t N, int C, int F, int accumulate) {
    // x is (N,C), w1 and w3 are (F,C), w2 is (C,F); h1, h3, act are (N,F); y is (N,C)
    int64_t rows[2] = {0, N};
    moe__ffn_forward_blocks(y, h1, h3, act, x, w1, w3, w2, rows, 1, C, F, accumulate);
}

void moe__ffn_backward(float *dx, float *dw1, float *dw3, float *dw2, float *dact, float *dh1, float *dh3,
                       const float *dy, const float *x, const float *h1, const float *h3, const float *act,
                       const float *w1, const float *w3, const float *w2, int64_t N, int C, int F) {
    int64_t rows[2] = {0, N};
    moe__ffn_backward_blocks(dx, dw1, dw3, dw2, dact, dh1, dh3, dy, x, h1, h3, act, w1, w3, w2, rows, 1, C, F);
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
