/*
 * internal.h — declarations shared inside the library (moe__ names). Not installed.
 */
#ifndef MOE_INTERNAL_H
#define MOE_INTERNAL_H

#include "moe.h"
#include "dist/dist.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* ---------------------------------------------------------------- core */

/* Always on, for programmer errors only (never for input validation). */
#define MOE_ASSERT(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) moe__assert_fail(#cond, __FILE__, __LINE__);                          \
    } while (0)
_Noreturn void moe__assert_fail(const char *expr, const char *file, int line);

/* Records a detailed message for moe_last_error() and returns s, so that callers can write
 * `return moe__err(MOE_STATUS_IO, "cannot open %s: %s", path, strerror(errno));`. */
moe_status moe__err(moe_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void *moe__malloc(size_t n);             /* NULL on failure; aligned to 64 bytes */
void *moe__calloc(size_t n);             /* zeroed */
double moe__now(void);                   /* monotonic seconds */

/* xoshiro256** generator; state is plain data so it can be checkpointed. */
typedef struct { uint64_t s[4]; } moe_rng;
void moe__rng_seed(moe_rng *r, uint64_t seed);
uint64_t moe__rng_u64(moe_rng *r);
float moe__rng_uniform(moe_rng *r);      /* [0, 1) */
float moe__rng_normal(moe_rng *r);       /* N(0, 1), Box-Muller */

uint64_t moe__fnv1a(uint64_t h, const void *data, size_t n);
/* "[a, b, c]" into buf. */
void moe__shape_str(const int64_t *shape, int ndim, char *buf, size_t n);
#define MOE_FNV_INIT 1469598103934665603ULL

/* Reads a whole file; *len gets its size. NULL with an error set on failure. */
char *moe__read_file(const char *path, size_t *len);
/* The first min(max, size) bytes of a file (NUL-terminated); *size gets its size (may be NULL). */
char *moe__read_file_prefix(const char *path, size_t max, size_t *len, size_t *size);
/* Reads a whole text file or pipe as a NUL-terminated string (caller frees), named as `what`
 * ("config") in errors; NULL with *st set when it cannot be read or holds a NUL byte. */
char *moe__read_text(const char *path, const char *what, moe_status *st);
/* Writes data to path atomically: path.tmp, fsync, rename, fsync of the directory. */
moe_status moe__write_atomic(const char *path, const void *const *parts, const size_t *lens, int n_parts);

/* ---------------------------------------------------------------- training state (state.bin) */

#define MOE_STATE_VERSION 2u
#define MOE_STATE_HEADER 96
typedef struct {
    int64_t step;        /* optimizer steps done */
    moe_rng rng;         /* data RNG */
    double loss_ema;     /* loss spike guard: running mean of the training loss (version 2) */
    int64_t ema_n;       /* steps in loss_ema (version 2; 0 from version 1: the guard restarts) */
    int skipped_run;     /* steps skipped in a row (version 2) */
} moe__state;
/* Checks and decodes a state file's bytes (path only names it in errors): magic, version, the
 * parameter count n_params, the exact length, the checksum, then the fields' ranges. *opt gets
 * the 2 n_params AdamW moments (f32), inside buf. */
moe_status moe__state_parse(const char *buf, size_t len, const char *path, int64_t n_params, moe__state *out,
                            const void **opt);
/* Encodes the current version's header of s; the file is header, 8 n_params bytes of moments,
 * then the FNV-1a 64 of everything before it. Returns MOE_STATE_HEADER. */
size_t moe__state_header(const moe__state *s, int64_t n_params, char head[MOE_STATE_HEADER]);

/* ---------------------------------------------------------------- config, model */

/* moe_config_apply_json; with exact_u64 = 0 a u64 key may be a JSON number of 2^53 or more, read
 * as the nearest double (checkpoints written before such values were strings). */
moe_status moe__config_apply_json(moe_config *c, const char *json, const char *origin, int exact_u64);

/* Copies every training key (kind "training" in the key table) from src to dst. */
void moe__config_take_training(moe_config *dst, const moe_config *src);
/* Learning rate of 0-based step: linear warmup, then cosine to lr * min_lr_frac at c->steps. */
float moe__lr_at(const moe_config *c, int64_t step);
/* Global-norm clipping and one AdamW update of all parameters from their gradients; opt holds
 * 2P floats (moments); step is 0-based. *grad_norm gets the norm before clipping. */
moe_status moe__adamw_step(moe_model *m, float *opt, int64_t step, float lr, const moe_config *c, float *grad_norm);
/* The two halves of moe__adamw_step: the global gradient norm (collective over the ep group),
 * and the clipped AdamW update with it. */
float moe__grad_norm(moe_model *m);
void moe__adamw_apply(moe_model *m, float *opt, int64_t step, float lr, const moe_config *c, float norm);
/* Where the first non-finite value is: a parameter (table order), else the last forward's
 * activations (block by block, then the logits), else a gradient (in backward order, from the
 * head). Describes it in where and returns its kind: MOE_NONFINITE_PARAM, _ACT or _GRAD; 0 when
 * everything is finite. */
enum { MOE_NONFINITE_PARAM = 1, MOE_NONFINITE_ACT = 2, MOE_NONFINITE_GRAD = 3 };
int moe__model_locate_nonfinite(const moe_model *m, char *where, size_t n);

/* ---------------------------------------------------------------- matmul */

/* out (N,O) = x (N,I) @ w^T, w (O,I) [out x in], with accumulate selecting out += . */
void moe__matmul_forward(float *out, const float *x, const float *w, int64_t N, int I, int O, int accumulate);
void moe__matmul_forward_ref(float *out, const float *x, const float *w, int64_t N, int I, int O, int accumulate);
/* dx (N,I) += dout (N,O) @ w ; dw (O,I) += dout^T @ x. Either may be NULL. */
void moe__matmul_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                          int64_t N, int I, int O);
void moe__matmul_backward_ref(float *dx, float *dw, const float *dout, const float *x, const float *w,
                              int64_t N, int I, int O);

