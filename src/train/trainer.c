/*
 * trainer.c — the training loop: random windows of the training tokens, gradient accumulation
 * over micro-batches (and ranks), the optimizer step (optim.c) with the numerical-fault policy,
 * the aux-loss-free bias update, periodic evaluation (eval.c), metrics (metrics.c) and
 * checkpoints (rundir.c). The model runs on its backend (model/backend.h); the trainer reaches
 * it only through that table and the public model functions.
 */
#define _POSIX_C_SOURCE 200809L
#include "train/train.h"
#include "dist/dist.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------- create */

/* The trainer with its datasets and the run directory's paths. */
static moe_status trainer_alloc(const moe_config *c, moe_dataset *train, moe_dataset *val, const char *out_dir,
                                moe_trainer **out) {
    moe_trainer *t = *out = calloc(1, sizeof *t);
    if (!t) {
        moe_dataset_free(train);
        moe_dataset_free(val);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    t->train = train;
    t->val = val;
    t->lock_fd = -1;
    t->cfg = *c;
    t->dir = strdup(out_dir);
    t->model_path = moe__path_join(out_dir, "model.safetensors");
    t->state_path = moe__path_join(out_dir, "state.bin");
    t->state_next_path = moe__path_join(out_dir, "state.next.bin");
    t->metrics_path = moe__path_join(out_dir, "metrics.jsonl");
    if (!t->dir || !t->model_path || !t->state_path || !t->state_next_path || !t->metrics_path)
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    return MOE_STATUS_OK;
}

/* On resume: the checkpoint (read once, for its config now and its weights later) gives the
 * model keys, the caller the training keys. */
static moe_status read_resume_config(moe_trainer *t, const moe_config *c, moe__st_file *ckpt, int64_t *model_step,
                                     int *shards) {
    moe_config saved;
    moe_status st = moe__st_read(t->model_path, ckpt);
    if (st == MOE_STATUS_OK) st = moe__checkpoint_config_of(ckpt, t->model_path, &saved, model_step);
    if (st == MOE_STATUS_OK) st = moe__checkpoint_shards(ckpt, t->model_path, shards);
    if (st != MOE_STATUS_OK) return st;
    if ((st = moe_config_check_model(&saved, c)) != MOE_STATUS_OK)
        return moe__err(st, "resume of '%s': %s", t->dir, moe_last_error());
    moe_config_take_training(&saved, c);
    t->cfg = saved;
    return MOE_STATUS_OK;
}

/* A validation set split off the training data when none was given; both must hold a window. */
static moe_status check_data(moe_trainer *t) {
    const moe_config *c = &t->cfg;
    if (!t->val && moe_dataset_split(t->train, c->val_frac, &t->val) != MOE_STATUS_OK)
        return moe__err(MOE_STATUS_DATA, "cannot split a validation set off %lld training tokens with val_frac %g; give --val-data",
                        (long long)moe_dataset_len(t->train), c->val_frac);
    if (moe_dataset_len(t->train) < c->seq_len + 1)
        return moe__err(MOE_STATUS_DATA, "the training data has %lld tokens, fewer than one sequence of seq_len + 1 = %d",
                        (long long)moe_dataset_len(t->train), c->seq_len + 1);
    if (moe_dataset_len(t->val) < c->seq_len + 1)
        return moe__err(MOE_STATUS_DATA, "the validation data has %lld tokens, fewer than one sequence of seq_len + 1 = %d",
                        (long long)moe_dataset_len(t->val), c->seq_len + 1);
    return MOE_STATUS_OK;
}

/* The model: the checkpoint's weights on resume, else a fresh initialisation; then its AdamW
 * moments. *ckpt_failed: the checkpoint's weights would not load. */
static moe_status create_model(moe_trainer *t, moe__st_file *ckpt, int resume, int *ckpt_failed) {
    const moe_config *c = &t->cfg;
    moe_status st = moe__model_create(c, c->batch_size, MOE__MODEL_OPTIM, &t->m);
    if (resume) {
        if (st == MOE_STATUS_OK) st = moe__model_load_weights(t->m, ckpt, t->model_path);
        moe__st_free(ckpt);
        *ckpt_failed = st == MOE_STATUS_FORMAT || st == MOE_STATUS_IO;
    } else if (st == MOE_STATUS_OK) {
        moe_model_init(t->m, c->seed);
        moe__rng_seed(&t->run.rng, c->seed ^ 0xda7aULL);
    }
    if (st == MOE_STATUS_OK) st = t->m->be->optimizer_create(t->m);
    return st;
}

/* The step's buffers: batch tokens, window starts, routing statistics. */
static moe_status alloc_step(moe_trainer *t) {
    const moe_config *c = &t->cfg;
    moe__step_stats *ss = &t->ss;
    int64_t BT = (int64_t)c->batch_size * c->seq_len;
    int nm = moe_model_n_moe_layers(t->m);
    size_t nl = (size_t)(nm ? nm : 1);
    t->tokens = malloc((size_t)BT * sizeof(int));
    t->targets = malloc((size_t)BT * sizeof(int));
    t->win = malloc((size_t)c->grad_accum * c->batch_size * sizeof(int64_t));
    ss->total_e = moe_model_total_experts(t->m);
    ss->load = calloc((size_t)(ss->total_e ? ss->total_e : 1), sizeof(int64_t));
    ss->load_off = calloc(nl, sizeof(int64_t));
    ss->dropped = calloc(nl, sizeof(int64_t));
    ss->routed = calloc(nl, sizeof(int64_t));
    ss->maxvio = calloc(nl, sizeof(float));
    ss->dropped_frac = calloc(nl, sizeof(float));
    ss->share = calloc((size_t)(ss->total_e ? ss->total_e : 1), sizeof(double));
    if (!t->tokens || !t->targets || !t->win || !ss->load || !ss->load_off || !ss->dropped || !ss->routed ||
        !ss->maxvio || !ss->dropped_frac || !ss->share)
        return moe__err(MOE_STATUS_NOMEM, "cannot allocate the training step's buffers");
    for (int i = 1; i < nm; i++) ss->load_off[i] = ss->load_off[i - 1] + moe_model_layer_stats(t->m, i - 1)->n_experts;
    return MOE_STATUS_OK;
}

/* metrics.jsonl (appended to on resume) and the TensorBoard event file: rank 0 writes the
 * run's files. */
static moe_status open_outputs(moe_trainer *t, int resume) {
    if (moe__dist_get()->rank != 0) return MOE_STATUS_OK;
    t->metrics = fopen(t->metrics_path, resume ? "a" : "w");
    if (!t->metrics) return moe__err(MOE_STATUS_IO, "cannot open '%s': %s", t->metrics_path, strerror(errno));
    return t->cfg.tensorboard ? moe__tb_open(t->dir, t->run.step, &t->tb) : MOE_STATUS_OK;
}

/* threads=N fixes the count; threads=0 starts at OpenMP's and lets the tuner move it (threads.c)
 * on the CPU backend of a single process (a rank's step time would include its peers'). */
static void start_threads(moe_trainer *t) {
    int max = 1;
#ifdef _OPENMP
    max = omp_get_max_threads();
#endif
    int on = t->cfg.threads == 0 && !strcmp(t->m->be->name, "cpu") && moe__dist_get()->size == 1;
    moe__tuner_init(&t->tuner, on, max, t->run.step);
}

moe_status moe_trainer_create(const moe_config *c, moe_dataset *train, moe_dataset *val, const char *out_dir,
                              moe_run_mode mode, moe_trainer **out) {
    *out = NULL;
    int resume = mode == MOE_RUN_RESUME;
    moe_trainer *t;
    moe__st_file ckpt; // on resume, the checkpoint, read once for its config and its weights
    memset(&ckpt, 0, sizeof ckpt);
    int ckpt_failed = 0; // the checkpoint would not load: the error names the kept ones
    int64_t model_step = 0;
    int shards = 0; // the ranks the checkpoint's experts are sharded over (0: none)
    moe_status st = trainer_alloc(c, train, val, out_dir, &t);
    if (!t) return st;
    // own the directory before reading or writing it: a new run makes it first
    if (st == MOE_STATUS_OK && !resume && moe__mkdir_p(out_dir) != 0)
        st = moe__err(MOE_STATUS_IO, "cannot create run directory '%s': %s", out_dir, strerror(errno));
    if (st == MOE_STATUS_OK) st = moe__rundir_lock(t);
    if (st == MOE_STATUS_OK && mode == MOE_RUN_NEW) st = moe__rundir_check_new(out_dir);
    if (st == MOE_STATUS_OK && mode == MOE_RUN_OVERWRITE) st = moe__rundir_clear(out_dir);
    if (st == MOE_STATUS_OK && resume) {
        st = read_resume_config(t, c, &ckpt, &model_step, &shards);
        ckpt_failed = st != MOE_STATUS_OK && st != MOE_STATUS_NOMEM && st != MOE_STATUS_MISMATCH;
    }
    if (st == MOE_STATUS_OK) st = moe_config_validate(&t->cfg);
#ifdef _OPENMP
    if (st == MOE_STATUS_OK && t->cfg.threads > 0) omp_set_num_threads(t->cfg.threads);
#endif
    if (st == MOE_STATUS_OK) st = check_data(t);
    if (st == MOE_STATUS_OK && moe__mkdir_p(out_dir) != 0)
        st = moe__err(MOE_STATUS_IO, "cannot create run directory '%s': %s", out_dir, strerror(errno));
    if (st == MOE_STATUS_OK) st = create_model(t, &ckpt, resume, &ckpt_failed);
    if (st == MOE_STATUS_OK) st = alloc_step(t);
    moe__hooks_read(&t->hooks);
    if (st == MOE_STATUS_OK && resume) st = moe__rundir_load_state(t, model_step, shards, &ckpt_failed);
    if (st == MOE_STATUS_OK) start_threads(t);
    if (st == MOE_STATUS_OK) st = open_outputs(t, resume);
    if (st == MOE_STATUS_OK) st = moe__events_start(t, resume);
    if (st == MOE_STATUS_OK) {
        *out = t;
        return MOE_STATUS_OK;
    }
    if (ckpt_failed) moe__rundir_hint(out_dir, st);
    moe__st_free(&ckpt);
    moe_trainer_free(t);
    return st;
}

void moe_trainer_free(moe_trainer *t) {
    if (!t) return;
    if (t->metrics) fclose(t->metrics);
    if (t->lock_fd >= 0) close(t->lock_fd); // releases the run directory
    free(t->data_change);
    moe__tb_close(t->tb);
    moe_model_free(t->m);
    moe_dataset_free(t->train);
    moe_dataset_free(t->val);
    free(t->tokens);
    free(t->targets);
    free(t->win);
    free(t->ss.load);
    free(t->ss.load_off);
    free(t->ss.dropped);
    free(t->ss.routed);
    free(t->ss.maxvio);
    free(t->ss.dropped_frac);
    free(t->ss.share);
    free(t->dir);
    free(t->model_path);
    free(t->state_path);
    free(t->state_next_path);
    free(t->metrics_path);
    free(t);
}

int64_t moe_trainer_steps_done(const moe_trainer *t) { return t->run.step; }

int moe_trainer_threads_auto(const moe_trainer *t) { return t->tuner.on; }
moe_model *moe_trainer_model(moe_trainer *t) { return t->m; }
const moe_config *moe_trainer_config(const moe_trainer *t) { return &t->cfg; }

moe_status moe_trainer_init_from(moe_trainer *t, const moe_model *src, moe_init_report *report) {
    if (t->run.step > 0)
        return moe__err(MOE_STATUS_ARG, "init from a model: the run is at step %lld; only a new run starts from another model",
                        (long long)t->run.step);
    return moe_model_init_from(t->m, src, report);
}

/* ---------------------------------------------------------------- step */

/* Draws the window starts of one optimizer step: all ranks draw the whole global batch in the
 * same order (micro-batch q = rank * grad_accum + a of the ranks * grad_accum) and keep their
 * own, so the data RNG stays the same everywhere and one process with grad_accum * ranks
 * micro-batches sees the same sequences. */
static void draw_windows(moe_trainer *t) {
    const moe_config *c = &t->cfg;
    const moe__dist *g = moe__dist_get();
    uint64_t span = (uint64_t)(moe_dataset_len(t->train) - c->seq_len); // window starts in [0, n - T - 1]
    int64_t mine = (int64_t)c->grad_accum * c->batch_size;
    for (int r = 0; r < g->size; r++)
        for (int64_t i = 0; i < mine; i++) {
            int64_t off = (int64_t)(moe__rng_u64(&t->run.rng) % span);
            if (r == g->rank) t->win[i] = off;
        }
}

/* Micro-batch micro's windows, read from the training files (DATA naming the file and offset of
 * a token outside the vocabulary). */
static moe_status fill_batch(moe_trainer *t, int micro) {
    const moe_config *c = &t->cfg;
    int T = c->seq_len;
    for (int b = 0; b < c->batch_size; b++) {
        int64_t off = t->win[(int64_t)micro * c->batch_size + b];
        moe_status st = moe__dataset_window(t->train, off, T, t->tokens + b * T, t->targets + b * T);
        if (st != MOE_STATUS_OK) return moe__err(st, "step %lld: training data: %s", (long long)t->run.step + 1, moe_last_error());
    }
    return MOE_STATUS_OK;
}

/* Forward and backward of every micro-batch of this rank: gradients, losses (averaged over the
 * global batch) and routing statistics accumulate. */
static moe_status run_micro_batches(moe_trainer *t, moe_step_info *info, int64_t n_micro) {
    const moe_config *c = &t->cfg;
    moe_model *m = t->m;
    moe__step_stats *ss = &t->ss;
    int nm = moe_model_n_moe_layers(m), rank = moe__dist_get()->rank;
    float inv = 1.0f / (float)n_micro;
    for (int micro = 0; micro < c->grad_accum; micro++) {
        moe_status st = fill_batch(t, micro);
        if (st != MOE_STATUS_OK) return st;
        // noise, jitter and random-routing draws are a function of (seed, global micro-batch
        // index), so a resumed run, or one on another number of ranks, draws the same
        int64_t q = t->run.step * n_micro + (int64_t)rank * c->grad_accum + micro;
        moe__model_set_noise_seed(m, c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)q + 1);
        moe_losses l;
        st = moe_model_forward(m, t->tokens, t->targets, c->batch_size, c->seq_len, 1, &l);
        // a non-finite loss is not an error yet: backward runs (every rank joins the same
        // collectives) and the step's fault check decides, knowing where it came from
        if (st != MOE_STATUS_OK && st != MOE_STATUS_NUMERIC) return st;
        st = moe_model_backward(m, inv);
        if (st != MOE_STATUS_OK) return st;
        info->loss.ce += l.ce * inv;
        info->loss.aux += l.aux * inv;
        info->loss.z += l.z * inv;
        info->loss.seq_aux += l.seq_aux * inv;
        info->loss.importance += l.importance * inv;
        info->loss.load += l.load * inv;
        info->loss.total += l.total * inv;
        for (int i = 0; i < nm; i++) {
            const moe_layer_stats *s = moe_model_layer_stats(m, i);
            for (int e = 0; e < s->n_experts; e++) ss->load[ss->load_off[i] + e] += s->load[e];
            ss->dropped[i] += s->dropped;
            ss->routed[i] += s->assignments;
        }
    }
    return MOE_STATUS_OK;
}

