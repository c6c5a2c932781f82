/*
 * moe_layer.h — the MoE layer (moe/): its dimensions, weights, saved activations and scratch;
 * the router (router.c: scores, selection, balance losses, the aux-loss-free bias), dispatch
 * (dispatch.c: capacity, permutation into expert-contiguous rows) and the layer's forward and
 * backward passes (moe_layer.c: experts as grouped GEMMs, combine, expert-parallel all-to-all).
 * Not installed.
 */
#ifndef MOE_MOE_LAYER_H
#define MOE_MOE_LAYER_H

#include "core/core.h"

#include <stdint.h>

typedef struct {
    int E, K, F, C;
    int SF;                      /* hidden width of the shared experts (one SwiGLU); 0 = none */
    int shared_gate;             /* shared output times sigmoid(x . sg) (Qwen2-MoE) */
    int T;                       /* tokens per sequence: N = B*T (sequence-level aux loss) */
    moe_routing routing;
    moe_score score;
    int norm_topk;
    int n_group, topk_group;     /* group-limited routing (n_group >= 2): topk_group groups a token */
    moe_group_score group_score; /* how a group is scored */
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
    float *a2a_buf;              /* (ep*P,C+2) scratch in peer order (ep > 1) */
    int64_t *a2a_cnt;            /* (2 ep (El+1)) scratch: rows per (peer, local expert) and units per
                                    peer, sent and received */
    /* when set, called for each expert that has rows, before the experts' products: its weights
     * are made ready then (bf16 weights converted only for the experts a forward uses) */
    void (*expert_ready)(void *ctx, int e);
    void *expert_ctx;
} moe__moe_dims;

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
    float *sw1, *sw3;            /* (SF,C) shared experts fused as one SwiGLU of width SF */
    float *sw2;                  /* (C,SF) (DeepSeek's shared_experts layout) */
    float *sg;                   /* (1,C) shared-expert gate, or NULL */
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
    float *xe, *ye;              /* (P,C) gathered inputs, expert outputs (ep > 1: xe packs
                                    units' rows and slots' metadata, P C + 2 P; ye units' outputs) */
    float *h1, *h3, *act;        /* (P,F) */
    float *sh1, *sh3, *sact;     /* (N,SF) shared experts */
    float *sy, *sgate;           /* (N,C) shared output before its gate, (N) the gate (shared_gate) */
    int *scratch_idx;            /* (2P) for capacity selection */
    /* expert parallelism (ep > 1): rows this rank's experts received from the ep group, at most
     * PL = ep*P, in local-expert-contiguous order; h1, h3, act are then (PL,F) for these rows */
    float *xl, *yl;              /* (PL,C) */
    int *perm;                   /* (PL) received row r (peer order) -> local row perm[r] */
    int64_t *loff;               /* (El+1) local expert i has local rows loff[i] .. loff[i+1] */
    int64_t *send_rows, *recv_rows; /* (ep) rows to and from each peer */
    /* units (moe_ep.c): a token goes to a peer once; slots travel as (unit, gate) */
    int *unit_token;             /* (P) the sender's units, per peer in token order: their token */
    int64_t *unit_send, *unit_recv; /* (ep) units to and from each peer */
    float *ep_meta_out;          /* (P,2) each slot row sent: its unit (int bits) and gate */
    float *ep_meta;              /* (PL,2) each slot row received: its unit among all received, gate */
    int64_t n_tokens;
    int capacity;
    int64_t routed, dropped, would_drop;
    float aux, z, seq_aux, imp_loss, load_loss;
} moe__moe_cache;

/* Scratch for the MoE backward pass, sized for N tokens. */
typedef struct {
    float *dye, *dxe;            /* (P,C); ep > 1: dxe gets units' dx and slots' dgate, P C + P */
    float *dact, *dh1, *dh3;     /* (max(P*F, N*SF)) */
    float *dgate;                /* (N,slots) d loss / d gate weight */
    float *dlogits;              /* (N,E) */
    float *dnoise;               /* (N,E) d loss / d noise_raw (noisy top-K) */
    float *dxr;                  /* (N,C) d loss / d router input (jitter) */
    float *gvec;                 /* (2E) loss gradients per expert (noisy top-K) */
    float *dyl, *dxl;            /* (PL,C) expert parallelism: local dy and dx */
    float *ep_dgate, *ep_dgate_back; /* (PL), (P): dgate of the rows received, and of those sent */
} moe__moe_scratch;

