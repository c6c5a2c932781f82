/*
 * moe.h — public API of moe, a trainer for sparse Mixture-of-Experts language models.
 *
 * Objects: a config (plain struct, moe_config_default()), a model (opaque handle: parameters,
 * gradients and one planned activation buffer), a trainer (opaque handle: model, AdamW state,
 * data, run directory) and a dataset (opaque handle: tokens). How calls fail, who owns what and
 * which thread may call: the API policy below.
 *
 * Dimension letters: B batch, T sequence, C channels, V vocab, L layers, N = B*T tokens,
 * E routed experts, S shared experts, K experts per token, F expert hidden size, H heads.
 *
 * API policy
 *
 * Versions. moe is 0.x: MOE_VERSION_* (moe_version.h) give the headers' version, moe_version()
 * the library's. Until 1.0 a minor version may change the API, and each change is named in the
 * comment where it happened ("0.1: moe_model_routing returns a status"), so that an upgrade is a
 * search of this file for the new version.
 *
 * Statuses. Every function that can fail returns a moe_status and sets a message naming what
 * failed, read with moe_last_error() (thread-local; valid until the next failing call on that
 * thread). Each function's comment lists its statuses ("Statuses: ..."), except two that are
 * not repeated: NOMEM wherever memory is allocated, DEVICE wherever a CUDA model runs. The
 * library never exits, aborts or prints to stdout or stderr: it prints only to a FILE* the
 * caller passes (moe_config_help), so the caller decides what the user sees. The one exception
 * is moe_dist_abort, which ends an MPI job when asked to.
 *
 * Structs by value. The small structs (moe_config, moe_device, moe_losses, moe_step_info,
 * moe_layer_stats, moe_tensor_info, moe_init_report) are passed and returned by value or through
 * pointers. A minor version may add fields to them (code is rebuilt against the new header), so
 * a caller starts a struct it passes in from the library's defaults (moe_config_default,
 * moe_device_default or moe_device_parse) and sets fields by name, never field by field from
 * zero: a new field then gets its default. Structs the library fills are written whole.
 *
 * Ownership. Opaque handles (moe_model, moe_trainer, moe_dataset) belong to the caller, who frees
 * each with its *_free (NULL is accepted), except where a function says it takes them over. A
 * function that creates one sets *out to NULL when it fails. Every returned or borrowed pointer
 * says how long it lives; "lives as long as m" means until moe_model_free(m). Strings said to be
 * static live as long as the process.
 *
 * Threads. A model, trainer or dataset is used by one thread at a time (each pass runs OpenMP
 * threads of its own); different ones may run on different threads. moe_dist_init,
 * moe_dist_setup and moe_device_select are process-wide: call them first, before any model is
 * created (a model keeps the device and expert parallelism it was created under). Under MPI
 * the library is called from the thread that called moe_dist_init (MPI_THREAD_FUNNELED), and a
 * CUDA model from the thread that called moe_device_select (CUDA's current device is per thread).
 */
#ifndef MOE_H
#define MOE_H

#include "moe_version.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status */

/* X(name, message): the one list of status codes. */
#define MOE_STATUS_LIST(X)                                          \
    X(OK, "ok")                                                     \
    X(NOMEM, "out of memory")                                       \
    X(IO, "i/o error")                                              \
    X(FORMAT, "malformed file")                                     \
    X(CONFIG, "invalid configuration")                              \
    X(ARG, "invalid argument")                                      \
    X(DATA, "invalid data")                                         \
    X(NUMERIC, "numerical error")                                   \
    X(DEVICE, "device error")                                       \
    X(BUSY, "in use")                                               \
    X(EXISTS, "already exists")                                     \
    X(MISMATCH, "mismatch")

typedef enum {
#define MOE__X(name, msg) MOE_STATUS_##name,
    MOE_STATUS_LIST(MOE__X)
#undef MOE__X
    MOE_STATUS_COUNT
} moe_status;

/* Short fixed message of a status code ("unknown status" outside the list). Never NULL; static. */
const char *moe_status_str(moe_status s);
/* The library's version ("0.1.0"; MOE_VERSION_STRING of the headers it was built with) and what
 * it was built with: "0.1.0 (openblas, openmp, mpi, cuda)". Both static. */
const char *moe_version(void);
const char *moe_build_info(void);
/* The BLAS this process runs and how: "OpenBLAS 0.3.21, kernel Haswell, 2 threads" (the kernel
 * OpenBLAS picked for this CPU at load, or OPENBLAS_CORETYPE's; the OpenMP thread count now).
 * Valid until the next call on the thread. moe_blas_core: the kernel's name alone (static). */
const char *moe_blas_info(void);
/* The memory a model may take (bytes; 0, the default: the smaller of MemAvailable and what the
 * cgroup's limit leaves). Creating a model, or a trainer, whose weights, gradients, optimizer
 * moments and activations need more is refused before anything is allocated (MOE_STATUS_NOMEM,
 * giving both figures and the options that would fit). Process-wide. */
void moe_memory_limit_set(int64_t bytes);
const char *moe_blas_core(void);
/* Detailed message of the last error set on this thread ("" if none). Owned by the library;
 * valid until the next failing call on this thread. A successful call does not clear it, so it
 * is read only after a call returned an error. */
const char *moe_last_error(void);

/* ---------------------------------------------------------------- config */

/* X(constant, spelling): the values of each config enum, in order from 0. The enums below and
 * the spellings that config files, `--set`, checkpoints and moe_config_help() use come from these
 * lists. */
#define MOE_DROP_POLICY_VALUES(X) X(MOE_DROP_PROBABILITY, "probability") X(MOE_DROP_POSITION, "position")
#define MOE_ROUTING_VALUES(X)                                                                                       \
    X(MOE_ROUTING_TOPK, "topk")                   /* token choice top-K (K=1 Switch, K=2 Mixtral/GShard) */         \
    X(MOE_ROUTING_NOISY_TOPK, "noisy_topk")       /* Shazeer et al. 2017 noisy top-K gating */                      \
    X(MOE_ROUTING_EXPERT_CHOICE, "expert_choice") /* Zhou et al. 2022: each expert takes its top-capacity tokens */ \
    X(MOE_ROUTING_SOFT, "soft") /* dense soft mixture: every expert, softmax weights (Jacobs et al. 1991) */
#define MOE_SCORE_VALUES(X) X(MOE_SCORE_SOFTMAX, "softmax") X(MOE_SCORE_SIGMOID, "sigmoid")
/* How group-limited routing scores a group: the sum of its two best scores (DeepSeek-V3's
 * noaux_tc), or its best score (DeepSeek-V2's group_limited_greedy). */
#define MOE_GROUP_SCORE_VALUES(X) X(MOE_GROUP_TOP2_SUM, "top2_sum") X(MOE_GROUP_MAX, "max")
#define MOE_FAULT_POLICY_VALUES(X) X(MOE_FAULT_STOP, "stop") X(MOE_FAULT_SKIP, "skip")

#define MOE__X(constant, spelling) constant,
typedef enum { MOE_DROP_POLICY_VALUES(MOE__X) } moe_drop_policy;
typedef enum { MOE_ROUTING_VALUES(MOE__X) } moe_routing;
typedef enum { MOE_SCORE_VALUES(MOE__X) } moe_score;
typedef enum { MOE_GROUP_SCORE_VALUES(MOE__X) } moe_group_score;
typedef enum { MOE_FAULT_POLICY_VALUES(MOE__X) } moe_fault_policy;
#undef MOE__X
/* The largest value of the enum listed by values (a constant expression). */
#define MOE__ENUM_MAX(values) (values(MOE__ENUM_ONE) - 1)
#define MOE__ENUM_ONE(constant, spelling) +1

