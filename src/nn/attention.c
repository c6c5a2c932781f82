/*
 * attention.c — causal multi-head attention, softmax(q k^T / sqrt(D)) v per head, on (B,T,C)
 * activations with H heads of size D = C/H (heads are column slices of C).
 *
 * The fast path runs each (batch, head) on one thread with single-threaded BLAS products on
 * row tiles of TILE queries, each against the keys up to its last row only (the causal
 * triangle, so about half the products of the full square); the _ref path is plain loops.
 * att (B,H,T,T) keeps the probabilities for the backward pass (zero above the diagonal); without
 * a backward (inference), _tiled keeps one tile of TILE x T scores per thread instead.
 * Backward: dq, dk, dv accumulate; datt (B,H,T,T) is scratch.
 */
#include "core/core.h"
#include "nn/nn.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define TILE 64

int moe__attention_tile(void) { return TILE; }

/* One (batch, head): its queries by row tiles against the keys up to each tile's last row. The
 * probabilities of rows t0.. go to A + t0 * T when full (the (T,T) matrix kept for backward),
 * else to A itself (one tile of scores, reused). */
static void attend_head(float *O, float *A, int full, const float *Q, const float *K, const float *V, int T, int C,
                        int KC, int D, float scale) {
    for (int t0 = 0; t0 < T; t0 += TILE) {
        int rows = T - t0 < TILE ? T - t0 : TILE, cols = t0 + rows; // keys 0 .. cols-1
        float *At = full ? A + (int64_t)t0 * T : A;
        // scores = scale * Q[t0:t0+rows] K[0:cols]^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, D, scale, Q + (int64_t)t0 * C, C, K, KC, 0.0f,
                    At, T);
        for (int r = 0; r < rows; r++) {
            int t = t0 + r;
            float *at = At + (int64_t)r * T;
            float maxv = at[0];
            for (int s = 1; s <= t; s++) maxv = at[s] > maxv ? at[s] : maxv;
            float sum = 0.0f;
            for (int s = 0; s <= t; s++) sum += (at[s] = expf(at[s] - maxv));
            float inv = 1.0f / sum;
            for (int s = 0; s <= t; s++) at[s] *= inv;
            for (int s = t + 1; s < (full ? T : cols); s++) at[s] = 0.0f; // masked (the tile: within its keys)
        }
        // out = att V
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, cols, 1.0f, At, T, V, KC, 0.0f,
                    O + (int64_t)t0 * C, C);
    }
}

void moe__attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int T, int C, int H, int Hkv) {
    int D = C / H, KC = Hkv * D, G = H / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int64_t ho = (int64_t)b * T * C + h * D, ko = (int64_t)b * T * KC + (h / G) * D;
            attend_head(out + ho, att + ((int64_t)b * H + h) * T * T, 1, q + ho, k + ko, v + ko, T, C, KC, D, scale);
        }
}

void moe__attention_forward_tiled(float *out, float *scratch, int threads, const float *q, const float *k,
                                  const float *v, int B, int T, int C, int H, int Hkv) {
    int D = C / H, KC = Hkv * D, G = H / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(threads)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            int64_t ho = (int64_t)b * T * C + h * D, ko = (int64_t)b * T * KC + (h / G) * D;
            attend_head(out + ho, scratch + (int64_t)tid * TILE * T, 0, q + ho, k + ko, v + ko, T, C, KC, D, scale);
        }
}

void moe__attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                             const float *k, const float *v, const float *att, int B, int T, int C, int H, int Hkv) {
    // each (b, kv head) runs the query heads that share it in order: it alone writes their slices
    // of dq and datt and its own slices of dk and dv
    int D = C / H, KC = Hkv * D, G = H / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < Hkv; g++)
            for (int h = g * G; h < (g + 1) * G; h++) {
                int64_t ho = (int64_t)b * T * C + h * D, ko = (int64_t)b * T * KC + (int64_t)g * D;
                const float *A = att + ((int64_t)b * H + h) * T * T;
                float *dA = datt + ((int64_t)b * H + h) * T * T;
                for (int t0 = 0; t0 < T; t0 += TILE) {
                    int rows = T - t0 < TILE ? T - t0 : TILE, cols = t0 + rows;
                    const float *At = A + (int64_t)t0 * T, *dOt = dout + ho + (int64_t)t0 * C;
                    float *dAt = dA + (int64_t)t0 * T;
                    // out = att V: datt = dout V^T, dV += att^T dout
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, D, 1.0f, dOt, C, v + ko, KC, 0.0f,
                                dAt, T);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, D, rows, 1.0f, At, T, dOt, C, 1.0f,
                                dv + ko, KC);
                    // att = softmax(scores): dscores = att (datt - sum_s att datt), times scale
                    for (int r = 0; r < rows; r++) {
                        int t = t0 + r;
                        const float *at = A + (int64_t)t * T;
                        float *da = dA + (int64_t)t * T;
                        float dot = 0.0f;
                        for (int s = 0; s <= t; s++) dot += at[s] * da[s];
                        for (int s = 0; s <= t; s++) da[s] = at[s] * (da[s] - dot) * scale;
                        for (int s = t + 1; s < cols; s++) da[s] = 0.0f;
                    }
                    // scores = Q K^T: dQ += dscores K, dK += dscores^T Q
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, D, cols, 1.0f, dAt, T, k + ko, KC, 1.0f,
                                dq + ho + (int64_t)t0 * C, C);
                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, cols, D, rows, 1.0f, dAt, T,
                                q + ho + (int64_t)t0 * C, C, 1.0f, dk + ko, KC);
                }
            }
}