/* ---------------------------------------------------------------- nn layers */

void moe__rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int64_t N, int C, float eps);
void moe__rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                           const float *rstd, int64_t N, int C);

/* cos/sin tables (T, D/2) for RoPE with rotate-half pairing (i, i + D/2). */
void moe__rope_tables(float *cos_t, float *sin_t, int T, int D, float theta);
void moe__rope_forward(float *x, const float *cos_t, const float *sin_t, int B, int T, int C, int H);
void moe__rope_backward(float *dx, const float *cos_t, const float *sin_t, int B, int T, int C, int H);

/* Causal attention (attention.c): out (B,T,C), att (B,H,T,T) saved; backward accumulates into
 * dq, dk, dv; datt (B,H,T,T) is scratch. The _ref versions are plain loops. */
void moe__attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int T, int C, int H);
void moe__attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout, const float *q,
                             const float *k, const float *v, const float *att, int B, int T, int C, int H);
void moe__attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v,
                                int B, int T, int C, int H);
void moe__attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                 const float *k, const float *v, const float *att, int B, int T, int C, int H);

/* act = silu(h1) * h3, over n elements. */
void moe__swiglu_forward(float *act, const float *h1, const float *h3, int64_t n);
void moe__swiglu_backward(float *dh1, float *dh3, const float *dact, const float *h1, const float *h3, int64_t n);

/* SwiGLU FFN on rows: y (+)= (silu(x w1^T) * (x w3^T)) w2^T, w1,w3 (F,C), w2 (C,F).
 * h1, h3, act (N,F) are saved for the backward pass. */
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

/* ---------------------------------------------------------------- MoE layer */