/* Gradients, losses and routing statistics summed over the ranks. COLLECTIVE (world). */
static void reduce_step(moe_trainer *t, moe_step_info *info) {
    if (moe__dist_get()->size == 1) return;
    int nm = moe_model_n_moe_layers(t->m);
    moe__allreduce_grads(t->m);
    double lv[7] = {info->loss.ce, info->loss.aux, info->loss.z, info->loss.seq_aux, info->loss.importance,
                    info->loss.load, info->loss.total};
    moe__dist_allreduce_f64(MOE_COMM_WORLD, lv, 7);
    info->loss.ce = (float)lv[0], info->loss.aux = (float)lv[1], info->loss.z = (float)lv[2];
    info->loss.seq_aux = (float)lv[3], info->loss.importance = (float)lv[4], info->loss.load = (float)lv[5];
    info->loss.total = (float)lv[6];
    moe__dist_allreduce_i64(MOE_COMM_WORLD, t->ss.load, t->ss.total_e);
    moe__dist_allreduce_i64(MOE_COMM_WORLD, t->ss.dropped, nm);
    moe__dist_allreduce_i64(MOE_COMM_WORLD, t->ss.routed, nm);
}

/* A step whose loss or gradient norm is not finite, or whose loss spiked: skipped, or (policy
 * stop, or too many skipped in a row) the run stops with the last good checkpoint saved, unless
 * the weights themselves are poisoned. Returns the error that stops the run, or OK to skip. */