/*
 * X(name, type, default, min, max, kind, help): the one list of config keys. Each is a field of
 * moe_config and a key of JSON config files, `--set key=value` and the config stored in
 * checkpoints; moe_config_to_json() and moe_config_help() list them in this order.
 *   type    INT (int), FLOAT (float), BOOL (int, 0 or 1), U64 (uint64_t), STR (char[128]) or
 *           ENUM(ctype, values) (ctype, with the spellings of its values list above)
 *   min,max the range that moe_config_set() and moe_config_validate() accept (INT, FLOAT, BOOL,
 *           ENUM); unused for U64 and STR
 *   kind    MODEL (fixed once a model exists) or TRAINING (may change on resume; "[training]" in
 *           moe_config_help())
 *   help    the meaning, as moe_config_help() prints it
 */
#define MOE_CONFIG_KEYS(X)                                                                                          \
    X(vocab_size, INT, 256, 2, 1 << 20, MODEL, "vocabulary size V (256 for byte-level text)")                       \
    X(seq_len, INT, 128, 1, 1 << 16, MODEL, "context length T")                                                     \
    X(n_embd, INT, 128, 2, 1 << 16, MODEL, "channels C")                                                            \
    X(n_layer, INT, 4, 1, 1024, MODEL, "transformer blocks L")                                                      \
    X(n_head, INT, 4, 1, 1024, MODEL, "attention heads H (must divide n_embd; even head size)")                     \
    X(n_kv_head, INT, 0, 0, 1024, MODEL, "key/value heads (grouped-query attention; divides n_head); 0 = n_head")     \
    X(qkv_bias, BOOL, 0, 0, 1, MODEL, "the q, k and v projections have biases (Qwen2)")                             \
    X(qk_norm, BOOL, 0, 0, 1, MODEL, "RMSNorm over the whole q and k projections before RoPE (OLMoE)")             \
    X(ffn_hidden, INT, 512, 1, 1 << 20, MODEL, "hidden size of dense SwiGLU FFN layers")                            \
    X(n_experts, INT, 8, 1, 4096, MODEL, "routed experts E per MoE layer")                                          \
    X(top_k, INT, 2, 1, 4096, MODEL, "experts per token K (1 = Switch)")                                            \
    X(expert_hidden, INT, 256, 1, 1 << 20, MODEL, "hidden size F of each expert (routed and shared)")               \
    X(n_shared, INT, 0, 0, 64, MODEL, "shared experts S, always active, added to the routed output")                \
    X(shared_hidden, INT, 0, 0, 1 << 22, MODEL,                                                                     \
      "hidden size of the S shared experts together (one SwiGLU); 0 = S * expert_hidden")                           \
    X(shared_gate, BOOL, 0, 0, 1, MODEL, "scale the shared experts' output by sigmoid(x . w_gate) (Qwen2-MoE)")     \
    /* every:k is layers k-1, 2k-1, ... */                                                                          \
    X(moe_layers, STR, "all", 0, 0, MODEL, "which layers are MoE: all, none, every:k, or a list like 0,2-5,7")      \
    X(norm_topk, BOOL, 1, 0, 1, MODEL, "renormalise the K gate weights to sum to 1 (Mixtral)")                      \
    X(tie_embeddings, BOOL, 0, 0, 1, MODEL, "lm_head shares the embedding matrix")                                  \
    X(rope_theta, FLOAT, 10000.0, 1.0, 1e12, MODEL, "RoPE base")                                                    \
    X(norm_eps, FLOAT, 1e-5, 1e-12, 1.0, MODEL, "RMSNorm epsilon")                                                  \
    X(init_std, FLOAT, 0.02, 0.0, 10.0, MODEL, "std of weight initialisation")                                      \
    X(router_init_std, FLOAT, 0.02, 0.0, 100.0, MODEL, "std of router weight initialisation")                       \
    X(capacity_factor, FLOAT, 1.25, 0.0, 1e6, MODEL, "training capacity factor; 0 = dropless")                      \
    X(eval_capacity_factor, FLOAT, 0.0, 0.0, 1e6, MODEL, "capacity factor for eval and sampling; 0 = dropless")     \
    X(min_capacity, INT, 4, 0, INT_MAX, MODEL, "lower bound of the per-expert capacity")                            \
    X(drop_policy, ENUM(moe_drop_policy, MOE_DROP_POLICY_VALUES), MOE_DROP_PROBABILITY, 0,                          \
      MOE__ENUM_MAX(MOE_DROP_POLICY_VALUES), MODEL,                                                                 \
      "which assignments an expert over capacity drops: probability (lowest first) or position (latest)")           \
    X(expert_counts, STR, "", 0, 0, MODEL,                                                                          \
      "experts per MoE layer, one count per MoE layer (PR-MoE pyramid, e.g. 8,8,16,16); empty = n_experts")         \
    X(routing, ENUM(moe_routing, MOE_ROUTING_VALUES), MOE_ROUTING_TOPK, 0, MOE__ENUM_MAX(MOE_ROUTING_VALUES),       \
      MODEL,                                                                                                        \
      "topk (token choice), noisy_topk (Shazeer 2017), expert_choice (Zhou 2022; not causal: token choice "         \
      "at eval and sampling), soft (every expert, softmax weights)")                                                \
    X(router_score, ENUM(moe_score, MOE_SCORE_VALUES), MOE_SCORE_SOFTMAX, 0, MOE__ENUM_MAX(MOE_SCORE_VALUES),       \
      MODEL, "router scores: softmax or sigmoid (DeepSeek-V3)")                                                     \
    X(n_group, INT, 0, 0, 64, MODEL, "expert groups of group-limited routing (DeepSeek-V2/V3; topk); 0 = none")     \
    X(topk_group, INT, 0, 0, 64, MODEL, "groups each token may route to, by group score (with n_group)")          \
    X(group_score, ENUM(moe_group_score, MOE_GROUP_SCORE_VALUES), MOE_GROUP_TOP2_SUM, 0,                            \
      MOE__ENUM_MAX(MOE_GROUP_SCORE_VALUES), MODEL,                                                                 \
      "a group's score: top2_sum (sum of its 2 best, DeepSeek-V3) or max (its best, DeepSeek-V2)")                  \
    /* DeepSeek-V3's routed_scaling_factor */                                                                       \
    X(route_scale, FLOAT, 1.0, 1e-6, 1e6, MODEL, "multiplier of routed gate weights (DeepSeek-V3)")                 \
    X(jitter_eps, FLOAT, 0.0, 0.0, 1.0, MODEL, "Switch router input jitter U(1-eps,1+eps); 0 = off")                \
    X(random_routing, BOOL, 0, 0, 1, MODEL, "GShard: keep the 2nd expert with probability 2*g2 (top_k=2)")          \
    X(bias_update_rate, FLOAT, 0.0, 0.0, 1.0, MODEL,                                                                \
      "DeepSeek-V3 aux-loss-free balancing: per-expert selection bias, b += rate*sign(mean-load); 0 = off")         \
    /* E * sum_i f_i P_i */                                                                                         \
    X(aux_loss_coef, FLOAT, 0.01, 0.0, 1e6, MODEL, "Switch load-balancing loss coefficient")                        \
    /* mean(logsumexp(router logits)^2) */                                                                          \
    X(z_loss_coef, FLOAT, 0.001, 0.0, 1e6, MODEL, "router z-loss coefficient")                                      \
    X(seq_aux_loss_coef, FLOAT, 0.0, 0.0, 1e6, MODEL, "DeepSeek-V3 sequence-wise balance loss coefficient")         \
    X(importance_loss_coef, FLOAT, 0.0, 0.0, 1e6, MODEL, "Shazeer importance loss CV(importance)^2 (noisy_topk)")   \
    X(load_loss_coef, FLOAT, 0.0, 0.0, 1e6, MODEL, "Shazeer smooth load loss CV(load)^2 (noisy_topk)")              \
    X(batch_size, INT, 16, 1, 1 << 20, TRAINING, "sequences per micro-batch B")                                     \
    X(grad_accum, INT, 1, 1, 1 << 20, TRAINING, "micro-batches per optimizer step")                                 \
    X(steps, INT, 300, 0, INT_MAX, TRAINING, "optimizer steps to train (total, counting resumed ones)")             \
    X(warmup_steps, INT, 30, 0, INT_MAX, TRAINING, "linear warmup steps")                                           \
    X(lr, FLOAT, 3e-3, 0.0, 10.0, TRAINING, "peak learning rate")                                                   \
    X(min_lr_frac, FLOAT, 0.1, 0.0, 1.0, TRAINING, "cosine decay floor as a fraction of lr")                        \
    X(weight_decay, FLOAT, 0.1, 0.0, 10.0, TRAINING, "AdamW decoupled weight decay (not on norms)")                 \
    X(beta1, FLOAT, 0.9, 0.0, 0.999999, TRAINING, "AdamW beta1")                                                    \
    X(beta2, FLOAT, 0.95, 0.0, 0.999999, TRAINING, "AdamW beta2")                                                   \
    X(adam_eps, FLOAT, 1e-8, 0.0, 1.0, TRAINING, "AdamW epsilon")                                                   \
    X(grad_clip, FLOAT, 1.0, 0.0, 1e6, TRAINING, "global gradient-norm clip; 0 = off")                              \
    X(expert_lr_mult, FLOAT, 1.0, 0.0, 1e3, TRAINING, "learning-rate multiplier of routed experts")                 \
    X(router_lr_mult, FLOAT, 1.0, 0.0, 1e3, TRAINING, "learning-rate multiplier of routers")                        \
    X(eval_every, INT, 100, 0, INT_MAX, TRAINING, "steps between evaluations; 0 = only at the end")                 \
    X(eval_batches, INT, 8, 1, INT_MAX, TRAINING, "validation batches per evaluation")                              \
    X(ckpt_every, INT, 0, 0, INT_MAX, TRAINING, "steps between checkpoints; 0 = only at the end")                   \
    X(log_every, INT, 10, 1, INT_MAX, TRAINING, "steps between progress lines")                                     \
    X(nonfinite_policy, ENUM(moe_fault_policy, MOE_FAULT_POLICY_VALUES), MOE_FAULT_STOP, 0,                         \
      MOE__ENUM_MAX(MOE_FAULT_POLICY_VALUES), TRAINING,                                                             \
      "a step whose loss or gradients are NaN/Inf (or a loss spike): stop (save the last good checkpoint, "         \
      "exit) or skip (drop its update, go on)")                                                                     \
    X(max_skipped_steps, INT, 10, 1, INT_MAX, TRAINING,                                                             \
      "with nonfinite_policy=skip: stop (after saving) when this many steps in a row were skipped")                 \
    X(loss_spike_factor, FLOAT, 0.0, 0.0, 1e6, TRAINING,                                                            \
      "loss spike guard: a step whose loss exceeds this times the running mean (EMA 0.99, after 20 steps) "         \
      "is handled like a NaN; 0 = off")                                                                             \
    X(keep_checkpoints, INT, 0, 0, 100000, TRAINING,                                                                \
      "also keep the last N checkpoints as DIR/checkpoints/step-SSSSSSSS (hard links); 0 = only the latest")        \
    X(val_frac, FLOAT, 0.1, 0.0, 0.9, TRAINING, "held-out fraction when no validation file is given")               \
    X(seed, U64, 1337, 0, 0, TRAINING, "random seed (initialisation, data order)")                                  \
    X(threads, INT, 0, 0, 4096, TRAINING, "OpenMP threads; 0 = automatic: fewer while the cores are shared")        \
    X(recompute, BOOL, 0, 0, 1, TRAINING,                                                                           \
      "activation recompute: keep each block's input only, redo its forward in backward (less memory, ~1/3 "        \
      "more compute)")                                                                                              \
    X(tensorboard, BOOL, 1, 0, 1, TRAINING,                                                                         \
      "write TensorBoard event files (losses, lr, grad norm, per-layer MaxVio, drops and per-expert loads) "        \
      "to the run directory")