typedef struct {
    int E, K, F, S, C;
    int T;                       /* tokens per sequence: N = B*T (sequence-level aux loss) */
    moe_routing routing;
    moe_score score;
    int norm_topk;
    float route_scale;           /* multiplies the routed gate weights (DeepSeek-V3) */
    moe_drop_policy drop_policy;
    float capacity_factor;       /* 0 = dropless */
    int min_capacity;
    float train_capacity_factor; /* for would_drop statistics in eval */
    int training;                /* noise, jitter and random routing only when training */
    float jitter_eps;            /* Switch input jitter: router input * U(1-eps, 1+eps) */
    int random_routing;          /* GShard: keep the 2nd expert with probability 2 g2 / (g1 + g2) */
    uint64_t noise_seed;         /* draws of this forward (counter-based, thread-independent) */
    double *prof;                /* seconds per moe_phase, accumulated; NULL = not timed */
    int ep, El;                  /* expert parallelism: ep ranks, El = E/ep experts on this rank */
    float *a2a_buf;              /* (ep*P,C) scratch in peer order (ep > 1) */
    int64_t *a2a_cnt;            /* (2 ep El) scratch: rows per (peer, local expert), sent and received */
} moe__moe_dims;

/* Phase timing: t = moe__prof_begin(); ...; moe__prof_end(prof, MOE_PHASE_X, t) (no-op on NULL). */
static inline double moe__prof_begin(const double *prof) { return prof ? moe__now() : 0.0; }
static inline void moe__prof_end(double *prof, moe_phase p, double t0) {
    if (prof) prof[p] += moe__now() - t0;
}

/* Slots per token: K for token choice, E for expert choice and the dense soft mixture. */
int moe__moe_slots(const moe__moe_dims *d);
/* The routing a forward actually uses: expert choice routes by token choice at evaluation,
 * because expert choice looks at later tokens of the sequence (no causal decoding). */
moe_routing moe__moe_effective_routing(const moe__moe_dims *d);

/* Weights of one MoE layer (pointers into the parameter buffer; same layout for gradients). */
typedef struct {
    float *wg;                   /* (E,C) router */
    float *wnoise;               /* (E,C) noisy top-K noise projection, or NULL */
    float *bias;                 /* (E) aux-loss-free selection bias (a buffer, no gradient), or NULL */
    float *w1, *w3;              /* (E,F,C) */
    float *w2;                   /* (E,C,F) */
    float *sw1, *sw3;            /* (S*F,C) shared experts fused as one SwiGLU of width S*F */
    float *sw2;                  /* (C,S*F) (DeepSeek's shared_experts layout) */
} moe__moe_weights;

/* Row markers in row_of besides a row index. */
#define MOE_ROW_DROPPED (-1)     /* routed, dropped by capacity */
#define MOE_ROW_UNROUTED (-2)    /* not routed: GShard random routing, or not chosen (expert choice) */

/* Saved activations of one MoE layer, sized for N tokens and P = slots*N assignments. */
typedef struct {
    float *xr;                   /* (N,C) router input after jitter (jitter only) */
    float *jit;                  /* (N,C) jitter multipliers (jitter only) */
    float *logits;               /* (N,E) x Wg^T (clean logits for noisy gating) */
    float *scores;               /* (N,E) softmax or sigmoid of logits; noisy: gates scattered */
    float *probs;                /* (N,E) normalised affinities for the balance losses */
    float *noise_raw, *noise_eps, *noisy; /* (N,E) noisy top-K: x Wn^T, N(0,1) draws, H */
    float *lse;                  /* (N) logsumexp of logits, for z-loss */
    int *sel;                    /* (N,slots) expert of each slot (top-K: by decreasing score) */
    float *gate;                 /* (N,slots) gate weights */
    int *row_of;                 /* (N,slots) row, or MOE_ROW_DROPPED / MOE_ROW_UNROUTED */
    int *row_token;              /* (P) token of each row */
    int64_t *offsets;            /* (E+1) rows of expert e are offsets[e] .. offsets[e+1] */
    int64_t *load;               /* (E) routed assignments per expert (before dropping) */
    float *f;                    /* (E) fraction of routed assignments (Switch aux) */
    float *seq_f;                /* (B,E) DeepSeek f per sequence (sequence aux) */
    float *imp, *loadest;        /* (E) noisy top-K importance and smooth load */
    float *xe, *ye;              /* (P,C) gathered inputs, expert outputs */
    float *h1, *h3, *act;        /* (P,F) */
    float *sh1, *sh3, *sact;     /* (N,S*F) shared experts */
    int *scratch_idx;            /* (2P) for capacity selection */
    /* expert parallelism (ep > 1): rows this rank's experts received from the ep group, at most
     * PL = ep*P, in local-expert-contiguous order; h1, h3, act are then (PL,F) for these rows */
    float *xl, *yl;              /* (PL,C) */
    int *perm;                   /* (PL) received row r (peer order) -> local row perm[r] */
    int64_t *loff;               /* (El+1) local expert i has local rows loff[i] .. loff[i+1] */
    int64_t *send_rows, *recv_rows; /* (ep) rows to and from each peer */
    int64_t n_tokens;
    int capacity;
    int64_t routed, dropped, would_drop;
    float aux, z, seq_aux, imp_loss, load_loss;
} moe__moe_cache;

