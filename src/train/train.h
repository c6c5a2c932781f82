/*
 * train.h — the training side (train/), shared by its files:
 *
 *   trainer.c  create, step and free: each a short sequence of named phases
 *   optim.c    the learning-rate schedule, the gradients of the global batch, the optimizer step
 *   rundir.c   the run directory: state.bin I/O, checkpoints (one process or sharded across
 *              ranks), kept checkpoints and the hints that name them, metrics trimming on resume
 *   metrics.c  the step's metrics.jsonl record and TensorBoard event
 *   eval.c     evaluation on held-out windows
 *   faults.c   numerical faults (locating the first non-finite value on every rank) and the
 *              test hooks that inject faults (MOE_TEST_FAULT, MOE_TEST_FAIL_RANK)
 *   state.c    the state.bin format
 *
 * Not installed.
 */
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include "model/backend.h"
#include "io/io.h"

#include <stdint.h>
#include <stdio.h>

/* ---------------------------------------------------------------- training state (state.bin) */

#define MOE_STATE_VERSION 2u
#define MOE_STATE_HEADER 96
typedef struct {
    int64_t step;        /* optimizer steps done */
    moe__rng rng;        /* data RNG */
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

/* ---------------------------------------------------------------- the trainer */

/* Test hooks read from the environment (faults.c). */
typedef struct {
    int fail_rank;               /* MOE_TEST_FAIL_RANK: this rank fails its 2nd step; -1 = none */
    int64_t fault_step;          /* MOE_TEST_FAULT=STEP:KIND[:TENSOR[@RANK]] injects KIND at STEP; 0 = none */
    char fault_kind[16], fault_tensor[200];
    int fault_rank;              /* with TENSOR@RANK, the rank injected; -1 = every rank */
} moe__test_hooks;

/* The automatic thread count (threads.c). */
#define MOE_TUNER_WINDOW 5       /* recent steps whose median is the reference */
typedef struct {
    int on;                      /* threads=0 on the CPU backend, one rank, more than one core */
    int max, cur;                /* OpenMP's count at the start; the count of the run now */
    int probe;                   /* the count the next step tries (0: none) */
    int toggle;                  /* between the two counts a middle one tries */
    double ring[MOE_TUNER_WINDOW]; /* seconds of the last steps at cur */
    int n;
    double settled;              /* the median at cur when it settled */
    int64_t next, interval;      /* the step of the next probe; steps between probes */
    int forced;                  /* MOE_TEST_THREADS gives the counts instead */
    char force[128];
    char changed[160];           /* after moe__tuner_after: "" or the change and why */
} moe__tuner;

/* on: the count may change; max: OpenMP's count; step: the steps done. */
void moe__tuner_init(moe__tuner *u, int on, int max, int64_t step);
/* After a step (steps done: step) that took seconds: the thread count for the next one. A
 * change of the run's count is described in u->changed. */
int moe__tuner_after(moe__tuner *u, int64_t step, double seconds);

/* Routing statistics of one optimizer step, summed over its micro-batches (and ranks). */
typedef struct {
    int64_t *load;               /* (total_e) per expert, MoE layer after MoE layer */
    int64_t *load_off;           /* (n_moe) offset of each MoE layer in load */
    int64_t total_e;
    int64_t *dropped, *routed;   /* (n_moe) */
    float *maxvio, *dropped_frac;/* (n_moe) of the step, for its record and event */
    double *share;               /* (total_e) each expert's share of its layer's load (TensorBoard) */
} moe__step_stats;

struct moe_trainer {
    moe_config cfg;
    moe_model *m;
    moe_dataset *train, *val;
    char *dir, *model_path, *state_path, *state_next_path, *metrics_path;
    moe__state run;              /* step, data RNG, spike guard: what state.bin keeps besides the moments */
    int *tokens, *targets;       /* (B,T) */
    int64_t *win;                /* (grad_accum * B) window starts of this rank's micro-batches */
    moe__step_stats ss;
    moe__test_hooks hooks;
    FILE *metrics;               /* rank 0 only */
    int lock_fd;                 /* rank 0: the run directory's lock (flock on DIR/.lock), or -1 */
    char *data_change;           /* NULL, or how this resume's data differs from the run's */
    moe__tb *tb;                 /* rank 0 only, with tensorboard on */
    moe__tuner tuner;            /* threads=0: the thread count of each step */
};

/* optim.c */
/* Learning rate of 0-based step: linear warmup, then cosine to lr * min_lr_frac at c->steps. */
float moe__lr_at(const moe_config *c, int64_t step);
/* Sums the gradients of all ranks: experts over the ranks that hold the same experts (the dp
 * group), everything else over all ranks. COLLECTIVE (world). */
void moe__allreduce_grads(moe_model *m);
/* The global gradient norm, then, when it is finite, one clipped AdamW update (0-based step)
 * through the model's backend; *grad_norm gets the norm before clipping. The moments must exist
 * (the backend's optimizer_create). COLLECTIVE (ep group). */
moe_status moe__optimizer_step(moe_model *m, int64_t step, float lr, const moe_config *c, float *grad_norm);

/* events.c: the start or resume record of metrics.jsonl (rank 0), noting a change of data. */
moe_status moe__events_start(moe_trainer *t, int resume);
/* events.c: the record of a change of the automatic thread count (rank 0). */
moe_status moe__events_threads(moe_trainer *t, const char *change);

/* rundir.c */
/* Resume: the state of the checkpoint at model_step into t->run and the model's moments, from
 * state.bin or, when its experts are sharded over `shards` ranks (moe__checkpoint_shards), from
 * the shards that overlap this rank's experts under any ep; state.next.bin when the run was
 * killed inside a save; trims metrics.jsonl.
 * *ckpt_failed: the state itself would not load (the error should name the kept checkpoints). */
moe_status moe__rundir_load_state(moe_trainer *t, int64_t model_step, int shards, int *ckpt_failed);
/* Locks the run directory for the trainer's life: rank 0 takes an flock on DIR/.lock holding its
 * PID (MOE_STATUS_BUSY naming the holder when another process has it; the kernel drops a lock
 * with its process, so a killed run leaves none). COLLECTIVE (world): every rank fails alike. */
moe_status moe__rundir_lock(moe_trainer *t);
/* MOE_STATUS_EXISTS when dir holds a run (model.safetensors or metrics.jsonl), as rank 0 sees
 * it. COLLECTIVE (world). */
moe_status moe__rundir_check_new(const char *dir);
/* Removes a run's files from dir (rank 0): model and state files, metrics, TensorBoard events and
 * kept checkpoints; nothing else in the directory. */
moe_status moe__rundir_clear(const char *dir);
/* A resume that failed on its checkpoint: adds the run's kept checkpoints to the error. */
void moe__rundir_hint(const char *dir, moe_status st);

/* metrics.c */
/* The step's routing statistics: MaxVio and dropped fraction per layer, their summaries in info. */
void moe__metrics_summarise(moe__step_stats *ss, const moe_model *m, moe_step_info *info);
/* Appends the step's record to metrics.jsonl and its TensorBoard event (rank 0; else nothing). */
moe_status moe__metrics_record(moe_trainer *t, const moe_step_info *info);
moe_status moe__metrics_tensorboard(moe_trainer *t, const moe_step_info *info);

/* eval.c */
/* moe_evaluate with caller-provided token and target buffers of batch * seq_len ints, so that
 * the evaluations inside training allocate nothing. */
moe_status moe__evaluate_into(moe_model *m, const moe_dataset *d, int batch, int max_batches, int *tok, int *tgt,
                              float *loss, int64_t *n_tokens, int64_t *loads, int64_t *would_drop);

/* faults.c */
void moe__hooks_read(moe__test_hooks *h);
/* MOE_TEST_FAIL_RANK: the error of this rank's injected failure, or OK. */
moe_status moe__hooks_fail(const moe__test_hooks *h, int64_t step);
/* MOE_TEST_FAULT of kind `kind` due at this step (0-based step about to be taken) on this rank:
 * param_nan and grad_nan poison the named tensor's first element, loss_spike adds 50 to the
 * step's loss. */
void moe__hooks_inject(const moe__test_hooks *h, const char *kind, int64_t step, moe_model *m, moe_step_info *info);
/* Where the first non-finite value is, the same on every rank; returns its kind (0: none).
 * COLLECTIVE (world). */
int moe__locate_nonfinite(moe_model *m, char *where, size_t n);

#endif