/* The C type of each config key type (a STR field is a char array of this type). */
typedef char moe__config_str[128];
#define MOE__CONFIG_INT int
#define MOE__CONFIG_FLOAT float
#define MOE__CONFIG_BOOL int
#define MOE__CONFIG_U64 uint64_t
#define MOE__CONFIG_STR moe__config_str
#define MOE__CONFIG_ENUM(ctype, values) ctype

/* Model and training configuration: one field per key of MOE_CONFIG_KEYS, of the same name.
 * moe_config_default() gives each its default. */
typedef struct moe_config {
#define MOE__X(name, type, def, min, max, kind, help) MOE__CONFIG_##type name;
    MOE_CONFIG_KEYS(MOE__X)
#undef MOE__X
} moe_config;

/* Every key at its default: where every config starts, so that fields added later get theirs. */
moe_config moe_config_default(void);
/* Checks every field and the relations between them (heads divide C, K <= E, ...). Statuses:
 * CONFIG naming the first field at fault. */
moe_status moe_config_validate(const moe_config *c);
/* Sets one key from its text value ("n_embd", "128"). Unknown key or bad value: MOE_STATUS_CONFIG. */
moe_status moe_config_set(moe_config *c, const char *key, const char *value);
/* Applies a JSON object of keys (the whole text of a config file); `origin` names it in errors.
 * Statuses: CONFIG for malformed JSON, an unknown key or a bad value; the keys before it stay
 * applied, so on error c is to be dropped. */
moe_status moe_config_apply_json(moe_config *c, const char *json, const char *origin);
/* Applies the JSON config file at path (a regular file or a pipe); a file that cannot be read
 * (MOE_STATUS_IO) or holds a NUL byte (MOE_STATUS_CONFIG) is named in the error, and so are
 * moe_config_apply_json's errors. */
moe_status moe_config_apply_file(moe_config *c, const char *path);
/* Writes all keys as one JSON object. Caller frees the returned string with free(); NULL when
 * out of memory (moe_last_error says so). */