static moe_status handle_fault(moe_trainer *t, moe_step_info *info, int spike, moe__rng rng_before) {
    const moe_config *c = &t->cfg;
    char where[224] = "nowhere";
    int kind = 0;
    if (spike)
        snprintf(info->fault, sizeof info->fault, "loss spike: %.4f is above %g x the running mean %.4f", info->loss.ce,
                 c->loss_spike_factor, t->run.loss_ema);
    else {
        kind = moe__locate_nonfinite(t->m, where, sizeof where);
        snprintf(info->fault, sizeof info->fault, "%s is not finite; first non-finite value: %s",
                 !isfinite(info->loss.total) ? "the loss" : "the gradient norm", where);
    }
    if (c->nonfinite_policy == MOE_FAULT_STOP || ++t->run.skipped_run >= c->max_skipped_steps) {
        int poisoned = kind == MOE_NONFINITE_PARAM; // the weights themselves: do not save them
        t->run.rng = rng_before;
        moe_status sv = poisoned ? MOE_STATUS_OK : moe_trainer_save(t);
        char why[64] = "nonfinite_policy=stop";
        if (c->nonfinite_policy == MOE_FAULT_SKIP) snprintf(why, sizeof why, "%d steps in a row skipped", t->run.skipped_run);
        if (sv != MOE_STATUS_OK) return sv;
        return moe__err(MOE_STATUS_NUMERIC, "step %lld: %s; stopped (%s)%s", (long long)t->run.step + 1, info->fault, why,
                        poisoned ? "; the weights are not finite, so no checkpoint was written over the last one"
                                 : "; the checkpoint holds the last good step");
    }
    info->skipped = 1; // skip: no update, the step still counts (schedule and data go on)
    return MOE_STATUS_OK;
}