/* Scratch for the MoE backward pass, sized for N tokens. */
typedef struct {
    float *dye, *dxe;            /* (P,C) */
    float *dact, *dh1, *dh3;     /* (max(P*F, N*S*F)) */
    float *dgate;                /* (N,slots) d loss / d gate weight */
    float *dlogits;              /* (N,E) */
    float *dnoise;               /* (N,E) d loss / d noise_raw (noisy top-K) */
    float *dxr;                  /* (N,C) d loss / d router input (jitter) */
    float *gvec;                 /* (2E) loss gradients per expert (noisy top-K) */
    float *dyl, *dxl;            /* (PL,C) expert parallelism: local dy and dx */
} moe__moe_scratch;

/* d total / d (each loss of this layer), already divided by the number of MoE layers. */
typedef struct {
    float aux, z, seq_aux, importance, load;
} moe__moe_loss_scales;

int moe__capacity(const moe__moe_dims *d, int64_t N, float cf);
/* y (N,C) = MoE(x). Fills the cache (routing, statistics, loss values). */
void moe__moe_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                      const moe__moe_dims *d, int64_t N);
/* Plain reference: the same function computed token by token from the cache's routing
 * decisions, without permutation (for tests). */
void moe__moe_forward_ref(float *y, const moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                          const moe__moe_dims *d, int64_t N);
/* dx (N,C) accumulates; gradients of w accumulate into g. */
void moe__moe_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                       const float *x, const moe__moe_weights *w, const moe__moe_cache *c,
                       const moe__moe_dims *d, int64_t N, const moe__moe_loss_scales *ls);

/* Router half of the layer (router.c): scores, selection, random routing, balance losses. */
void moe__router_forward(moe__moe_cache *c, const float *x, const moe__moe_weights *w, const moe__moe_dims *d,
                         int64_t N);
/* Loss values that need the final routing (after dispatch): Switch aux, sequence aux. */
void moe__router_losses(moe__moe_cache *c, const moe__moe_dims *d, int64_t N);
/* From s->dgate (and the loss scales) to the router weights and dx. */
void moe__router_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *x,
                          const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N,
                          const moe__moe_loss_scales *ls);
/* Capacity and permutation into expert-contiguous rows (dispatch.c). */
void moe__dispatch(moe__moe_cache *c, const moe__moe_dims *d, int64_t N);

/* Counter-based random numbers: the same (seed, index) gives the same draw on any thread. */
float moe__hash_uniform(uint64_t seed, uint64_t index);   /* [0, 1) */
float moe__hash_normal(uint64_t seed, uint64_t index);    /* N(0, 1) */