char *moe_config_to_json(const moe_config *c);
/* Prints every key, its default and meaning to f: the library's only printing. */
void moe_config_help(FILE *f);
/* 1 if layer l has an MoE FFN under this config (moe_layers already validated; 0 if malformed). */
int moe_config_layer_is_moe(const moe_config *c, int l);
/* Routed experts of MoE layer l (expert_counts, or n_experts). */
int moe_config_layer_experts(const moe_config *c, int l);
/* MOE_STATUS_MISMATCH naming the first model key (not [training]) whose value in c differs from
 * the run's, with both values; no other status. */
moe_status moe_config_check_model(const moe_config *run, const moe_config *c);
/* Copies the training keys ([training] in moe_config_help) of src into dst; model keys stay. */
void moe_config_take_training(moe_config *dst, const moe_config *src);

/* ---------------------------------------------------------------- model */

typedef struct moe_model moe_model;

typedef enum {
    MOE_GROUP_DENSE = 0, /* attention, dense FFN, shared experts, embeddings, lm_head */
    MOE_GROUP_EXPERT,    /* routed expert weights */
    MOE_GROUP_ROUTER,    /* router weights */
    MOE_GROUP_NORM,      /* RMSNorm gains and biases: no weight decay */
    MOE_GROUP_BUFFER     /* not trained by gradients (aux-loss-free bias): no optimizer, no decay */
} moe_group;

/* One tensor of the model's table; it and its name live as long as the model. */
typedef struct {
    const char *name;   /* checkpoint key (Hugging Face naming, experts stacked as [E][...]) */
    int ndim;
    int64_t shape[3];
    int64_t numel;
    int64_t offset;     /* in floats, into the parameter (and gradient) buffer */
    moe_group group;
    int layer;          /* -1 for non-layer tensors */
} moe_tensor_info;

/* Per-MoE-layer routing statistics of the last forward pass. Its pointers (load, bias) point into
 * the model and live as long as it; each forward rewrites what they point at. */
typedef struct {
    int layer;
    int n_experts;      /* E of this layer */
    int64_t *load;      /* [E] assignments routed to each expert (before dropping) */
    int64_t dropped;    /* assignments dropped by capacity */
    int64_t would_drop; /* at eval (dropless): assignments the training capacity would drop */
    int64_t assignments;/* K*N */
    int capacity;       /* per expert; 0 = dropless */
    float aux, z;       /* this layer's aux loss and z-loss values */
    float seq_aux, importance, load_loss;
    const float *bias;  /* [E] aux-loss-free bias, or NULL */
} moe_layer_stats;

typedef struct {
    float ce;           /* mean cross-entropy over targets */
    float aux;          /* aux loss averaged over MoE layers (before its coefficient) */
    float z;            /* z-loss averaged over MoE layers (before its coefficient) */
    float seq_aux;      /* sequence-wise balance loss, averaged over MoE layers */
    float importance;   /* noisy top-K importance loss, averaged over MoE layers */
    float load;         /* noisy top-K load loss, averaged over MoE layers */
    float total;        /* ce + the sum of each balance loss times its coefficient */
} moe_losses;

/* Creates a model for config c, with activation memory planned for batches up to max_batch
 * sequences of c->seq_len, on the device moe_device_select chose. Parameters are zero until
 * moe_model_init or a load. Statuses: CONFIG when c is invalid, its expert rows for max_batch
 * overflow the int indices, or a layer's experts do not divide by the expert parallelism
 * (moe_dist_setup); ARG for max_batch < 1, or CUDA selected in a build without it; NOMEM. */
moe_status moe_model_create(const moe_config *c, int max_batch, moe_model **out);
void moe_model_free(moe_model *m);
/* Random initialisation: N(0, init_std) matrices (output projections scaled 1/sqrt(2L)),
 * router N(0, router_init_std), norms 1. It returns no status: on a CUDA model a failed upload
 * is kept and returned by the next forward ("the GPU failed earlier"). */
void moe_model_init(moe_model *m, uint64_t seed);
/* The model's config; lives as long as m. */
const moe_config *moe_model_config(const moe_model *m);
/* The tensor table: i in [0, moe_model_n_tensors) (not checked); lives as long as m. */
int moe_model_n_tensors(const moe_model *m);
const moe_tensor_info *moe_model_tensor(const moe_model *m, int i);
/* Tensor by name, or NULL. Lives as long as m. */
const moe_tensor_info *moe_model_find(const moe_model *m, const char *name);
/* The parameters and gradients (n_params floats each, laid out by the tensor table's offsets) as
 * host memory. The CPU backend computes in these buffers, so writes (finite-difference tests,
 * hand initialisation) take effect at the next forward; the library's own readers and writers
 * (checkpoints, export, initialisation) synchronise with the backend around them. On a CUDA
 * model they are host copies, made current by these calls (NULL if the device fails); writes
 * to them do not reach the device. Owned by m; the pointers live as long as m. */
float *moe_model_params(moe_model *m);
float *moe_model_grads(moe_model *m);
int64_t moe_model_n_params(const moe_model *m);
/* The host memory m was planned with (the figures its creation checked against the memory
 * available): *weights the weights as held (bf16: half, plus the conversion window), *other
 * the gradients, optimizer moments and activations (0 for what the backend does not report). */
void moe_model_memory(const moe_model *m, int64_t *weights, int64_t *other);
/* Parameters active per token (router, K routed + S shared experts, attention, ...). */
int64_t moe_model_active_params(const moe_model *m);

/* Forward pass over tokens (B,T) (B <= max_batch, T <= seq_len). targets (B,T) may be NULL
 * (then no loss). training selects the training capacity factor; otherwise the eval one.
 * Logits (B*T, V) stay readable through moe_model_logits until the next forward. out may be NULL
 * (no losses computed). Statuses: ARG for B or T outside the plan; DATA for a token or target
 * outside [0, V); NUMERIC when a loss is not finite (out is still filled, and backward may still
 * run: the trainer then locates the fault). */
moe_status moe_model_forward(moe_model *m, const int *tokens, const int *targets, int B, int T,
                             int training, moe_losses *out);
/* Backward pass of the last forward (which must have had targets); accumulates into the
 * gradients, scaled by grad_scale (1/grad_accum). Statuses: ARG when the last forward had no
 * targets, or there was none. */
moe_status moe_model_backward(moe_model *m, float grad_scale);
/* No status: on a CUDA model a failure is kept for the next forward, as for moe_model_init. */
void moe_model_zero_grad(moe_model *m);
/* The logits (B*T, V) of the last forward, owned by m and valid until the next forward: on the
 * CPU the model's own buffer, on a CUDA model a host copy made by this call (and rewritten by
 * the next). NULL (error in moe_last_error: NOMEM or DEVICE) when the device cannot give it. */
const float *moe_model_logits(const moe_model *m);
/* Routing statistics of the last forward: one entry per MoE layer, i in [0,
 * moe_model_n_moe_layers) (not checked). The pointer lives as long as m; each forward rewrites
 * the entry. */
int moe_model_n_moe_layers(const moe_model *m);
const moe_layer_stats *moe_model_layer_stats(const moe_model *m, int i);
/* Routed experts summed over the MoE layers: the length of per-expert load arrays such as
 * moe_evaluate's loads (layer i's experts follow those of layers 0..i-1). */
int64_t moe_model_total_experts(const moe_model *m);
/* MaxVio of one layer's per-expert loads (Wang et al. 2024): (max_e load_e - mean load) / mean
 * load; 0 when nothing was routed. */
double moe_maxvio(const int64_t *load, int n_experts);