/* The optimizer phase: gradient norm, the fault check (loss and gradients are global here, so
 * every rank decides alike), then AdamW and the spike guard's running mean. */
static moe_status update(moe_trainer *t, moe_step_info *info, float lr, moe__rng rng_before) {
    const moe_config *c = &t->cfg;
    moe_model *m = t->m;
    double t_opt = moe__now();
    float norm = m->be->grad_norm(m);
    info->grad_norm = norm;
    int spike = c->loss_spike_factor > 0 && t->run.ema_n >= 20 && info->loss.ce > c->loss_spike_factor * t->run.loss_ema;
    if (!isfinite(info->loss.total) || !isfinite(norm) || spike) {
        moe_status st = handle_fault(t, info, spike, rng_before);
        if (st != MOE_STATUS_OK) return st;
    } else {
        t->run.skipped_run = 0;
        t->run.loss_ema = t->run.ema_n ? 0.99 * t->run.loss_ema + 0.01 * info->loss.ce : info->loss.ce;
        t->run.ema_n++;
        m->be->adamw(m, t->run.step, lr, c, norm);
    }
    moe__model_prof(m)[MOE_PHASE_OPTIMIZER] += moe__now() - t_opt;
    return MOE_STATUS_OK;
}

/* After the update: timing and traffic in info, evaluation when due, the record and event,
 * the checkpoint when due. */