/* Seeds the random draws (noise, jitter, random routing) of the next training forwards. */
void moe__model_set_noise_seed(moe_model *m, uint64_t seed);
/* The model's phase-time accumulators (for the optimizer's share). */
double *moe__model_prof(moe_model *m);
/* For tests: the MoE cache of layer l of the last forward (NULL for a dense layer). */
const moe__moe_cache *moe__model_moe_cache(const moe_model *m, int l);

/* ---------------------------------------------------------------- io */

typedef struct {
    char *name;
    char dtype[8];               /* "F32", "I32", ... */
    int ndim;
    int64_t shape[8];
    int64_t nbytes;
    const uint8_t *data;         /* into the file buffer, or own */
    uint8_t *own;                /* data this entry owns (tensors built in memory), or NULL */
} moe__st_tensor;

typedef struct {
    char *buf;                   /* whole file (NULL for a set built in memory) */
    size_t len;
    int n;
    moe__st_tensor *t;
    void *metadata;              /* the "__metadata__" object (a cJSON, parsed once), or NULL */
    const uint8_t *data;         /* the data region (after the header), data_len bytes */
    uint64_t data_len;
} moe__st_file;

moe_status moe__st_read(const char *path, moe__st_file *out);
/* Only the header: names, dtypes, shapes, offsets (checked against the file size) and metadata;
 * the tensors' data pointers are NULL. For reading a config without the weights. */
moe_status moe__st_read_header(const char *path, moe__st_file *out);
void moe__st_free(moe__st_file *f);
const moe__st_tensor *moe__st_find(const moe__st_file *f, const char *name);
/* Metadata value (a string) by key, or NULL. Caller frees. */
char *moe__st_meta(const moe__st_file *f, const char *key);

typedef struct {
    const char *name;
    const char *dtype;           /* "F32" or "I32" */
    int ndim;
    int64_t shape[4];
    const void *data;
} moe__st_entry;

/* Writes a safetensors file atomically; meta_keys/meta_vals are n_meta string pairs. */
/* The config (and step, when not NULL) stored in an opened checkpoint, checked. */
moe_status moe__checkpoint_config_of(const moe__st_file *f, const char *path, moe_config *out, int64_t *step);
/* Copies every tensor of m's table from f, checking names, dtypes and shapes. */
moe_status moe__model_load_weights(moe_model *m, const moe__st_file *f, const char *path);
/* Expert parallelism of a model: *ep ranks share its experts, this one is *rank. */
void moe__model_ep(const moe_model *m, int *ep, int *rank);
/* Multi-rank checkpoints: DIR/KIND-J-of-EP.stepS.{safetensors,bin} for KIND experts or state. */
void moe__shard_name(char *out, size_t n, const char *dir, const char *kind, int j, int ep, int64_t step);
moe_status moe__model_save_experts(const moe_model *m, const char *path, int64_t step);
/* model.safetensors of a multi-rank checkpoint: every tensor but the experts, expert_shards = ep. */
moe_status moe__model_save_replicated(const moe_model *m, const char *path, int64_t step, int ep);

/* TensorBoard event files (tensorboard.c): open one in dir for a run whose next step is
 * first_step + 1 (first_step > 0: a resumed run; earlier files' steps from there on are dropped
 * by TensorBoard); add values, then moe__tb_step writes them as one event of that step. Write
 * errors are kept and reported by moe__tb_flush. */
typedef struct moe__tb moe__tb;
moe_status moe__tb_open(const char *dir, int64_t first_step, moe__tb **out);
void moe__tb_scalar(moe__tb *tb, const char *tag, float v);
/* n values as a histogram with buckets (limits[b-1], limits[b]]. */
void moe__tb_histogram(moe__tb *tb, const char *tag, const double *x, int n, const double *limits, int n_limits);
void moe__tb_step(moe__tb *tb, int64_t step);
moe_status moe__tb_flush(moe__tb *tb);
void moe__tb_close(moe__tb *tb);

moe_status moe__st_write(const char *path, const moe__st_entry *e, int n, const char *const *meta_keys,
                         const char *const *meta_vals, int n_meta);

#endif