/* Routing decisions of the last forward for MoE layer i (0-based among MoE layers): *slots gets
 * the entries per token (K for token choice, E for expert choice and soft mixture in training)
 * and out, unless NULL, for each token (B*T of them) `slots` entries, each an expert id, or -1
 * for a slot that was dropped or not routed; out must hold B*T*slots ints (call with out NULL
 * to learn slots first). Errors (*slots is then 0): MOE_STATUS_ARG for i outside
 * [0, moe_model_n_moe_layers); MOE_STATUS_CONFIG for a model created with recompute, which
 * keeps no per-layer routing (its blocks share one activation slot; moe_model_load creates
 * models without it); MOE_STATUS_DEVICE when a CUDA model cannot copy it to the host.
 * 0.1: returns a status and the slot count in *slots (it returned the slot count, or -1). */
moe_status moe_model_routing(const moe_model *m, int i, int *out, int *slots);

/* Where the time of forward, backward and optimizer passes goes, accumulated in seconds. */
typedef enum {
    MOE_PHASE_ATTENTION = 0, /* norms, q/k/v/o projections, RoPE, attention */
    MOE_PHASE_ROUTER,        /* router logits, scores, selection, balance losses and their gradients */
    MOE_PHASE_DISPATCH,      /* capacity, permutation, gathering rows into expert order, scattering back */
    MOE_PHASE_EXPERTS,       /* routed and shared expert FFNs, dense FFNs */
    MOE_PHASE_COMBINE,       /* weighted sum of expert outputs (and its gradient) */
    MOE_PHASE_OPTIMIZER,     /* gradient norm, clipping, AdamW */
    MOE_PHASE_HEAD,          /* embedding, final norm, lm_head, cross-entropy */
    MOE_PHASE_COUNT
} moe_phase;
/* Copies the accumulated seconds per phase into out[MOE_PHASE_COUNT]. */
void moe_model_profile(const moe_model *m, double *out);
void moe_model_profile_reset(moe_model *m);
/* "attention", "router", ...; "?" outside the enum. Static. */
const char *moe_phase_name(moe_phase p);

/* Weights as safetensors, config in the metadata. Written atomically (temp, fsync, rename), so
 * a failure leaves the previous file at path. Statuses: IO; ARG for an expert-parallel model
 * (its trainer saves it, in shards). */
moe_status moe_model_save(const moe_model *m, const char *path, int64_t step);
/* Reads a safetensors checkpoint written by moe_model_save (path is the file, or a run directory
 * holding model.safetensors): config from its metadata, a model for inference sized for
 * max_batch, weights checked by name and shape. On the CPU the model has no training state: no
 * gradients (moe_model_grads is NULL, moe_model_backward MOE_STATUS_ARG), activations for the
 * forward only (one set reused by the layers, attention through one tile of scores per
 * thread), and its weights are the file's own pages, mapped, when the file holds exactly the
 * model's tensors in order (moe_model_save's files; MOE_NO_MMAP=1 reads them instead). To train
 * from it: moe_model_create, then moe_model_init_from. max_batch 0 loads the weights only (no
 * activations: for moe_export_hf; a forward is MOE_STATUS_ARG). Statuses: IO when it cannot be read;
 * FORMAT when it is not a moe checkpoint, fails its checksum, or a tensor is missing, extra or
 * of another shape; CONFIG for a stored config that does not validate; moe_model_create's.
 * 0.2: for inference only (it had gradients and every layer's activations). */
moe_status moe_model_load(const char *path, int max_batch, moe_model **out);
/* Reads only the config stored in a checkpoint (the file, or a run directory holding it), and
 * its step when step is not NULL. Statuses: IO, FORMAT, CONFIG as for moe_model_load; *out is
 * meaningful only on MOE_STATUS_OK. */
moe_status moe_checkpoint_config(const char *path, moe_config *out, int64_t *step);
/* The config of the run in dir (its model.safetensors), as a resume starts from; when it cannot
 * be read, the error also names the run's kept checkpoints (keep_checkpoints), if any.
 * Statuses: those of moe_checkpoint_config. */
moe_status moe_run_config(const char *dir, moe_config *out);

/* ---------------------------------------------------------------- generation
 *
 * A generator keeps the keys and values of every layer for up to `batch` sequences of up to
 * seq_len positions (a KV cache), so that each new token costs one token's forward pass. Its
 * routing is the inference path's (expert choice routes by token choice), always dropless: a
 * token's experts never depend on the other tokens. The logits of a token fed at position p
 * equal those of a forward over the sequence's tokens 0 .. p (to float rounding: tests/
 * test_generate.c). The CPU backend decodes; the CUDA backend does not yet (MOE_STATUS_ARG). */

typedef struct moe_generator moe_generator;

/* Statuses: ARG for batch < 1, a backend that cannot decode, or an expert-parallel model. */
moe_status moe_generator_create(moe_model *m, int batch, moe_generator **out);
void moe_generator_free(moe_generator *g);
/* The bytes of the cache (2 n_layer batch seq_len KC floats, KC = key/value heads x head size)
 * and its workspace. */
size_t moe_generator_bytes(const moe_generator *g);
/* Positions cached for sequence seq (-1 for no such sequence); reset empties it. */
int moe_generator_len(const moe_generator *g, int seq);
void moe_generator_reset(moe_generator *g, int seq);
/* Appends n tokens to sequence seq (a prompt, or one token), at its next positions: logits
 * (n,V) of each when all, else (V) of the last. Statuses: ARG for no such sequence or n outside
 * [1, seq_len - moe_generator_len]; DATA for a token outside the vocabulary. */
moe_status moe_generator_feed(moe_generator *g, int seq, const int *tokens, int n, float *logits, int all);
/* One token for every sequence at once (tokens (batch)): logits (batch,V). Statuses: ARG when
 * a sequence is full; DATA as moe_generator_feed. */
moe_status moe_generator_step(moe_generator *g, const int *tokens, float *logits);

/* How moe_model_generate picks tokens. */
typedef struct {
    float temperature;   /* 0: greedy */
    int top_k;           /* keep the K most likely; 0: off */
    float top_p;         /* nucleus; 1: off */
    uint64_t seed;       /* sequence b draws from seed + b * 0x9e3779b97f4a7c15 */
    int eos;             /* a sequence ends after this token (kept in out); -1: never */
    /* called with each new token of each sequence in order (NULL: none); nonzero stops */
    int (*on_token)(void *user, int seq, int token);
    void *user;
} moe_sampling;
/* temperature 0.8, top_k 0, top_p 0.95, seed 42, eos -1, no callback. */
moe_sampling moe_sampling_default(void);
/* Generates up to n_new tokens after each of batch prompts at once, through a generator:
 * sequence b's into out + b * n_new, their count into n_out[b] (fewer at eos or when on_token
 * stopped). The window: the next token's logits come from the last W tokens of the sequence,
 * at positions 0 .. W-1; W starts as the prompt (its last seq_len tokens) and grows by one a
 * token; when it is seq_len and another token is needed, it restarts from the last
 * max(1, seq_len / 2) tokens, re-encoded. Statuses: ARG for batch < 1, an empty prompt,
 * temperature < 0, top_k < 0, top_p outside (0, 1]; moe_generator_create's; DATA for a prompt
 * token outside the vocabulary. */
moe_status moe_model_generate(moe_model *m, int batch, const int *const *prompts, const int *n_prompt, int n_new,
                              const moe_sampling *s, int *out, int *n_out);
