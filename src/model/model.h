/*
 * model.h — the model definition shared by every backend (model/): the config internals, the
 * tensor table (each parameter's checkpoint key, shape, group, offset and initialisation), the
 * layer layout (which layers are MoE, how many experts), the routing statistics and profile of
 * the last forward, and the backend that runs the model (model/backend.h). Not installed.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "core/core.h"

#include <stdint.h>

/* Key/value heads: n_kv_head, or n_head when 0 (multi-head attention). */
static inline int moe__kv_heads(const moe_config *c) { return c->n_kv_head ? c->n_kv_head : c->n_head; }
/* Hidden width of the shared experts together (one fused SwiGLU): shared_hidden, or
 * n_shared * expert_hidden when 0; 0 without shared experts. */
static inline int64_t moe__shared_width(const moe_config *c) {
    return !c->n_shared ? 0 : c->shared_hidden ? c->shared_hidden : (int64_t)c->n_shared * c->expert_hidden;
}

/* moe_config_apply_json; with exact_u64 = 0 a u64 key may be a JSON number of 2^53 or more, read
 * as the nearest double (checkpoints written before such values were strings). */
moe_status moe__config_apply_json(moe_config *c, const char *json, const char *origin, int exact_u64);

typedef enum { MOE_INIT_NORMAL, MOE_INIT_PROJ, MOE_INIT_ROUTER, MOE_INIT_ONE, MOE_INIT_ZERO } moe__init_kind;

typedef struct {
    moe_tensor_info info;
    moe__init_kind init;
} moe__tensor;

/* Offsets (in floats) of one layer's tensors; -1 when absent. */
typedef struct {
    int64_t ln1, wq, wk, wv, wo, ln2;
    int64_t bq, bk, bv;                 /* q/k/v biases (qkv_bias) */
    int64_t qn, kn;                     /* QK-norm gains (qk_norm) */
    int64_t w1, w3, w2;                 /* dense FFN */
    int64_t wg, wnoise, bias;           /* MoE router, noise projection, selection bias */
    int64_t ew1, ew3, ew2;              /* routed experts */
    int64_t sw1, sw3, sw2;              /* shared experts */
    int64_t sg;                         /* shared-expert gate (shared_gate) */
} moe__layer_off;

typedef struct moe__backend moe__backend;

struct moe_model {
    moe_config cfg;
    int max_batch;
    /* the tensor table, built once from the config (model.c) */
    int n_tensors;
    moe__tensor *tensors;
    int64_t n_params;
    moe__layer_off *lo;
    int64_t off_embed, off_normf, off_lm;
    int *moe_slot;                      /* layer -> index among MoE layers, or -1 */
    int *n_exp;                         /* layer -> routed experts (0 for dense layers) */
    int n_moe, max_e;
    int ep, ep_rank;                    /* expert parallelism: this rank holds experts [ep_rank*E/ep, +E/ep) */
    uint64_t noise_seed;                /* draws of the next training forward */
    /* host views of the backend's buffers (n_params floats; opt 2 n_params, NULL until
     * optimizer_create). The CPU backend computes in them; another backend keeps them as
     * mirrors, made current by to_host and read back by from_host (model/backend.h). */
    float *params, *grads, *opt;
    /* last forward */
    int B, T, has_targets, training;
    moe_layer_stats *stats;             /* n_moe, filled by the backend's forward */
    int64_t *stats_load;
    double prof[MOE_PHASE_COUNT];
    /* an inference model (moe__model_create's MOE__MODEL_LEAN): no gradients, no backward
     * activations; its parameters may live in a mapping of its checkpoint (map, map_len) */
    int lean, defer_params;
    int optim;                          /* MOE__MODEL_OPTIM: AdamW moments will follow (counted up front) */
    int bf16;                           /* lean on the CPU with --dtype bf16: bf16 weights, params NULL */
    int64_t mem_weights, mem_other;     /* moe_model_memory: set by the backend's create */
    void *map;
    size_t map_len;
    /* the backend running this model, and its own state (memory plan, activations) */
    const moe__backend *be;
    void *be_state;
};

/* moe_model_create with flags: MOE__MODEL_LEAN for inference (no gradients, no backward
 * activations, attention through one tile of scores per thread; backward is refused);
 * MOE__MODEL_DEFER_PARAMS leaves the CPU backend's parameters unallocated (m->params NULL) for
 * the caller, who points them at a mapping (m->map) or calls moe__model_alloc_params. */
enum {
    MOE__MODEL_LEAN = 1,
    MOE__MODEL_DEFER_PARAMS = 2,
    MOE__MODEL_TABLE = 4, /* the tensor table only: no backend */
    MOE__MODEL_OPTIM = 8  /* a trainer's: its AdamW moments count in the memory checked up front */
};
moe_status moe__model_create(const moe_config *c, int max_batch, int flags, moe_model **out);
/* The parameters of a model created with MOE__MODEL_DEFER_PARAMS, allocated (not zeroed). */
moe_status moe__model_alloc_params(moe_model *m);
/* Drops [p, p + n) of m's parameters from resident memory when they lie in its checkpoint's
 * mapping (read once, for a conversion); no-op otherwise. */
void moe__model_release(const moe_model *m, const float *p, int64_t n);
/* Where each of dst's tensors comes from among ns source tensors (names, shapes), by
 * moe_model_init_from's rules: plan[i] the source tensor copied (upcycle[i]: replicated into
 * each expert of a stacked expert tensor, from a dense FFN), or -1 (a router or buffer that
 * starts fresh); report may be NULL. Errors as moe_model_init_from's (the tensor named). */
moe_status moe__init_plan(const moe_model *dst, const moe_tensor_info *const *src, int ns, int *plan, uint8_t *upcycle,
                          moe_init_report *report);
/* A forward's losses from its routing statistics (m->stats: each MoE layer's losses, averaged
 * over the layers) and its cross-entropy ce (with targets): moe_model_forward's out, for every
 * backend. MOE_STATUS_NUMERIC when a loss is not finite. */
moe_status moe__model_losses(const moe_model *m, int targets, float ce, moe_losses *out);
/* Slots per token a layer with E experts may use in training (its widest routing). */
int64_t moe__model_max_slots(const moe_config *c, int E);
/* Seeds the random draws (noise, jitter, random routing) of the next training forwards. */
void moe__model_set_noise_seed(moe_model *m, uint64_t seed);
/* The model's phase-time accumulators (for the optimizer's share). */
double *moe__model_prof(moe_model *m);
/* Expert parallelism of a model: *ep ranks share its experts, this one is *rank. */
void moe__model_ep(const moe_model *m, int *ep, int *rank);

#endif
