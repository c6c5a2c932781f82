/*
 * cpu.h — the CPU backend's own state (cpu/): one activation buffer planned for (max_batch,
 * seq_len), the views of each block's saved activations, and the backward scratch. fp32, BLAS
 * for the GEMMs, OpenMP for the rest; deterministic for a given thread count. The parameters,
 * gradients and AdamW moments are plain host buffers (struct moe_model's views). Not installed.
 *
 *   cpu_backend.c  the ops table, the memory plan, create and free
 *   cpu_model.c    the model's forward and backward passes, block by block
 *   cpu_optim.c    gradient norm, AdamW, the aux-loss-free bias, the non-finite locator
 *   cpu_decode.c   generation with a KV cache
 */
#ifndef MOE_CPU_H
#define MOE_CPU_H

#include "model/backend.h"
#include "moe/moe_layer.h"

#define MOE_CPU_HEAD_ROWS 512 /* vocabulary rows of a bf16 head converted at a time */

/* Weights of one block (pointers into the parameter or the gradient buffer). */
typedef struct {
    float *ln1, *wq, *wk, *wv, *wo, *ln2, *w1, *w3, *w2;
    float *bq, *bk, *bv, *qn, *kn;      /* q/k/v biases, QK-norm gains, or NULL */
    moe__moe_weights moe;
} moe__cpu_layer_w;

/* Saved activations of one block. */
typedef struct {
    float *ln1, *rstd1, *q, *k, *v, *att, *atty, *resid_mid, *ln2, *rstd2;
    float *qr, *kr, *rstdq, *rstdk;     /* QK-norm: q and k projections before it, its rstd */
    float *h1, *h3, *act;               /* dense FFN */
    moe__moe_cache mc;
} moe__cpu_layer_act;

typedef struct {
    char *arena;                        /* activations and scratch: one allocation */
    float **resid;                      /* L+1 arrays (N,C): input of each layer, then the output */
    moe__cpu_layer_act *la;             /* L; with recompute (or lean), one slot per kind of block, shared */
    int **routes;                       /* L: a lean model's routing of each MoE layer (NULL for dense) */
    /* bf16 weights (an inference model loaded with --dtype bf16; m->params is then NULL): each
     * layer's span [span[l], span[l+1]) of the table converted into win before its forward */
    uint16_t *w16;
    float *win, *normf, *head_tile;     /* the widest layer span; the final norm; HEAD_ROWS x C */
    int64_t *span;
    int win_layer;                      /* the layer the window holds */
    float *att_scratch;                 /* lean: att_threads tiles of attention scores */
    int att_threads;
    float *lnf, *rstdf, *logits, *dlogits, *row_loss, *rope_cos, *rope_sin, *tmp;
    float *dresid, *dln, *datty, *dq, *dk, *dv, *datt, *dact, *dh1, *dh3;
    float *dqr, *dkr;                   /* QK-norm: gradients of the projections before it */
    moe__moe_scratch ms;
    float *a2a_buf;                     /* expert parallelism scratch (moe__moe_dims) */
    int64_t *a2a_cnt;
    int *tokens, *targets;
} moe__cpu;

/* The activation plan for (m->max_batch, seq_len): with base NULL, its size in bytes; else the
 * views in s point into base. The CUDA backend lays out its device activations with it too. */
size_t moe__cpu_plan(moe_model *m, moe__cpu *s, char *base);

static inline moe__cpu *moe__cpu_of(const moe_model *m) { return (moe__cpu *)m->be_state; }

/* Pointers of layer l's tensors in base (the parameters or the gradients). */
moe__cpu_layer_w moe__cpu_layer_weights(const moe_model *m, float *base, int l);
/* The same in a buffer that holds the table's floats from offset `start` on. */
moe__cpu_layer_w moe__cpu_layer_weights_at(const moe_model *m, float *base, int64_t start, int l);
/* For a forward: layer l's weights, its span converted from bf16 into the window first when the
 * model keeps bf16 weights (the previous layer's are gone then); the embedding of N tokens, the
 * final norm's weights, and the head's product (logits (rows,V) of x (rows,C)), fp32 or bf16. */
moe__cpu_layer_w moe__cpu_layer_fwd(moe_model *m, int l);
void moe__cpu_embed(const moe_model *m, float *x, const int *tokens, int64_t N);
const float *moe__cpu_normf(const moe_model *m);
void moe__cpu_head(const moe_model *m, float *logits, const float *x, int64_t rows);
/* Makes m keep bf16 weights (before cpu create: sizes its plan), then fills them from an fp32
 * model's parameters, tensor by tensor (src's mapped pages released as they are read). */
moe_status moe__cpu_fill_bf16(moe_model *m, const moe_model *src);
/* q (N,C), k and v (N,KC) of N rows of ln through layer w's projections, biases and QK-norm
 * (before RoPE). With QK-norm, qr and kr keep the projections before it and rstdq, rstdk its
 * factors; with qr and kr NULL it runs in place (rstdq, rstdk then scratch of N). */
void moe__cpu_qkv(const moe_model *m, const moe__cpu_layer_w *w, float *q, float *k, float *v, float *qr, float *kr,
                  float *rstdq, float *rstdk, const float *ln, int64_t N);
/* The MoE dimensions of layer l for sequences of T tokens. */
moe__moe_dims moe__cpu_layer_dims(const moe_model *m, int l, int T, int training);

moe_status moe__cpu_forward(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                            moe_losses *out);
moe_status moe__cpu_backward(moe_model *m, float grad_scale);

/* The backend's KV-cache ops (model/backend.h). */
moe_status moe__cpu_kv_create(moe_model *m, int batch, void **kv);
void moe__cpu_kv_free(void *kv);
size_t moe__cpu_kv_bytes(const void *kv);
moe_status moe__cpu_decode(moe_model *m, void *kv, const int *tokens, int B, int n, const int *seq, const int *pos,
                           float *logits, int all);

void moe__cpu_zero_grad(moe_model *m);
float moe__cpu_grad_norm(moe_model *m);
void moe__cpu_adamw(moe_model *m, int64_t step, float lr, const moe_config *c, float norm);
/* AdamW on one tensor of n elements (what moe__cpu_adamw runs per tensor, and the reference of
 * the CUDA kernel): g scaled by clip; decay = 1 - lr * wd; step_size = lr / bc1. */
void moe__cpu_adamw_tensor(float *restrict p, float *restrict m, float *restrict v, const float *restrict g, int64_t n,
                           float clip, float b1, float b2, float eps, float decay, float step_size, float sqrt_bc2);
void moe__cpu_bias_update(moe_model *m, const int64_t *loads, float rate);
int moe__cpu_locate_nonfinite(const moe_model *m, char *where, size_t n);
/* For every backend, on the host views: the first non-finite parameter (in tensor order) or
 * gradient (in the order backward makes them), described in where; its kind, or 0. */
int64_t moe__first_nonfinite(const float *x, int64_t n);
int moe__nonfinite_params(const moe_model *m, char *where, size_t n);
int moe__nonfinite_grads(const moe_model *m, char *where, size_t n);

/* The expert of each of P slots of a forward's MoE cache (-1: dropped or unrouted) into out. */
void moe__cpu_routes(const moe__moe_cache *c, int64_t P, int *out);
/* For tests: the MoE cache of layer l of the last forward (NULL for a dense layer). */
const moe__moe_cache *moe__cpu_moe_cache(const moe_model *m, int l);

#endif