/* moe_model_generate of one prompt, without eos.
 * 0.2: through the KV cache; past seq_len the window restarts from its last half (it slid by
 * one token, with a full forward for every token). */
moe_status moe_model_sample(moe_model *m, const int *prompt, int n_prompt, int *out, int n_new,
                            float temperature, int top_k, float top_p, uint64_t seed);

/* ---------------------------------------------------------------- device */

/* Where models run, and the precision of their matrix products. Not a config key: a checkpoint
 * never records where it was trained, and any device loads any checkpoint. */
typedef enum { MOE_DEVICE_CPU = 0, MOE_DEVICE_CUDA = 1 } moe_device_kind;
typedef enum {
    MOE_DTYPE_FP32 = 0, /* fp32 throughout (on CUDA: TF32 off, for checking) */
    MOE_DTYPE_BF16 = 1  /* bf16 matrix inputs, fp32 accumulation, master weights and moments (the CUDA default) */
} moe_dtype;
typedef struct {
    moe_device_kind kind;
    int index;          /* CUDA device number (cuda:N) */
    moe_dtype dtype;
} moe_device;

/* The CPU, fp32: the device of every process until moe_device_select. */
moe_device moe_device_default(void);
/* Parses a device ("cpu", "cuda", "cuda:N"; NULL = cpu) and a dtype ("fp32", "bf16"; NULL = the
 * device's default: fp32 on the CPU, bf16 on CUDA). MOE_STATUS_ARG naming the bad value. */
moe_status moe_device_parse(const char *device, const char *dtype, moe_device *out);
/* Whether the device runs models of config c: MOE_STATUS_ARG naming the first option it does not
 * take. The CPU takes every option; CUDA not yet grouped-query attention, q/k/v biases, QK-norm,
 * the shared-expert gate, a shared-expert width of its own or group-limited routing (several MPI
 * ranks on CUDA are refused by moe_device_select). 0.2: n_kv_head, qkv_bias, qk_norm,
 * shared_gate, shared_hidden, n_group. */
moe_status moe_device_supports(const moe_device *d, const moe_config *c);
/* Selects the device of the models this process creates from now on (moe_model_create and
 * every function that creates one). MOE_STATUS_ARG when it cannot be used: a build without CUDA,
 * no usable GPU, a device number the machine lacks, or CUDA under MPI with several ranks. A CUDA
 * device becomes current on the calling thread only (cudaSetDevice), hence the rule on threads
 * above. */
moe_status moe_device_select(const moe_device *d);
/* The selected device: static, lives as long as the process; moe_device_select changes it. */
const moe_device *moe_device_selected(void);

/* ---------------------------------------------------------------- data */

typedef struct moe_dataset moe_dataset;

/* Opens a dataset: the files of paths concatenated in order. Each entry is a file, a directory
 * (its token shards *.bin sorted by name, or when it has none its files not starting with '.')
 * or a glob pattern (its matches, sorted: "data/fineweb_train_*.bin"). A file is text, read as
 * bytes (vocab 256), or an llm.c token shard recognised by its magic: 20240520 (version 1,
 * uint16 tokens) or 20240801 (version 7, uint32 tokens). Only the headers are read here: the
 * tokens stay in the files and are read by window (moe_dataset_read), so a dataset holds its
 * file table, not its tokens, however large the corpus. Tokens are checked against vocab_size
 * when read (moe_dataset_check reads them all). Statuses: ARG for no paths or vocab_size < 1; IO
 * when a file or directory cannot be read; DATA for an empty file, a directory without files, a
 * pattern without matches, a malformed shard (or a .bin file that is none), each naming the
 * file.
 * 0.2: tokens are no longer read here, nor checked here; uint32 shards, directories and globs. */
moe_status moe_dataset_load(const char *const *paths, int n_paths, int vocab_size, moe_dataset **out);
/* A dataset of n tokens given in memory (copied), each checked against vocab_size. Statuses:
 * ARG for n < 1; DATA for a token outside [0, vocab_size), naming its index. */
moe_status moe_dataset_from_tokens(const int *tokens, int64_t n, int vocab_size, moe_dataset **out);
void moe_dataset_free(moe_dataset *d);
int64_t moe_dataset_len(const moe_dataset *d);
/* Where the tokens came from: the paths joined by commas as given (with " (N files)" when
 * directories or patterns stand for other files), or for a split part, which part ("the last
 * 10% (N tokens) of ..."). Valid until d is split (which renames its part) or freed. */
const char *moe_dataset_source(const moe_dataset *d);
/* Warnings of the load that are not errors, one a line ("" if none): a file that looks like
 * compressed or binary data given as text. Lives as long as d. */
const char *moe_dataset_notice(const moe_dataset *d);
/* The files that hold d's tokens, in order (for a split part, those its range touches). */
typedef struct {
    const char *path;    /* "" for tokens given in memory; lives as long as d */
    int64_t tokens;      /* in the whole file */
    int token_bytes;     /* 1: text read as bytes; 2: uint16 shard; 4: uint32 shard (or memory) */
} moe_data_file;
int moe_dataset_n_files(const moe_dataset *d);
/* File i, 0 <= i < moe_dataset_n_files(d). */
moe_data_file moe_dataset_file(const moe_dataset *d, int i);
/* Tokens [start, start + n) of d into out (n ints), read from the files now. Statuses: ARG for a
 * range outside [0, moe_dataset_len(d)); IO when a file cannot be read or ended early (changed
 * since the load); DATA for a token >= vocab_size, naming the file, its byte offset and its index
 * in the file.
 * 0.2: replaces moe_dataset_tokens, which returned the tokens as uint16 held in memory. */
moe_status moe_dataset_read(const moe_dataset *d, int64_t start, int64_t n, int *out);
/* Reads every token of d (4 MB at a time), checking each against the vocabulary; the first bad
 * one is the error, as moe_dataset_read's. */
moe_status moe_dataset_check(const moe_dataset *d);
/* Splits off the last frac of d into a new dataset *val, the caller's to free; d keeps the rest
 * (both read the same files).
 * Statuses: ARG when frac is outside (0, 1) or either part would be empty. */
moe_status moe_dataset_split(moe_dataset *d, float frac, moe_dataset **val);

/* ---------------------------------------------------------------- training */

typedef struct moe_trainer moe_trainer;

typedef struct {
    int64_t step;        /* optimizer steps done */
    moe_losses loss;     /* averaged over the accumulation micro-batches */
    float lr;
    float grad_norm;     /* before clipping */
    float maxvio;        /* largest (max load - mean load) / mean load over MoE layers */
    float dropped_frac;  /* dropped assignments / routed assignments, mean over MoE layers */
    double tokens_per_s;
    double step_ms;
    int threads;         /* OpenMP threads the step ran on */
    char threads_change[160]; /* threads=0: "" or the count from the next step on, and why */
    /* multi-rank runs, this rank (rank 0 in metrics.jsonl): bytes sent to other ranks and
     * seconds inside the calls, for token dispatch/combine (all-to-all) and all-reduces */
    int64_t a2a_bytes, allreduce_bytes;
    double a2a_s, allreduce_s;
    int has_val;
    float val_loss;
    int skipped;         /* nonfinite_policy=skip dropped this step's update; fault says why */
    char fault[256];     /* "" or what was wrong and where it first appeared */
} moe_step_info;