static moe_status finish_step(moe_trainer *t, moe_step_info *info, double t0, int64_t n_micro) {
    const moe_config *c = &t->cfg;
    const moe__dist *g = moe__dist_get();
    double dt = moe__now() - t0;
    info->step = t->run.step;
    info->step_ms = dt * 1e3;
    info->tokens_per_s = (double)n_micro * c->batch_size * c->seq_len / dt;
#ifdef _OPENMP
    info->threads = omp_get_max_threads();
    int next = moe__tuner_after(&t->tuner, t->run.step, dt);
    if (next != info->threads) omp_set_num_threads(next);
#else
    info->threads = 1;
#endif
    if (t->tuner.changed[0]) {
        snprintf(info->threads_change, sizeof info->threads_change, "%s", t->tuner.changed);
        moe_status st = moe__events_threads(t, info->threads_change);
        if (st != MOE_STATUS_OK) return st;
    }
    info->a2a_bytes = g->a2a_bytes, info->allreduce_bytes = g->ar_bytes;
    info->a2a_s = g->a2a_s, info->allreduce_s = g->ar_s;
    int last = t->run.step >= c->steps;
    if ((c->eval_every > 0 && t->run.step % c->eval_every == 0) || last) {
        moe_status st = moe__evaluate_into(t->m, t->val, c->batch_size, c->eval_batches, t->tokens, t->targets,
                                           &info->val_loss, NULL, NULL, NULL);
        if (st != MOE_STATUS_OK) return st;
        info->has_val = 1;
    }
    moe_status rec = moe__metrics_record(t, info); // reported after the checkpoint, which matters more
    moe_status tb = moe__metrics_tensorboard(t, info);
    if (tb == MOE_STATUS_OK) tb = rec;
    if ((c->ckpt_every > 0 && t->run.step % c->ckpt_every == 0) || last) {
        moe_status st = moe_trainer_save(t);
        if (st != MOE_STATUS_OK) return st;
    }
    return tb;
}