/* ---------------------------------------------------------------- attention */

void moe__attention_row(float *out, float *p, const float *q, const float *K, const float *V, int n, int ld, int D,
                        float scale) {
    float maxv = -INFINITY;
    for (int j = 0; j < n; j++) {
        const float *kj = K + (int64_t)j * ld;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int i = 0; i < D; i++) dot += q[i] * kj[i];
        p[j] = dot * scale;
        maxv = p[j] > maxv ? p[j] : maxv;
    }
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += (p[j] = expf(p[j] - maxv));
    float inv = 1.0f / sum;
    for (int i = 0; i < D; i++) out[i] = 0.0f;
    for (int j = 0; j < n; j++) {
        const float *vj = V + (int64_t)j * ld;
        float w = (p[j] *= inv);
#pragma omp simd
        for (int i = 0; i < D; i++) out[i] += w * vj[i];
    }
}

void moe__attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int T, int C, int H, int Hkv) {
    // q, out are (B,T,C) with H heads of size D; k, v (B,T,Hkv D), query head h reading key/value
    // head h / (H / Hkv); att is (B,H,T,T), zero above the diagonal
    int D = C / H, KC = Hkv * D, G = H / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                float *at = att + (((int64_t)b * H + h) * T + t) * T;
                int64_t kv = (int64_t)b * T * KC + (h / G) * D;
                moe__attention_row(out + ((int64_t)b * T + t) * C + h * D, at, q + ((int64_t)b * T + t) * C + h * D,
                                   k + kv, v + kv, t + 1, KC, D, scale);
                for (int s = t + 1; s < T; s++) at[s] = 0.0f;
            }
}

void moe__attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *att, int B, int T, int C, int H, int Hkv) {
    // heads of one sequence share its dk, dv slices (grouped-query): a sequence is one thread's
    int D = C / H, KC = Hkv * D, G = H / Hkv;
    float scale = 1.0f / sqrtf((float)D);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *a = att + ((int64_t)b * H + h) * T * T;
            for (int t = 0; t < T; t++) {
                const float *at = a + (int64_t)t * T;
                const float *dot_ = dout + ((int64_t)b * T + t) * C + h * D;
                const float *qt = q + ((int64_t)b * T + t) * C + h * D;
                float *dqt = dq + ((int64_t)b * T + t) * C + h * D;
                // out_t = sum_s att_ts v_s: datt_ts = dout_t . v_s, dv_s += att_ts dout_t
                float datt_dot = 0.0f; // sum_s att_ts datt_ts
                for (int s = 0; s <= t; s++) {
                    const float *vs = v + ((int64_t)b * T + s) * KC + (h / G) * D;
                    float *dvs = dv + ((int64_t)b * T + s) * KC + (h / G) * D;
                    float d = 0.0f;
                    for (int i = 0; i < D; i++) {
                        d += dot_[i] * vs[i];
                        dvs[i] += at[s] * dot_[i];
                    }
                    datt_dot += at[s] * d;
                }
                // att_t = softmax(scores_t): dscore_ts = att_ts (datt_ts - sum_s' att_ts' datt_ts')
                for (int s = 0; s <= t; s++) {
                    const float *vs = v + ((int64_t)b * T + s) * KC + (h / G) * D;
                    float d = 0.0f;
                    for (int i = 0; i < D; i++) d += dot_[i] * vs[i];
                    float ds = at[s] * (d - datt_dot) * scale;
                    // score_ts = scale * q_t . k_s
                    const float *ks = k + ((int64_t)b * T + s) * KC + (h / G) * D;
                    float *dks = dk + ((int64_t)b * T + s) * KC + (h / G) * D;
                    for (int i = 0; i < D; i++) {
                        dqt[i] += ds * ks[i];
                        dks[i] += ds * qt[i];
                    }
                }
            }
        }
}