/* How moe_trainer_create treats out_dir. */
typedef enum {
    MOE_RUN_NEW = 0,       /* a new run: MOE_STATUS_EXISTS when out_dir already holds one
                              (model.safetensors or metrics.jsonl) */
    MOE_RUN_RESUME = 1,    /* continue the run in out_dir from its checkpoint */
    MOE_RUN_OVERWRITE = 2  /* a new run in place of the one in out_dir (its files are removed) */
} moe_run_mode;

/* Creates a trainer writing to out_dir, which it locks for its life (MOE_STATUS_BUSY naming the
 * process when another trainer holds it; a lock dies with its process). With MOE_RUN_RESUME, the
 * model, optimizer, step, RNG and data position come from out_dir's checkpoint and the training
 * keys of c apply; its model keys must equal the checkpoint's (MOE_STATUS_MISMATCH naming the key:
 * start from moe_run_config), and so must the expert parallelism (moe_dist_setup) of a checkpoint
 * written with one, whose optimizer state is sharded (MOE_STATUS_MISMATCH naming its ep). Paths
 * under out_dir too long for the library are MOE_STATUS_ARG ("path too long"). val may be NULL
 * (then it is split off train). The trainer takes ownership of both datasets, even when it fails.
 * Other statuses: EXISTS (MOE_RUN_NEW, above); IO when out_dir or its files cannot be made or read
 * (a resume without a checkpoint); FORMAT for a corrupt checkpoint or state (the error names the
 * kept checkpoints); DATA when train or val holds fewer than seq_len + 1 tokens or val cannot be
 * split off; moe_model_create's. threads > 0 sets OpenMP's thread count (omp_set_num_threads);
 * threads = 0 on the CPU backend of a single process lets moe_trainer_step change it between
 * steps (moe_trainer_threads_auto; the calling thread's OpenMP count, which the caller sees). */
moe_status moe_trainer_create(const moe_config *c, moe_dataset *train, moe_dataset *val,
                              const char *out_dir, moe_run_mode mode, moe_trainer **out);
void moe_trainer_free(moe_trainer *t);
/* After a resume whose training data differs from the run's last start or resume record in
 * metrics.jsonl (docs/metrics.md): what changed, for a warning; else NULL. Lives as long as t. */
const char *moe_trainer_data_change(const moe_trainer *t);
/* One optimizer step (grad_accum micro-batches), with eval and checkpoint when due; appends
 * a record to out_dir/metrics.jsonl. info is written whole. Statuses: NUMERIC when the loss or
 * gradients are not finite, or the loss spikes, and nonfinite_policy stops the run (the last good
 * checkpoint saved first, unless the weights themselves are not finite); IO when the checkpoint
 * or TensorBoard file cannot be written; moe_model_forward's. An error from the evaluation,
 * checkpoint or TensorBoard event due after the update comes with the step taken:
 * moe_trainer_steps_done counts it. */
/* 1 when the trainer chooses its thread count step by step (threads=0 on the CPU backend of a
 * single process): a step's result does not depend on it, only its speed. */
int moe_trainer_threads_auto(const moe_trainer *t);
moe_status moe_trainer_step(moe_trainer *t, moe_step_info *info);
int64_t moe_trainer_steps_done(const moe_trainer *t);
/* The trainer's model and config: owned by t, live as long as t (never freed by the caller). */
moe_model *moe_trainer_model(moe_trainer *t);
const moe_config *moe_trainer_config(const moe_trainer *t);
/* Writes model.safetensors and state.bin to out_dir, atomically (a failure keeps the previous
 * checkpoint). Collective under MPI: every rank calls it. Statuses: IO; ARG for a shard path too
 * long. */
moe_status moe_trainer_save(moe_trainer *t);
/* Mean cross-entropy over up to max_batches batches of non-overlapping windows of d (spread
 * evenly over d when not all are evaluated; max_batches 0 = all); routing
 * statistics summed over them go to loads (moe_model_total_experts(m) of them, may be NULL) and
 * dropped (would_drop at the training capacity). n_tokens and would_drop may be NULL. Statuses:
 * DATA when d holds fewer than seq_len + 1 tokens; moe_model_forward's (ARG for a batch above
 * the model's max_batch). */
moe_status moe_evaluate(moe_model *m, const moe_dataset *d, int batch, int max_batches,
                        float *loss, int64_t *n_tokens, int64_t *loads, int64_t *would_drop);
/* Where moe_evaluate's window i (0 <= i < windows) starts in a dataset of n tokens: windows of
 * seq_len tokens, spread evenly over the (n - 1) / seq_len that fit. Its targets are the tokens
 * start + 1 ... start + seq_len; moe_evaluate evaluated windows = *n_tokens / seq_len of them
 * (what bits per byte counts the bytes of). */
int64_t moe_evaluate_window(int64_t n, int seq_len, int64_t windows, int64_t i);

/* ---------------------------------------------------------------- tokenizers
 *
 * Hugging Face tokenizer.json, read in C (src/tok/): byte-level BPE (GPT-2, Llama-3, Qwen2,
 * OLMoE, DeepSeek) and SentencePiece-style BPE with byte fallback (Llama-2, Mistral, Mixtral),
 * with their normalizers, pre-tokenizers (split regexes through PCRE2), added and special
 * tokens, post-processor (TemplateProcessing: BOS) and decoders. A component it does not
 * implement is refused by name (MOE_STATUS_FORMAT), never approximated. Ids equal those of
 * Hugging Face's `tokenizers` (tests/test_tokenizer.sh). A tokenizer is read-only once loaded:
 * any number of threads may encode and decode with it at once. */

typedef struct moe_tokenizer moe_tokenizer;

/* Loads path: a tokenizer.json, or a directory holding one. tokenizer_config.json beside it, when
 * present, names the BOS and EOS tokens (bos_token, eos_token, add_bos_token). Statuses: IO
 * (cannot read), FORMAT (not JSON, a missing or bad field, an unsupported component: the
 * message names the file, the field and the value). */
moe_status moe_tokenizer_load(const char *path, moe_tokenizer **out);
void moe_tokenizer_free(moe_tokenizer *t);
/* Highest id + 1 over the model's vocabulary and the added tokens. */
int moe_tokenizer_vocab_size(const moe_tokenizer *t);
/* BOS / EOS ids (tokenizer_config.json, else the post-processor's first special token for BOS
 * and a conventional name -- "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>" -- for EOS);
 * -1 if none. moe_tokenizer_eot: the token that separates documents in training shards (EOS,
 * else BOS, else -1). */
int moe_tokenizer_bos(const moe_tokenizer *t);
int moe_tokenizer_eos(const moe_tokenizer *t);
int moe_tokenizer_eot(const moe_tokenizer *t);
/* FNV-1a 64 of the tokenizer.json bytes as 16 hex digits (shard sidecars name it). */
const char *moe_tokenizer_hash(const moe_tokenizer *t);
/* The token of an id ("" for an id out of range), and the id of a token string (-1 if none). */
const char *moe_tokenizer_token(const moe_tokenizer *t, int id);
int moe_tokenizer_id(const moe_tokenizer *t, const char *token);
/* Bytes of text a token stands for (bits per byte): 0 for special tokens, 1 for a byte token. */
int moe_tokenizer_token_bytes(const moe_tokenizer *t, int id);
/* Encodes len bytes of text, appending ids to *ids (n used, cap allocated; realloc'ed as needed:
 * start with NULL, 0, 0 and free(*ids) when done). add_special: the post-processor's special
 * tokens too (BOS for Llama), as tokenizers' encode(text, add_special_tokens=True). Invalid
 * UTF-8: a byte-level model encodes the bytes as they are; otherwise each maximal invalid
 * subsequence is read as one U+FFFD, as Python's decode('utf-8', 'replace') (tokenizers takes
 * only valid strings). Statuses: NOMEM. */