moe_status moe_trainer_step(moe_trainer *t, moe_step_info *info) {
    const moe_config *c = &t->cfg;
    moe_model *m = t->m;
    moe__step_stats *ss = &t->ss;
    double t0 = moe__now();
    int nm = moe_model_n_moe_layers(m);
    memset(info, 0, sizeof *info);
    memset(ss->load, 0, (size_t)ss->total_e * sizeof(int64_t));
    memset(ss->dropped, 0, (size_t)(nm ? nm : 1) * sizeof(int64_t));
    memset(ss->routed, 0, (size_t)(nm ? nm : 1) * sizeof(int64_t));
    moe_model_zero_grad(m);
    moe__dist_reset_counters();
    int64_t n_micro = (int64_t)c->grad_accum * moe__dist_get()->size; // micro-batches of the global batch
    moe_status st = moe__hooks_fail(&t->hooks, t->run.step);
    if (st != MOE_STATUS_OK) return st;
    moe__hooks_inject(&t->hooks, "param_nan", t->run.step, m, info);
    moe__rng rng_before = t->run.rng; // a step that stops the run is not taken: its draw neither
    draw_windows(t);
    st = run_micro_batches(t, info, n_micro);
    if (st != MOE_STATUS_OK) {
        t->run.rng = rng_before; // the step was not taken
        return st;
    }
    // injected before the reductions, so that one rank's fault (TENSOR@RANK) reaches all as a real one would
    moe__hooks_inject(&t->hooks, "grad_nan", t->run.step, m, info);
    moe__hooks_inject(&t->hooks, "loss_spike", t->run.step, m, info);
    reduce_step(t, info);
    info->lr = moe__lr_at(c, t->run.step);
    st = update(t, info, info->lr, rng_before);
    if (st != MOE_STATUS_OK) return st;
    moe__metrics_summarise(ss, m, info);
    // DeepSeek-V3 aux-loss-free balancing: once per optimizer step, from the training loads of
    // all its micro-batches (and ranks)
    if (c->bias_update_rate > 0.0f && !info->skipped) m->be->bias_update(m, ss->load, c->bias_update_rate);
    t->run.step++;
    return finish_step(t, info, t0, n_micro);
}