/* d total / d (each loss of this layer), already divided by the number of MoE layers. */
typedef struct {
    float aux, z, seq_aux, importance, load;
} moe__moe_loss_scales;

/* The memory plan of one MoE layer for N tokens and P assignments (slots * N; with expert
 * parallelism its experts may receive ep * P rows): the saved activations of c, and the backward
 * scratch of s except dact, dh1 and dh3 (shared with the dense FFN: at least
 * moe__moe_hidden_scratch floats each). Noise and jitter buffers only for routings that use them. */
void moe__moe_plan_cache(moe__planner *p, moe__moe_cache *c, const moe__moe_dims *d, int64_t N, int64_t P);
void moe__moe_plan_scratch(moe__planner *p, moe__moe_scratch *s, const moe__moe_dims *d, int64_t N, int64_t P);
int64_t moe__moe_hidden_scratch(const moe__moe_dims *d, int64_t N, int64_t P);

int moe__capacity(const moe__moe_dims *d, int64_t N, float cf);
/* y (N,C) = MoE(x). Fills the cache (routing, statistics, loss values). COLLECTIVE (ep group)
 * with expert parallelism: MOE_STATUS_ARG, on every rank of the group, when an all-to-all of
 * rows exceeds MPI's int counts (moe__dist_alltoallv_rows); y is then not computed. */
moe_status moe__moe_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                            const moe__moe_dims *d, int64_t N);
/* Plain reference: the same function computed token by token from the cache's routing
 * decisions, without permutation (for tests). MOE_STATUS_NOMEM when its scratch cannot be
 * allocated. */
moe_status moe__moe_forward_ref(float *y, const moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                                const moe__moe_dims *d, int64_t N);
/* dx (N,C) accumulates; gradients of w accumulate into g. COLLECTIVE (ep group) with expert
 * parallelism, failing as moe__moe_forward does (dx and g then incomplete). */
moe_status moe__moe_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                             const float *x, const moe__moe_weights *w, const moe__moe_cache *c,
                             const moe__moe_dims *d, int64_t N, const moe__moe_loss_scales *ls);

/* Experts 0..n-1 on expert-contiguous rows: expert i has rows off[i] .. off[i+1] of x (C wide)
 * and of h1, h3, act (F wide); an expert without rows does nothing (and is not made ready:
 * d->expert_ready). All experts share each product's parallel region (moe__ffn_forward_blocks).
 * Backward: dx accumulates, the experts' gradients into g. */
void moe__experts_forward(float *y, float *h1, float *h3, float *act, const float *x, const int64_t *off, int n,
                          const moe__moe_weights *w, const moe__moe_dims *d);
void moe__experts_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy, const float *x,
                           const float *h1, const float *h3, const float *act, const int64_t *off, int n,
                           const moe__moe_weights *w, const moe__moe_dims *d);

/* Expert parallelism (moe_ep.c), after dispatch: y (N,C) = the routed experts' combined output,
 * through the ep group's all-to-alls, one row per (token, peer); backward: every slot's dgate
 * into s->dgate, dx accumulates, expert gradients accumulate. COLLECTIVE (ep group), failing as
 * moe__moe_forward does. */
moe_status moe__ep_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                           const moe__moe_dims *d, int64_t N);
moe_status moe__ep_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                            const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N);

/* Router half of the layer (router.c): scores, selection, random routing, balance losses. */
void moe__router_forward(moe__moe_cache *c, const float *x, const moe__moe_weights *w, const moe__moe_dims *d,
                         int64_t N);
/* Loss values that need the final routing (after dispatch): Switch aux, sequence aux. */
void moe__router_losses(moe__moe_cache *c, const moe__moe_dims *d, int64_t N);
/* From s->dgate (and the loss scales) to the router weights and dx. */
void moe__router_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *x,
                          const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N,
                          const moe__moe_loss_scales *ls);
/* DeepSeek-V3 auxiliary-loss-free balancing, once per optimizer step from the loads (E) of its
 * training forwards: bias_e += rate * sign(mean load - load_e). */
void moe__router_bias_update(float *bias, const int64_t *load, int E, float rate);
/* Capacity and permutation into expert-contiguous rows (dispatch.c). */
void moe__dispatch(moe__moe_cache *c, const moe__moe_dims *d, int64_t N);

/* Counter-based random numbers: the same (seed, index) gives the same draw on any thread. */
float moe__hash_uniform(uint64_t seed, uint64_t index);   /* [0, 1) */
float moe__hash_normal(uint64_t seed, uint64_t index);    /* N(0, 1) */

#endif
