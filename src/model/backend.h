/*
 * backend.h — the seam between the model definition (model.h: config, tensor table, checkpoint
 * names, routing statistics) and the code that runs it. A backend owns its memory plan (where
 * parameters, gradients, optimizer moments, activations and scratch live), the forward and
 * backward passes, the optimizer step, and the copies between its memory and the host views in
 * struct moe_model. The model's public functions, the trainer, checkpoints, metrics and the CLI
 * reach a backend only through this table.
 *
 * The CPU backend (cpu/) is the first and the reference: BLAS + OpenMP in fp32, its buffers are
 * the host views, so to_host and from_host have nothing to copy. A CUDA backend implements the
 * same table with device buffers and host mirrors (docs/architecture.md).
 *
 * Every op receives the model; ops marked COLLECTIVE must be called by every rank of the named
 * group (src/dist/dist.h), in the same order.
 */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include "model/model.h"

#include <stddef.h>
#include <stdint.h>

/* The buffers with host views in struct moe_model. */
typedef enum { MOE_BUF_PARAMS, MOE_BUF_GRADS, MOE_BUF_OPT } moe__buf;

/* Kinds of the first non-finite value locate_nonfinite finds (0: none). */
enum { MOE_NONFINITE_PARAM = 1, MOE_NONFINITE_ACT = 2, MOE_NONFINITE_GRAD = 3 };

struct moe__backend {
    const char *name;
    /* The memory plan: allocates the parameters and gradients (zeroed, with m->params and
     * m->grads pointing at their host views) and the activations and scratch for batches of
     * up to m->max_batch sequences of m->cfg.seq_len, once; keeps its state in m->be_state.
     * Nothing is allocated after this in forward, backward or the optimizer step. */
    moe_status (*create)(moe_model *m);
    /* Frees what create and optimizer_create allocated (m->be_state may be NULL). */
    void (*free)(moe_model *m);
    /* The AdamW moments (2 n_params floats, zeroed; host view m->opt), for training models. */
    moe_status (*optimizer_create)(moe_model *m);

    /* Forward over tokens (B,T), already checked by moe_model_forward; fills m->stats and the
     * losses (moe_model_forward's contract). COLLECTIVE (ep group) with expert parallelism. */
    moe_status (*forward)(moe_model *m, const int *tokens, const int *targets, int B, int T, int training,
                          moe_losses *out);
    /* Backward of the last forward (which had targets): gradients accumulate, scaled by
     * grad_scale. COLLECTIVE (ep group) with expert parallelism. */
    moe_status (*backward)(moe_model *m, float grad_scale);
    void (*zero_grad)(moe_model *m);
    /* Logits (B*T, V) of the last forward, readable on the host until the next forward. */
    const float *(*logits)(moe_model *m);
    /* moe_model_routing: the expert of every slot of MoE layer i (valid, in a model without
     * recompute) in the last forward into out (when not NULL), and the slots per token;
     * MOE_STATUS_DEVICE when the device cannot give them. */
    moe_status (*routing)(const moe_model *m, int i, int *out, int *slots);

    /* Global gradient norm over all trained tensors, independent of the thread count.
     * COLLECTIVE (ep group): expert tensors are summed over the ranks that share them. */
    float (*grad_norm)(moe_model *m);
    /* One AdamW step (0-based step) with global-norm clipping by norm (from grad_norm):
     * decoupled decay except on norms, per-group learning rates, buffers untouched. */
    void (*adamw)(moe_model *m, int64_t step, float lr, const moe_config *c, float norm);
    /* The aux-loss-free selection biases after an optimizer step: loads holds each MoE layer's
     * E loads (moe_model_total_experts of them, layer by layer) summed over the step. */
    void (*bias_update)(moe_model *m, const int64_t *loads, float rate);
    /* Where the first non-finite value is (a parameter, the last forward's activations, a
     * gradient): its description in where, its kind as the return value (0: none). Local. */
    int (*locate_nonfinite)(const moe_model *m, char *where, size_t n);

    /* Generation with a KV cache; NULL when the backend cannot decode. kv_create: a cache of
     * `batch` sequences of up to seq_len positions, with a workspace for max(batch, seq_len) new
     * tokens (kv_bytes of them in all). decode: the n new tokens of each of B sequences (tokens
     * (B,n); B * n at most the workspace's rows), sequence b being cache slot seq[b] whose first
     * pos[b] positions are cached (pos[b] + n <= seq_len): their keys and values are stored at
     * positions pos[b] .. pos[b]+n-1, and the logits of every new token (B,n,V) when all, else
     * of each sequence's last (B,V), are written to logits (host memory). Routing is the
     * inference path's, dropless. Local (no expert parallelism). */
    moe_status (*kv_create)(moe_model *m, int batch, void **kv);
    void (*kv_free)(void *kv);
    size_t (*kv_bytes)(const void *kv);
    moe_status (*decode)(moe_model *m, void *kv, const int *tokens, int B, int n, const int *seq, const int *pos,
                         float *logits, int all);

    /* Makes the host view of b current (before reading it: checkpoints, exports). */
    moe_status (*to_host)(moe_model *m, moe__buf b);
    /* Reads the host view of b back (after writing it: initialisation, loading). */
    moe_status (*from_host)(moe_model *m, moe__buf b);
};

/* The CPU backend (cpu/), and the CUDA backend (cuda/, in builds with MOE_HAVE_CUDA). */
extern const moe__backend moe__backend_cpu;
extern const moe__backend moe__backend_cuda;

#endif