moe_status moe_tokenizer_encode(const moe_tokenizer *t, const char *text, size_t len, int add_special, int **ids,
                                size_t *n, size_t *cap);
/* Decodes n ids through the decoder into a new NUL-terminated string (*text, the caller's to
 * free; *len its length), as tokenizers' decode(ids, skip_special_tokens). Ids out of range are
 * MOE_STATUS_ARG. */
moe_status moe_tokenizer_decode(const moe_tokenizer *t, const int *ids, size_t n, int skip_special, char **text,
                                size_t *len);

/* ---------------------------------------------------------------- Hugging Face */

/* transformers' default max_shard_size ("5GB"). */
#define MOE_EXPORT_SHARD_BYTES 5000000000LL
/* Writes dir/config.json and the weights (F32, or BF16 when bf16) for a transformers family the
 * model maps onto exactly: family "mixtral" (MixtralForCausalLM: all layers MoE, softmax top-K
 * renormalised, no shared experts), "qwen2_moe" (Qwen2MoeForCausalLM: also dense layers, shared
 * experts, top-K not renormalised), or NULL/"auto" (Mixtral when it maps, else Qwen2-MoE).
 * Otherwise an error naming why. The weights are dir/model.safetensors, or when they pass
 * max_shard_bytes (<= 0: MOE_EXPORT_SHARD_BYTES) shards model-0000k-of-0000n.safetensors of at
 * most that (a larger tensor alone) with model.safetensors.index.json, as save_pretrained
 * writes them. Tensors are made one at a time: the memory used is about the largest tensor (a
 * loaded model's mapped pages are released as they are read). *written (may be NULL) gets the
 * architecture, a static string. Statuses: CONFIG when the model maps onto no family, or not the
 * one asked for; ARG for an unknown family, an expert-parallel model or a dir too long; IO.
 * 0.2: max_shard_bytes; shards. */
moe_status moe_export_hf(const moe_model *m, const char *dir, const char *family, int bf16, int64_t max_shard_bytes,
                         const char **written);

/* The config of the Hugging Face checkpoint in dir (its config.json): MixtralForCausalLM maps
 * onto an all-MoE model (dropless, like Mixtral), LlamaForCausalLM and MistralForCausalLM onto
 * a dense one (moe_layers "none", expert_hidden = ffn_hidden, ready for upcycling). seq_len is
 * max_position_embeddings capped at 4096 and at sliding_window. A field the model cannot
 * represent (biases, rope_scaling, another activation) is an error naming it. Statuses: IO when
 * config.json cannot be read; FORMAT when it is not a JSON object, names another model_type or
 * holds such a field; CONFIG when the config it gives does not validate. */
moe_status moe_hf_config(const char *dir, moe_config *out);
/* Loads the weights of the HF checkpoint in dir (model.safetensors, or every shard that
 * model.safetensors.index.json lists; F32, BF16 or F16) into a new model of config c (from
 * moe_hf_config; keys that do not change shapes may differ), for inference as moe_model_load (no
 * gradients), sized for max_batch. Per-expert
 * tensors are stacked; grouped-query K/V heads are repeated to one per query head (exact).
 * Statuses: moe_hf_config's; IO when dir holds neither weights file; FORMAT for a bad index, an
 * unknown dtype, a tensor of the wrong shape, or an expert missing or given twice;
 * moe_model_create's. */
moe_status moe_hf_load(const char *dir, const moe_config *c, int max_batch, moe_model **out);

/* ---------------------------------------------------------------- init from another model */

typedef struct {
    int copied;    /* tensors copied as they are */
    int upcycled;  /* MoE layers whose experts all start as the source's dense FFN */
    int fresh;     /* tensors with no source counterpart that keep their initialisation (routers) */
} moe_init_report;

/* Initialises dst from src, tensor by tensor: a tensor of the same name and shape is copied;
 * the routed experts of a layer that is dense in src are each a copy of its FFN (sparse
 * upcycling, Komatsuzaki et al. 2022; needs expert_hidden = the source's ffn_hidden); routers
 * (and noise weights, selection biases) missing from src keep dst's initialisation. Any other
 * difference (a shape, a tensor only one side has) is an error naming the tensor
 * (MOE_STATUS_CONFIG), and so is a different vocab_size; models created under different
 * moe_dist_setup (expert parallelism) are MOE_STATUS_ARG; a CUDA src whose weights cannot be
 * copied to the host is MOE_STATUS_DEVICE. report may be NULL; it is filled on success only. */
moe_status moe_model_init_from(moe_model *dst, const moe_model *src, moe_init_report *report);
/* Before the first step of a new run: the weights start from src (moe_model_init_from). Statuses:
 * ARG when the run is past step 0 (a resume); moe_model_init_from's. */
moe_status moe_trainer_init_from(moe_trainer *t, const moe_model *src, moe_init_report *report);
/* Writes the moe checkpoint `out` (a model.safetensors at step 0) of config c from src, a Hugging
 * Face directory (as moe_hf_load reads it) or a moe checkpoint, by moe_model_init_from's rules:
 * tensors of the same name and shape copied, the experts of a layer dense in src each a copy of
 * its FFN, routers (and noise weights, selection biases) fresh, each drawn from a generator seeded
 * by seed and the tensor's index. One tensor at a time: names, shapes and dtypes are checked from
 * the headers before any data is read, and the memory used is about the largest tensor (the
 * source's mapped pages are released as they are read). report may be NULL. Statuses: as
 * moe_hf_load or moe_model_load for src; CONFIG as moe_model_init_from (naming the tensor) and
 * for another vocab_size; IO when out cannot be written (a previous file there stays). */
moe_status moe_import(const char *src, const moe_config *c, uint64_t seed, const char *out, moe_init_report *report);

/* ---------------------------------------------------------------- distributed (MPI) */

/* Starts MPI when this build has it and a launcher (mpirun, srun) started the process (a no-op
 * otherwise); call first in main. Statuses: IO when MPI_Init fails. */
moe_status moe_dist_init(int *argc, char ***argv);
/* Arranges the ranks as a dp x ep grid: ep ranks share each MoE layer's experts (E/ep each),
 * the dp = ranks/ep replicas split the batch. Call before creating models or trainers;
 * collective (every rank calls it). Statuses: ARG when ep does not divide the ranks, or for
 * ep > 1 without MPI or a launcher. */
moe_status moe_dist_setup(int ep);
void moe_dist_finalize(void);
int moe_dist_rank(void);
int moe_dist_size(void);
int moe_dist_available(void);     /* 1 when built with MPI */
/* The largest v over all ranks (collective: every rank calls it); v itself with one process. */
int moe_dist_max_int(int v);
/* Under MPI with several ranks, ends every rank of the job (MPI_Abort) so that none waits in a
 * collective; with one process it returns and the caller exits. */
void moe_dist_abort(int code);


#ifdef __cplusplus
}
#endif

#endif
