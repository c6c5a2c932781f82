/*
 * nn.h — the dense layers (nn/): matmul (BLAS, with plain _ref loops), the token embedding,
 * RMSNorm, RoPE, causal attention, SwiGLU and the SwiGLU FFN, cross-entropy. Each is a
 * forward/backward pair of free functions: outputs first, then inputs, then dimensions (llm.c
 * style). Not installed.
 */
#ifndef MOE_NN_H
#define MOE_NN_H

#include <stdint.h>

/* One row-major GEMM: C (M,N) = alpha op(A) op(B) + beta C, op(A) (M,K), op(B) (K,N). */
typedef struct moe__gemm {
    const float *A, *B;
    float *C;
    int M, N, K, lda, ldb, ldc;
    int ta, tb; // op is the transpose when set
    float alpha, beta;
} moe__gemm;

/* Runs n GEMMs with different outputs (matmul.c): fixed tiles, single-threaded BLAS per tile, one
 * parallel region for all, so the result does not depend on the thread count. */
void moe__gemm_run(const moe__gemm *g, int n);
/* The GEMMs of a linear layer (w (O,I)): out = x w^T; dx (+)= dout w; dw += dout^T x. */
moe__gemm moe__linear_fwd(float *out, const float *x, const float *w, int64_t N, int I, int O, int accumulate);
moe__gemm moe__linear_dx(float *dx, const float *dout, const float *w, int64_t N, int I, int O, int accumulate);
moe__gemm moe__linear_dw(float *dw, const float *dout, const float *x, int64_t N, int I, int O);

/* out (N,O) = x (N,I) @ w^T, w (O,I) [out x in], with accumulate selecting out += . */
void moe__matmul_forward(float *out, const float *x, const float *w, int64_t N, int I, int O, int accumulate);
void moe__matmul_forward_ref(float *out, const float *x, const float *w, int64_t N, int I, int O, int accumulate);
/* dx (N,I) += dout (N,O) @ w ; dw (O,I) += dout^T @ x. Either may be NULL. */
void moe__matmul_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                          int64_t N, int I, int O);
void moe__matmul_backward_ref(float *dx, float *dw, const float *dout, const float *x, const float *w,
                              int64_t N, int I, int O);

/* x (N,C) = wte[tokens] (wte (V,C)); backward: gwte[token_n] += dx_n, in token order per channel. */
void moe__embedding_forward(float *x, const float *wte, const int *tokens, int64_t N, int C);
void moe__embedding_backward(float *gwte, const float *dx, const int *tokens, int64_t N, int C);

/* out (N,O) += b (O) on every row; backward: db += the column sums of dout, row by row in order. */
void moe__bias_forward(float *out, const float *b, int64_t N, int O);
void moe__bias_backward(float *db, const float *dout, int64_t N, int O);

/* out may be x (in place). */
void moe__rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int C, float eps);
void moe__rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int64_t N, int C);

/* cos/sin tables (T, D/2) for RoPE with rotate-half pairing (i, i + D/2). */
void moe__rope_tables(float *cos_t, float *sin_t, int T, int D, float theta);
void moe__rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H);
void moe__rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int C, int H);
/* RoPE of N rows (N,C) at explicit positions: row n at pos[n] (< the tables' T). */
void moe__rope_rows(float *x, const float *cos_t, const float *sin_t, int64_t N, int C, int H, const int *pos);

/* Causal attention (attention.c): q, out (B,T,C) of H heads of size D = C/H; k, v (B,T,Hkv D)
 * of Hkv key/value heads (grouped-query attention: Hkv divides H, query head h reads key/value
 * head h / (H/Hkv); Hkv = H is multi-head attention). att (B,H,T,T) saved; backward accumulates
 * into dq, dk, dv; datt (B,H,T,T) is scratch. The _ref versions are plain loops. */
void moe__attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int T, int C, int H, int Hkv);
/* The forward without probabilities kept (inference): scratch holds `threads` tiles of
 * moe__attention_tile() x T floats, and the region runs on at most `threads` threads. The same
 * bits as moe__attention_forward. */
void moe__attention_forward_tiled(float *out, float *scratch, int threads, const float *q, const float *k,
                                  const float *v, int B, int T, int C, int H, int Hkv);
int moe__attention_tile(void);
/* One query row q (D) against n key and value rows (K, V, row stride ld): the probabilities
 * softmax(scale q.K_j) into p (n), out (D) = sum_j p_j V_j. The reference forward's inner step,
 * and the KV cache's (cpu_decode.c). */
void moe__attention_row(float *out, float *p, const float *q, const float *K, const float *V, int n, int ld, int D,
                        float scale);
void moe__attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                             const float *k, const float *v, const float *att, int B, int T, int C, int H, int Hkv);
void moe__attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v,
                                int B, int T, int C, int H, int Hkv);
void moe__attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *att, int B, int T, int C, int H, int Hkv);

/* act = silu(h1) * h3, over n elements. */
void moe__swiglu_forward(float *act, const float *h1, const float *h3, int64_t n);
void moe__swiglu_backward(float *dh1, float *dh3, const float *dact, const float *h1, const float *h3, int64_t n);

/* SwiGLU FFN on rows: y (+)= (silu(x w1^T) * (x w3^T)) w2^T, w1,w3 (F,C), w2 (C,F).
 * h1, h3, act (N,F) are saved for the backward pass. */
/* SwiGLU FFNs on n row blocks (the experts of a layer): block i is rows rows[i] .. rows[i+1]-1 of
 * x, y, dx (C wide) and of h1, h3, act and the scratch dact, dh1, dh3 (F wide), with the weights
 * w1, w3 (F,C) and w2 (C,F) at offset i F C; an empty block does nothing. */
void moe__ffn_forward_blocks(float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                             const float *w3, const float *w2, const int64_t *rows, int n, int C, int F,
                             int accumulate);
void moe__ffn_backward_blocks(float *dx, float *dw1, float *dw3, float *dw2, float *dact, float *dh1, float *dh3,
                              const float *dy, const float *x, const float *h1, const float *h3, const float *act,
                              const float *w1, const float *w3, const float *w2, const int64_t *rows, int n, int C,
                              int F);
void moe__ffn_forward(float *y, float *h1, float *h3, float *act, const float *x, const float *w1,
                      const float *w3, const float *w2, int64_t N, int C, int F, int accumulate);
/* Scratch dh1, dh3 (N,F) are overwritten; dact is scratch (N,F) too. dx accumulates. */
void moe__ffn_backward(float *dx, float *dw1, float *dw3, float *dw2, float *dact, float *dh1, float *dh3,
                       const float *dy, const float *x, const float *h1, const float *h3, const float *act,
                       const float *w1, const float *w3, const float *w2, int64_t N, int C, int F);

/* Cross-entropy: returns the mean loss over N rows (row_loss (N) is scratch); dlogits, when
 * not NULL, gets scale * (softmax - onehot) / N. */
float moe__crossentropy(float *dlogits, float *row_loss, const float *logits, const int *targets, int64_t N,
                        int V, float scale);

#endif
