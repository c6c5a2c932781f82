/*
 * trainer.c — the training loop: random windows of the training tokens, gradient accumulation,
 * global-norm clipping (as torch.nn.utils.clip_grad_norm_), AdamW with decoupled weight decay
 * (as torch.optim.AdamW; none on norms) and per-group learning-rate multipliers, linear warmup
 * then cosine decay to a floor, periodic evaluation and checkpoints, metrics.jsonl records.
 *
 * Run directory: model.safetensors (weights, config, step), state.bin (optimizer moments, step,
 * data RNG; checksummed), metrics.jsonl (one record per step, schema in docs/metrics.md).
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <dirent.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#ifdef _OPENMP
#include <omp.h>
#endif


struct moe_trainer {
    moe_config cfg;
    moe_model *m;
    moe_dataset *train, *val;
    char *dir, *model_path, *state_path, *state_next_path, *metrics_path;
    float *opt;                  /* 2P floats: AdamW first and second moments */
    moe__state run;              /* step, data RNG, spike guard: what state.bin keeps besides the moments */
    int *tokens, *targets;       /* (B,T) */
    int64_t *load_acc;           /* (sum of E over MoE layers) over the micro-batches of a step */
    int64_t *load_off;           /* (n_moe) offset of each MoE layer in load_acc */
    int64_t total_e;             /* length of load_acc */
    int64_t *dropped_acc;        /* (n_moe) */
    int64_t *routed_acc;         /* (n_moe) */
    float *layer_maxvio;         /* (n_moe) of the step, for its record and event */
    float *layer_dropped;        /* (n_moe) dropped / routed assignments of the step */
    int64_t *win;                /* (grad_accum * B) window starts of this rank's micro-batches */
    int fail_rank;               /* tests: MOE_TEST_FAIL_RANK makes this rank fail its 2nd step; -1 */
    int64_t fault_step;          /* tests: MOE_TEST_FAULT=STEP:KIND[:TENSOR[@RANK]] injects KIND at STEP; 0 = none */
    char fault_kind[16], fault_tensor[200];
    int fault_rank;              /* tests: with TENSOR@RANK, the rank injected; -1 = every rank */
    FILE *metrics;               /* rank 0 only */
    moe__tb *tb;                 /* rank 0 only, with tensorboard on */
};

/* mkdir -p: creates dir and its missing parents; 0 or -1 with errno. */
static int mkdir_p(const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

float moe__lr_at(const moe_config *c, int64_t step) {
    // step is 0-based: the step about to be taken
    if (step < c->warmup_steps) return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    double lo = (double)c->lr * c->min_lr_frac;
    int64_t span = c->steps - c->warmup_steps;
    double progress = span > 0 ? (double)(step - c->warmup_steps) / (double)span : 1.0;
    if (progress > 1.0) progress = 1.0;
    return (float)(lo + 0.5 * ((double)c->lr - lo) * (1.0 + cos(3.14159265358979323846 * progress)));
}

/* ---------------------------------------------------------------- state file */

static moe_status save_state(moe_trainer *t, const char *path) {
    int64_t P = moe_model_n_params(t->m);
    char head[MOE_STATE_HEADER];
    size_t hl = moe__state_header(&t->run, P, head);
    size_t opt_bytes = (size_t)P * 2 * sizeof(float);
    uint64_t sum = moe__fnv1a(MOE_FNV_INIT, head, hl);
    sum = moe__fnv1a(sum, t->opt, opt_bytes);
    const void *parts[] = {head, t->opt, &sum};
    size_t lens[] = {hl, opt_bytes, sizeof sum};
    return moe__write_atomic(path, parts, lens, 3);
}

static moe_status load_state(moe_trainer *t, const char *path, int64_t model_step) {
    size_t len;
    char *buf = moe__read_file(path, &len);
    if (!buf) {
        if (moe__dist_get()->ep > 1)
            return moe__err(MOE_STATUS_IO, "cannot read '%s': resuming needs the --ep of the run that wrote the checkpoint",
                            path);
        return MOE_STATUS_IO;
    }
    int64_t P = moe_model_n_params(t->m);
    moe__state s;
    const void *opt;
    moe_status st = moe__state_parse(buf, len, path, P, &s, &opt);
    if (st == MOE_STATUS_OK && s.step != model_step)
        st = moe__err(MOE_STATUS_FORMAT, "'%s' is at step %lld but model.safetensors is at step %lld", path,
                      (long long)s.step, (long long)model_step);
    if (st == MOE_STATUS_OK) {
        t->run = s;
        memcpy(t->opt, opt, (size_t)P * 2 * sizeof(float));
    }
    free(buf);
    return st;
}

/* Keeps the metrics records up to the resumed step, so a resumed run has one record per step. */
static moe_status trim_metrics(moe_trainer *t) {
    size_t len;
    if (access(t->metrics_path, F_OK) != 0) return MOE_STATUS_OK; // none yet
    char *buf = moe__read_file(t->metrics_path, &len);
    if (!buf) return MOE_STATUS_IO;
    size_t keep = 0;
    for (char *line = buf; *line;) {
        char *nl = strchr(line, '\n');
        if (!nl) break; // a torn last line is dropped
        *nl = 0;
        cJSON *o = cJSON_Parse(line);
        cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "step");
        int ok = cJSON_IsNumber(s) && s->valuedouble <= (double)t->run.step;
        cJSON_Delete(o);
        *nl = '\n';
        if (!ok) break;
        keep = (size_t)(nl + 1 - buf);
        line = nl + 1;
    }
    const void *parts[] = {buf};
    size_t lens[] = {keep};
    moe_status st = keep == len ? MOE_STATUS_OK : moe__write_atomic(t->metrics_path, parts, lens, 1); // only to trim
    free(buf);
    return st;
}

/* Orders "step-N" names by N (names of 9 or more digits sort wrongly as text). */
static int by_step(const void *a, const void *b) {
    long long x = strtoll(*(char *const *)a + 5, NULL, 10), y = strtoll(*(char *const *)b + 5, NULL, 10);
    return (x > y) - (x < y);
}

/* The kept checkpoints' names (step-N) in DIR/checkpoints, oldest first; *n gets their count.
 * NULL when there are none or the directory cannot be read. Free with free_list. */
static char **list_snapshots(const char *base, int *n) {
    *n = 0;
    DIR *d = opendir(base);
    if (!d) return NULL;
    char **list = NULL;
    int cap = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strncmp(e->d_name, "step-", 5)) continue;
        if (*n == cap) {
            char **l = realloc(list, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *l);
            if (!l) break;
            list = l;
        }
        if (!(list[*n] = strdup(e->d_name))) break;
        ++*n;
    }
    closedir(d);
    if (*n) qsort(list, (size_t)*n, sizeof *list, by_step);
    return list;
}

static void free_list(char **list, int n) {
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
}

/* A resume that failed on its checkpoint, in a run with keep_checkpoints: the message names the
 * two newest kept checkpoints that are not the failed files themselves (the newest is a hard
 * link to them), and how to go back to one without writing through those links. */
static void hint_snapshots(const char *dir, moe_status st) {
    char base[4200], path[4400];
    const char *best[2] = {NULL, NULL};
    snprintf(base, sizeof base, "%s/checkpoints", dir);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    struct stat cur, sb;
    int have_cur = stat(path, &cur) == 0, n, k = 0;
    char **list = list_snapshots(base, &n);
    for (int i = n - 1; i >= 0 && k < 2; i--) {
        snprintf(path, sizeof path, "%s/%s/model.safetensors", base, list[i]);
        if (stat(path, &sb) == 0 && !(have_cur && sb.st_ino == cur.st_ino && sb.st_dev == cur.st_dev)) best[k++] = list[i];
    }
    if (k) {
        char first[1024];
        snprintf(first, sizeof first, "%s", moe_last_error());
        moe__err(st, "%s; kept checkpoints in %s/, newest first: %s%s%s...; to resume from one: cp --remove-destination %s/%s/* %s/ "
                     "(--remove-destination: the run's files are hard links to a kept checkpoint)",
                 first, base, best[0], k > 1 ? ", " : "", k > 1 ? best[1] : "", base, best[0], dir);
    }
    free_list(list, n);
}

moe_status moe_run_config(const char *dir, moe_config *out) {
    char *path = join(dir, "model.safetensors");
    if (!path) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    moe_status st = moe_checkpoint_config(path, out, NULL);
    if (st != MOE_STATUS_OK) hint_snapshots(dir, st);
    free(path);
    return st;
}

/* ---------------------------------------------------------------- create */

moe_status moe_trainer_create(const moe_config *c, moe_dataset *train, moe_dataset *val, const char *out_dir,
                              int resume, moe_trainer **out) {
    *out = NULL;
    moe_status st = MOE_STATUS_OK;
    moe__st_file ckpt; // on resume, the checkpoint, read once for its config and its weights
    int ckpt_failed = 0; // the checkpoint would not load: the error names the kept ones
    memset(&ckpt, 0, sizeof ckpt);
    moe_trainer *t = calloc(1, sizeof *t);
    if (!t) {
        moe_dataset_free(train);
        moe_dataset_free(val);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    t->train = train;
    t->val = val;
    t->cfg = *c;
    t->dir = strdup(out_dir);
    t->model_path = join(out_dir, "model.safetensors");
    t->state_path = join(out_dir, "state.bin");
    t->state_next_path = join(out_dir, "state.next.bin");
    t->metrics_path = join(out_dir, "metrics.jsonl");
    if (!t->dir || !t->model_path || !t->state_path || !t->state_next_path || !t->metrics_path) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory");
        goto fail;
    }
    int64_t model_step = 0;
    if (resume) {
        moe_config saved;
        st = moe__st_read(t->model_path, &ckpt);
        if (st == MOE_STATUS_OK) st = moe__checkpoint_config_of(&ckpt, t->model_path, &saved, &model_step);
        ckpt_failed = st != MOE_STATUS_OK && st != MOE_STATUS_NOMEM;
        if (st != MOE_STATUS_OK) goto fail;
        moe_config_take_training(&saved, c); // model from the checkpoint, training keys from the caller
        t->cfg = saved;
    }
    st = moe_config_validate(&t->cfg);
    if (st != MOE_STATUS_OK) goto fail;
    c = &t->cfg;
#ifdef _OPENMP
    if (c->threads > 0) omp_set_num_threads(c->threads);
#endif
    if (!t->val) {
        st = moe_dataset_split(t->train, c->val_frac, &t->val);
        if (st != MOE_STATUS_OK) {
            st = moe__err(MOE_STATUS_DATA, "cannot split a validation set off %lld training tokens with val_frac %g; give --val-data",
                          (long long)moe_dataset_len(t->train), c->val_frac);
            goto fail;
        }
    }
    if (moe_dataset_len(t->train) < c->seq_len + 1) {
        st = moe__err(MOE_STATUS_DATA, "the training data has %lld tokens, fewer than one sequence of seq_len + 1 = %d",
                      (long long)moe_dataset_len(t->train), c->seq_len + 1);
        goto fail;
    }
    if (moe_dataset_len(t->val) < c->seq_len + 1) {
        st = moe__err(MOE_STATUS_DATA, "the validation data has %lld tokens, fewer than one sequence of seq_len + 1 = %d",
                      (long long)moe_dataset_len(t->val), c->seq_len + 1);
        goto fail;
    }
    if (mkdir_p(out_dir) != 0) {
        st = moe__err(MOE_STATUS_IO, "cannot create run directory '%s': %s", out_dir, strerror(errno));
        goto fail;
    }
    if (resume) {
        st = moe_model_create(c, c->batch_size, &t->m);
        if (st == MOE_STATUS_OK) st = moe__model_load_weights(t->m, &ckpt, t->model_path);
        moe__st_free(&ckpt);
        ckpt_failed = st == MOE_STATUS_FORMAT || st == MOE_STATUS_IO;
        if (st != MOE_STATUS_OK) goto fail;
    } else {
        st = moe_model_create(c, c->batch_size, &t->m);
        if (st != MOE_STATUS_OK) goto fail;
        moe_model_init(t->m, c->seed);
        moe__rng_seed(&t->run.rng, c->seed ^ 0xda7aULL);
    }
    int64_t P = moe_model_n_params(t->m), BT = (int64_t)c->batch_size * c->seq_len;
    int nm = moe_model_n_moe_layers(t->m);
    t->opt = moe__calloc((size_t)P * 2 * sizeof(float));
    t->tokens = malloc((size_t)BT * sizeof(int));
    t->win = malloc((size_t)c->grad_accum * c->batch_size * sizeof(int64_t));
    // fault injection for the tests: MOE_TEST_FAIL_RANK=r makes rank r fail its second step
    t->fail_rank = getenv("MOE_TEST_FAIL_RANK") ? atoi(getenv("MOE_TEST_FAIL_RANK")) : -1;
    // MOE_TEST_FAULT=STEP:grad_nan|param_nan:TENSOR[@RANK] or STEP:loss_spike (numerical fault tests)
    if (getenv("MOE_TEST_FAULT")) {
        long long fs = 0;
        if (sscanf(getenv("MOE_TEST_FAULT"), "%lld:%15[a-z_]:%199s", &fs, t->fault_kind, t->fault_tensor) >= 2)
            t->fault_step = fs;
        char *at = strchr(t->fault_tensor, '@'); // TENSOR@RANK: on that rank only
        t->fault_rank = at ? atoi(at + 1) : -1;
        if (at) *at = 0;
    }
    t->targets = malloc((size_t)BT * sizeof(int));
    int64_t total_e = 0;
    t->load_off = calloc((size_t)(nm ? nm : 1), sizeof(int64_t));
    for (int i = 0; i < nm && t->load_off; i++) {
        t->load_off[i] = total_e;
        total_e += moe_model_layer_stats(t->m, i)->n_experts;
    }
    t->total_e = total_e;
    t->load_acc = calloc((size_t)(total_e ? total_e : 1), sizeof(int64_t));
    t->dropped_acc = calloc((size_t)(nm ? nm : 1), sizeof(int64_t));
    t->routed_acc = calloc((size_t)(nm ? nm : 1), sizeof(int64_t));
    t->layer_maxvio = calloc((size_t)(nm ? nm : 1), sizeof(float));
    t->layer_dropped = calloc((size_t)(nm ? nm : 1), sizeof(float));
    if (!t->opt || !t->tokens || !t->targets || !t->win || !t->load_acc || !t->dropped_acc || !t->load_off || !t->routed_acc ||
        !t->layer_maxvio || !t->layer_dropped) {
        st = moe__err(MOE_STATUS_NOMEM, "cannot allocate optimizer state for %lld parameters", (long long)P);
        goto fail;
    }
    const moe__dist *g = moe__dist_get();
    if (resume) {
        char shard[4200];
        if (g->ep > 1) moe__shard_name(shard, sizeof shard, t->dir, "state", g->ep_rank, g->ep, model_step);
        st = load_state(t, g->ep > 1 ? shard : t->state_path, model_step);
        if (st != MOE_STATUS_OK && g->ep == 1) {
            // killed between committing model.safetensors and renaming state.next.bin over
            // state.bin (moe_trainer_save): the state of the model's step is the next one
            char first[1024];
            snprintf(first, sizeof first, "%s", moe_last_error());
            int probe = access(t->state_next_path, F_OK) == 0;
            st = probe ? load_state(t, t->state_next_path, model_step) : st;
            if (st == MOE_STATUS_OK && g->rank == 0 && rename(t->state_next_path, t->state_path) != 0)
                st = moe__err(MOE_STATUS_IO, "cannot rename '%s' to '%s': %s", t->state_next_path, t->state_path,
                              strerror(errno));
            if (st != MOE_STATUS_OK && probe) st = moe__err(st, "%s (and %s)", first, moe_last_error());
            else if (st != MOE_STATUS_OK) st = moe__err(st, "%s", first);
        }
        ckpt_failed = st == MOE_STATUS_FORMAT || (st == MOE_STATUS_IO && g->ep == 1); // the state did not load
        if (st == MOE_STATUS_OK && g->rank == 0) st = trim_metrics(t);
        if (st != MOE_STATUS_OK) goto fail;
    }
    if (g->rank == 0) t->metrics = fopen(t->metrics_path, resume ? "a" : "w"); // one writer of the run's files
    if (g->rank == 0 && !t->metrics) {
        st = moe__err(MOE_STATUS_IO, "cannot open '%s': %s", t->metrics_path, strerror(errno));
        goto fail;
    }
    if (g->rank == 0 && t->cfg.tensorboard && (st = moe__tb_open(t->dir, t->run.step, &t->tb)) != MOE_STATUS_OK) goto fail;
    *out = t;
    return MOE_STATUS_OK;
fail:
    if (ckpt_failed) hint_snapshots(out_dir, st);
    moe__st_free(&ckpt);
    moe_trainer_free(t);
    return st;
}

void moe_trainer_free(moe_trainer *t) {
    if (!t) return;
    if (t->metrics) fclose(t->metrics);
    moe__tb_close(t->tb);
    moe_model_free(t->m);
    moe_dataset_free(t->train);
    moe_dataset_free(t->val);
    free(t->opt);
    free(t->tokens);
    free(t->targets);
    free(t->win);
    free(t->load_acc);
    free(t->load_off);
    free(t->dropped_acc);
    free(t->routed_acc);
    free(t->layer_maxvio);
    free(t->layer_dropped);
    free(t->dir);
    free(t->model_path);
    free(t->state_path);
    free(t->state_next_path);
    free(t->metrics_path);
    free(t);
}

int64_t moe_trainer_steps_done(const moe_trainer *t) { return t->run.step; }
moe_model *moe_trainer_model(moe_trainer *t) { return t->m; }
const moe_config *moe_trainer_config(const moe_trainer *t) { return &t->cfg; }

moe_status moe_trainer_init_from(moe_trainer *t, const moe_model *src, moe_init_report *report) {
    if (t->run.step > 0)
        return moe__err(MOE_STATUS_ARG, "init from a model: the run is at step %lld; only a new run starts from another model",
                        (long long)t->run.step);
    return moe_model_init_from(t->m, src, report);
}

/* Removes this rank's shard files of other steps (after a newer set was committed). */
static void remove_old_shards(const char *dir, int j, int ep, int64_t step) {
    DIR *d = opendir(dir);
    if (!d) return;
    char keep_e[4200], keep_s[4200], pre_e[64], pre_s[64];
    moe__shard_name(keep_e, sizeof keep_e, ".", "experts", j, ep, step);
    moe__shard_name(keep_s, sizeof keep_s, ".", "state", j, ep, step);
    snprintf(pre_e, sizeof pre_e, "experts-%d-of-%d.step", j, ep);
    snprintf(pre_s, sizeof pre_s, "state-%d-of-%d.step", j, ep);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        if (strncmp(n, pre_e, strlen(pre_e)) && strncmp(n, pre_s, strlen(pre_s))) continue;
        if (!strcmp(n, keep_e + 2) || !strcmp(n, keep_s + 2)) continue;
        char *path = join(dir, n);
        if (path) unlink(path);
        free(path);
    }
    closedir(d);
}

/* Removes dir and the plain files in it. */
static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = join(dir, e->d_name);
        if (p) unlink(p);
        free(p);
    }
    closedir(d);
    rmdir(dir);
}

/* keep_checkpoints: hard links of the just-committed checkpoint's files in
 * DIR/checkpoints/step-SSSSSSSS (each is a complete checkpoint directory: eval, sample, or copy
 * back to resume from it), then all but the newest keep_checkpoints of them removed. The files
 * are replaced by rename on every save, so a link keeps its step's content. Rank 0. */
static moe_status keep_snapshot(moe_trainer *t, int ep) {
    char base[4200], snap[4300], src[4400], dst[4600];
    snprintf(base, sizeof base, "%s/checkpoints", t->dir);
    snprintf(snap, sizeof snap, "%s/step-%08lld", base, (long long)t->run.step);
    if (mkdir_p(snap) != 0) return moe__err(MOE_STATUS_IO, "cannot create '%s': %s", snap, strerror(errno));
    const char *names[3] = {"model.safetensors", ep == 1 ? "state.bin" : NULL, NULL};
    for (int i = 0; i < 2 && names[i]; i++) {
        snprintf(src, sizeof src, "%s/%s", t->dir, names[i]);
        snprintf(dst, sizeof dst, "%s/%s", snap, names[i]);
        unlink(dst);
        if (link(src, dst) != 0) return moe__err(MOE_STATUS_IO, "cannot link '%s' to '%s': %s", src, dst, strerror(errno));
    }
    for (int j = 0; ep > 1 && j < ep; j++)
        for (int k = 0; k < 2; k++) {
            moe__shard_name(src, sizeof src, t->dir, k ? "state" : "experts", j, ep, t->run.step);
            moe__shard_name(dst, sizeof dst, snap, k ? "state" : "experts", j, ep, t->run.step);
            unlink(dst);
            if (link(src, dst) != 0)
                return moe__err(MOE_STATUS_IO, "cannot link '%s' to '%s': %s", src, dst, strerror(errno));
        }
    // the newest keep_checkpoints stay
    int n;
    char **list = list_snapshots(base, &n);
    for (int i = 0; i < n - t->cfg.keep_checkpoints; i++) {
        snprintf(snap, sizeof snap, "%s/%s", base, list[i]);
        remove_dir(snap);
    }
    free_list(list, n);
    return MOE_STATUS_OK;
}

/* A checkpoint of a multi-rank run. With ep = 1, rank 0 writes model.safetensors and
 * state.bin as one process does. With ep > 1 each rank of the first replica writes what it
 * owns (its experts, its AdamW moments) under names carrying the step; when every rank has
 * succeeded, rank 0 writes model.safetensors, which names the step: that rename commits the set.
 * Until then the previous model.safetensors and its shards are untouched; after it, older
 * shards are removed. COLLECTIVE (world). */
moe_status moe_trainer_save(moe_trainer *t) {
    const moe__dist *g = moe__dist_get();
    moe_status st = MOE_STATUS_OK;
    if (g->ep == 1) {
        // state.next.bin first, then model.safetensors (the commit: its step names the
        // checkpoint), then state.next.bin renamed over state.bin. Killed anywhere, the directory
        // holds a model and a state of the same step (resume looks at state.next.bin too).
        if (g->rank == 0) {
            st = save_state(t, t->state_next_path);
            if (st == MOE_STATUS_OK) st = moe_model_save(t->m, t->model_path, t->run.step);
            if (st == MOE_STATUS_OK && rename(t->state_next_path, t->state_path) != 0)
                st = moe__err(MOE_STATUS_IO, "cannot rename '%s' to '%s': %s", t->state_next_path, t->state_path,
                              strerror(errno));
        }
        if (!moe__dist_min_int(st == MOE_STATUS_OK) && st == MOE_STATUS_OK)
            st = moe__err(MOE_STATUS_IO, "checkpoint at step %lld: rank 0 could not write it", (long long)t->run.step);
        if (st == MOE_STATUS_OK && g->rank == 0 && t->cfg.keep_checkpoints > 0) st = keep_snapshot(t, 1);
        return st;
    }
    char ex[4200], sp[4200];
    if (g->dp_rank == 0) {
        moe__shard_name(ex, sizeof ex, t->dir, "experts", g->ep_rank, g->ep, t->run.step);
        moe__shard_name(sp, sizeof sp, t->dir, "state", g->ep_rank, g->ep, t->run.step);
        st = moe__model_save_experts(t->m, ex, t->run.step);
        if (st == MOE_STATUS_OK) st = save_state(t, sp);
    }
    if (!moe__dist_min_int(st == MOE_STATUS_OK))
        return st != MOE_STATUS_OK ? st
                                   : moe__err(MOE_STATUS_IO, "checkpoint at step %lld: another rank could not write its shard; the previous checkpoint is kept",
                                              (long long)t->run.step);
    if (g->rank == 0) st = moe__model_save_replicated(t->m, t->model_path, t->run.step, g->ep);
    if (!moe__dist_min_int(st == MOE_STATUS_OK))
        return st != MOE_STATUS_OK ? st
                                   : moe__err(MOE_STATUS_IO, "checkpoint at step %lld: rank 0 could not commit it", (long long)t->run.step);
    if (g->rank == 0 && t->cfg.keep_checkpoints > 0) st = keep_snapshot(t, g->ep); // before old shards go
    if (g->dp_rank == 0) remove_old_shards(t->dir, g->ep_rank, g->ep, t->run.step);
    return st;
}

/* ---------------------------------------------------------------- evaluation */

int64_t moe_model_total_experts(const moe_model *m) {
    int64_t n = 0;
    for (int i = 0; i < moe_model_n_moe_layers(m); i++) n += moe_model_layer_stats(m, i)->n_experts;
    return n;
}

/* moe_evaluate with caller-provided token and target buffers of batch * seq_len ints, so that
 * the evaluations inside training allocate nothing. */
static moe_status evaluate_into(moe_model *m, const moe_dataset *d, int batch, int max_batches, int *tok, int *tgt,
                                float *loss, int64_t *n_tokens, int64_t *loads, int64_t *would_drop) {
    const moe_config *c = moe_model_config(m);
    int T = c->seq_len, nm = moe_model_n_moe_layers(m);
    int64_t n = moe_dataset_len(d), avail = (n - 1) / T, windows = avail;
    if (windows < 1)
        return moe__err(MOE_STATUS_DATA, "evaluation data has %lld tokens, fewer than seq_len + 1 = %d", (long long)n, T + 1);
    if (max_batches > 0 && windows > (int64_t)max_batches * batch) windows = (int64_t)max_batches * batch;
    // when only some windows are evaluated, spread them evenly over the data (window i starts
    // at window floor(i * avail / windows)), so a mixed validation set is sampled throughout
    if (loads) memset(loads, 0, (size_t)moe_model_total_experts(m) * sizeof(int64_t));
    if (would_drop) *would_drop = 0;
    const uint16_t *src = moe_dataset_tokens(d);
    double total = 0.0;
    moe_status st = MOE_STATUS_OK;
    double prof[MOE_PHASE_COUNT]; // evaluation is not training time: keep it out of the profile
    moe_model_profile(m, prof);
    for (int64_t w0 = 0; w0 < windows; w0 += batch) {
        int B = windows - w0 < batch ? (int)(windows - w0) : batch;
        for (int b = 0; b < B; b++) {
            int64_t start = (w0 + b) * avail / windows * T;
            for (int i = 0; i < T; i++) {
                tok[b * T + i] = src[start + i];
                tgt[b * T + i] = src[start + i + 1];
            }
        }
        moe_losses l;
        st = moe_model_forward(m, tok, tgt, B, T, 0, &l);
        if (st != MOE_STATUS_OK) break;
        total += (double)l.ce * B * T;
        for (int i = 0, off = 0; i < nm; i++) {
            const moe_layer_stats *s = moe_model_layer_stats(m, i);
            if (loads)
                for (int e = 0; e < s->n_experts; e++) loads[off + e] += s->load[e];
            off += s->n_experts;
            if (would_drop) *would_drop += s->would_drop;
        }
    }
    memcpy(moe__model_prof(m), prof, sizeof prof);
    if (st != MOE_STATUS_OK) return st;
    *loss = (float)(total / ((double)windows * T));
    if (n_tokens) *n_tokens = windows * T;
    return MOE_STATUS_OK;
}

moe_status moe_evaluate(moe_model *m, const moe_dataset *d, int batch, int max_batches, float *loss,
                        int64_t *n_tokens, int64_t *loads, int64_t *would_drop) {
    size_t n = (size_t)batch * moe_model_config(m)->seq_len;
    int *tok = malloc(n * sizeof(int)), *tgt = malloc(n * sizeof(int));
    moe_status st = tok && tgt ? evaluate_into(m, d, batch, max_batches, tok, tgt, loss, n_tokens, loads, would_drop)
                               : moe__err(MOE_STATUS_NOMEM, "out of memory");
    free(tok);
    free(tgt);
    return st;
}

/* ---------------------------------------------------------------- optimizer */

float moe__grad_norm(moe_model *m) {
    // per tensor, in fixed chunks added in order, so the value does not depend on the thread
    // count; with expert parallelism each rank holds some experts: their squares are summed over
    // the ep group, the replicated tensors count once
    enum { NORM_CHUNK = 16384, NORM_ROUND = 1024 };
    float *g = moe_model_grads(m);
    double ss = 0.0, ss_exp = 0.0;
    for (int ti_ = 0; ti_ < moe_model_n_tensors(m); ti_++) {
        const moe_tensor_info *ti = moe_model_tensor(m, ti_);
        if (ti->group == MOE_GROUP_BUFFER) continue;
        int64_t o = ti->offset, e = ti->offset + ti->numel;
        double *acc_t = ti->group == MOE_GROUP_EXPERT ? &ss_exp : &ss;
        for (int64_t r0 = o; r0 < e; r0 += (int64_t)NORM_CHUNK * NORM_ROUND) {
            double part[NORM_ROUND];
            int64_t left = e - r0, nchunks = (left + NORM_CHUNK - 1) / NORM_CHUNK;
            if (nchunks > NORM_ROUND) nchunks = NORM_ROUND;
#pragma omp parallel for schedule(static)
            for (int64_t ci = 0; ci < nchunks; ci++) {
                int64_t a = r0 + ci * NORM_CHUNK, b = a + NORM_CHUNK < e ? a + NORM_CHUNK : e;
                double acc = 0.0;
#pragma omp simd reduction(+ : acc)
                for (int64_t i = a; i < b; i++) acc += (double)g[i] * g[i];
                part[ci] = acc;
            }
            for (int64_t ci = 0; ci < nchunks; ci++) *acc_t += part[ci];
        }
    }
    if (moe__dist_get()->ep > 1) moe__dist_allreduce_f64(MOE_COMM_EP, &ss_exp, 1);
    return (float)sqrt(ss + ss_exp);
}

moe_status moe__adamw_step(moe_model *m, float *opt, int64_t step, float lr, const moe_config *c, float *grad_norm) {
    float norm = moe__grad_norm(m);
    *grad_norm = norm;
    if (!isfinite(norm))
        return moe__err(MOE_STATUS_NUMERIC, "step %lld: gradient norm is not finite", (long long)step + 1);
    moe__adamw_apply(m, opt, step, lr, c, norm);
    return MOE_STATUS_OK;
}

void moe__adamw_apply(moe_model *m, float *opt, int64_t step, float lr, const moe_config *c, float norm) {
    int64_t P = moe_model_n_params(m);
    float *g = moe_model_grads(m), *p = moe_model_params(m);
    // clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below 1
    float clip = 1.0f;
    if (c->grad_clip > 0.0f) {
        float coef = c->grad_clip / (norm + 1e-6f);
        if (coef < 1.0f) clip = coef;
    }
    // AdamW, per tensor for its group's learning rate and decay
    int64_t tstep = step + 1;
    float bc1 = 1.0f - powf(c->beta1, (float)tstep), bc2 = 1.0f - powf(c->beta2, (float)tstep);
    float *mom = opt, *var = opt + P;
    for (int i = 0; i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *ti = moe_model_tensor(m, i);
        if (ti->group == MOE_GROUP_BUFFER) continue; // updated by its own rule, not by gradients
        float tlr = lr * (ti->group == MOE_GROUP_EXPERT ? c->expert_lr_mult
                          : ti->group == MOE_GROUP_ROUTER ? c->router_lr_mult : 1.0f);
        float wd = ti->group == MOE_GROUP_NORM ? 0.0f : c->weight_decay;
        float step_size = tlr / bc1, sqrt_bc2 = sqrtf(bc2);
        // constants in locals and restrict pointers: the loop vectorises (no reloads through c)
        const float b1 = c->beta1, b2 = c->beta2, eps = c->adam_eps, decay = 1.0f - tlr * wd;
        float *restrict pj = p + ti->offset, *restrict mj = mom + ti->offset, *restrict vj = var + ti->offset;
        const float *restrict gp = g + ti->offset;
        int64_t n = ti->numel;
#pragma omp parallel for simd schedule(static)
        for (int64_t j = 0; j < n; j++) {
            float gj = gp[j] * clip;
            float mo = b1 * mj[j] + (1.0f - b1) * gj, va = b2 * vj[j] + (1.0f - b2) * gj * gj;
            mj[j] = mo;
            vj[j] = va;
            pj[j] = pj[j] * decay - step_size * mo / (sqrtf(va) / sqrt_bc2 + eps);
        }
    }
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

static void fill_batch(moe_trainer *t, int micro) {
    const moe_config *c = &t->cfg;
    int T = c->seq_len;
    const uint16_t *src = moe_dataset_tokens(t->train);
    for (int b = 0; b < c->batch_size; b++) {
        int64_t off = t->win[(int64_t)micro * c->batch_size + b];
        for (int i = 0; i < T; i++) {
            t->tokens[b * T + i] = src[off + i];
            t->targets[b * T + i] = src[off + i + 1];
        }
    }
}

/* Sums the gradients of all ranks: experts over the ranks that hold the same experts (the dp
 * group), everything else over all ranks. */
static void allreduce_grads(moe_model *m) {
    const moe__dist *g = moe__dist_get();
    if (g->size == 1) return;
    float *grads = moe_model_grads(m);
    if (g->ep == 1) {
        moe__dist_allreduce_f32(MOE_COMM_WORLD, grads, moe_model_n_params(m));
        return;
    }
    for (int i = 0; i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *ti = moe_model_tensor(m, i);
        if (ti->group == MOE_GROUP_BUFFER) continue;
        moe__dist_allreduce_f32(ti->group == MOE_GROUP_EXPERT ? MOE_COMM_DP : MOE_COMM_WORLD, grads + ti->offset,
                                ti->numel);
    }
}

double moe_maxvio(const int64_t *load, int E) {
    // (max_i load_i - mean load) / mean load
    int64_t tot = 0, mx = 0;
    for (int e = 0; e < E; e++) {
        tot += load[e];
        mx = load[e] > mx ? load[e] : mx;
    }
    if (tot == 0) return 0.0;
    double mean = (double)tot / E;
    return ((double)mx - mean) / mean;
}

static void write_record(moe_trainer *t, const moe_step_info *info) {
    FILE *f = t->metrics;
    if (!f) return; // ranks other than 0
    int nm = moe_model_n_moe_layers(t->m);
    fprintf(f, "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"aux_loss\":%.9g,\"z_loss\":%.9g,"
               "\"seq_aux_loss\":%.9g,\"importance_loss\":%.9g,\"load_loss\":%.9g,"
               "\"total_loss\":%.9g,\"tokens_per_s\":%.1f,\"step_ms\":%.3f",
            (long long)info->step, info->loss.ce, info->lr, info->grad_norm, info->loss.aux, info->loss.z,
            info->loss.seq_aux, info->loss.importance, info->loss.load, info->loss.total, info->tokens_per_s,
            info->step_ms);
    if (info->has_val) fprintf(f, ",\"val_loss\":%.9g", info->val_loss);
    if (info->skipped) {
        fprintf(f, ",\"skipped\":\"");
        for (const char *p = info->fault; *p; p++) fputc(*p == '"' || *p == '\\' ? '\'' : *p, f); // names hold no quotes
        fprintf(f, "\"");
    }
    if (moe__dist_get()->size > 1)
        fprintf(f, ",\"a2a_bytes\":%lld,\"a2a_s\":%.6f,\"allreduce_bytes\":%lld,\"allreduce_s\":%.6f",
                (long long)info->a2a_bytes, info->a2a_s, (long long)info->allreduce_bytes, info->allreduce_s);
    fprintf(f, ",\"moe\":[");
    for (int i = 0; i < nm; i++) {
        const moe_layer_stats *st = moe_model_layer_stats(t->m, i);
        int E = st->n_experts;
        const int64_t *load = t->load_acc + t->load_off[i];
        fprintf(f, "%s{\"layer\":%d,\"maxvio\":%.6g,\"dropped_frac\":%.6g,\"load\":[", i ? "," : "", st->layer,
                t->layer_maxvio[i], t->layer_dropped[i]);
        for (int e = 0; e < E; e++) fprintf(f, "%s%lld", e ? "," : "", (long long)load[e]);
        fprintf(f, "]");
        if (st->bias) {
            fprintf(f, ",\"bias\":[");
            for (int e = 0; e < E; e++) fprintf(f, "%s%.6g", e ? "," : "", st->bias[e]);
            fprintf(f, "]");
        }
        fprintf(f, "}");
    }
    fprintf(f, "]}\n");
    fflush(f);
}

/* The step's TensorBoard event: the metrics.jsonl record's numbers under TensorBoard tags. */
static moe_status write_tensorboard(moe_trainer *t, const moe_step_info *info) {
    moe__tb *tb = t->tb;
    if (!tb) return MOE_STATUS_OK;
    const moe_config *c = &t->cfg;
    int nm = moe_model_n_moe_layers(t->m);
    moe__tb_scalar(tb, "train/loss", info->loss.ce);
    moe__tb_scalar(tb, "train/total_loss", info->loss.total);
    moe__tb_scalar(tb, "train/lr", info->lr);
    moe__tb_scalar(tb, "train/grad_norm", info->grad_norm);
    moe__tb_scalar(tb, "train/tokens_per_s", (float)info->tokens_per_s);
    if (info->skipped) moe__tb_scalar(tb, "train/skipped", 1.0f);
    if (info->has_val) moe__tb_scalar(tb, "val/loss", info->val_loss);
    if (nm) {
        moe__tb_scalar(tb, "train/aux_loss", info->loss.aux);
        moe__tb_scalar(tb, "train/z_loss", info->loss.z);
        if (c->seq_aux_loss_coef > 0) moe__tb_scalar(tb, "train/seq_aux_loss", info->loss.seq_aux);
        if (c->routing == MOE_ROUTING_NOISY_TOPK) {
            moe__tb_scalar(tb, "train/importance_loss", info->loss.importance);
            moe__tb_scalar(tb, "train/load_loss", info->loss.load);
        }
        moe__tb_scalar(tb, "moe/maxvio", info->maxvio);
        moe__tb_scalar(tb, "moe/dropped_frac", info->dropped_frac);
    }
    char tag[96];
    double share[4096], limits[21];
    for (int i = 0; i < nm; i++) {
        const moe_layer_stats *st = moe_model_layer_stats(t->m, i);
        int E = st->n_experts;
        const int64_t *load = t->load_acc + t->load_off[i];
        int64_t tot = 0;
        for (int e = 0; e < E; e++) tot += load[e];
        snprintf(tag, sizeof tag, "moe/layer%d/maxvio", st->layer);
        moe__tb_scalar(tb, tag, t->layer_maxvio[i]);
        snprintf(tag, sizeof tag, "moe/layer%d/dropped_frac", st->layer);
        moe__tb_scalar(tb, tag, t->layer_dropped[i]);
        for (int e = 0; e < E; e++) { // share of the layer's routed assignments; 1/E when balanced
            share[e] = tot ? (double)load[e] / (double)tot : 0.0;
            snprintf(tag, sizeof tag, "moe/layer%d/load/expert%03d", st->layer, e);
            moe__tb_scalar(tb, tag, (float)share[e]);
        }
        for (int b = 0; b < 20; b++) limits[b] = (b + 1) * 0.1 / E; // up to 2x the balanced share
        limits[20] = 1.0;
        snprintf(tag, sizeof tag, "moe/layer%d/load_share", st->layer);
        moe__tb_histogram(tb, tag, share, E, limits, 21);
    }
    moe__tb_step(tb, info->step);
    return moe__tb_flush(tb);
}

/* Where the first non-finite value is, the same on every rank; returns its kind (0: none). Under
 * expert parallelism each rank holds other experts, and a NaN in one rank's weights reaches the
 * others' activations through the all-to-all: the rank with the earliest kind (parameter, then
 * activation, then gradient; the lowest rank among equals) sends its description to all, so
 * that every rank reports alike and agrees whether the weights are poisoned. COLLECTIVE. */
static int locate_nonfinite(const moe_model *m, char *where, size_t n) {
    const moe__dist *g = moe__dist_get();
    char mine[192];
    int kind = moe__model_locate_nonfinite(m, mine, sizeof mine);
    int best = moe__dist_min_int(kind ? kind * g->size + g->rank : INT_MAX);
    if (best == INT_MAX) {
        snprintf(where, n, "nowhere (all parameters, activations and gradients are finite)");
        return 0;
    }
    int src = best % g->size;
    if (g->size == 1) {
        snprintf(where, n, "%s", mine);
        return kind;
    }
    int64_t buf[28]; // 224 bytes summed over ranks, only src's non-zero: a broadcast
    memset(buf, 0, sizeof buf);
    if (g->rank == src) snprintf((char *)buf, sizeof buf, "%s on rank %d", mine, src);
    moe__dist_allreduce_i64(MOE_COMM_WORLD, buf, 28);
    ((char *)buf)[sizeof buf - 1] = 0;
    snprintf(where, n, "%s", (const char *)buf);
    return best / g->size;
}

moe_status moe_trainer_step(moe_trainer *t, moe_step_info *info) {
    const moe_config *c = &t->cfg;
    moe_model *m = t->m;
    double t0 = moe__now();
    int nm = moe_model_n_moe_layers(m);
    memset(info, 0, sizeof *info);
    memset(t->load_acc, 0, (size_t)t->total_e * sizeof(int64_t));
    memset(t->dropped_acc, 0, (size_t)(nm ? nm : 1) * sizeof(int64_t));
    memset(t->routed_acc, 0, (size_t)(nm ? nm : 1) * sizeof(int64_t));
    moe_model_zero_grad(m);
    const moe__dist *g = moe__dist_get();
    moe__dist_reset_counters();
    int64_t n_micro = (int64_t)c->grad_accum * g->size; // micro-batches of the global batch
    float inv = 1.0f / (float)n_micro;
    moe_status st;
    if (t->fail_rank == g->rank && t->run.step == 1)
        return moe__err(MOE_STATUS_IO, "rank %d: injected failure at step 2 (MOE_TEST_FAIL_RANK)", g->rank);
    int inject = t->fault_step == t->run.step + 1 && (t->fault_rank < 0 || t->fault_rank == g->rank);
    if (inject && !strcmp(t->fault_kind, "param_nan") && moe_model_find(m, t->fault_tensor))
        moe_model_params(m)[moe_model_find(m, t->fault_tensor)->offset] = NAN;
    moe_rng rng_before = t->run.rng; // a step that stops the run is not taken: its draw neither
    draw_windows(t);
    for (int micro = 0; micro < c->grad_accum; micro++) {
        fill_batch(t, micro);
        // noise, jitter and random-routing draws are a function of (seed, global micro-batch
        // index), so a resumed run, or one on another number of ranks, draws the same
        int64_t q = t->run.step * n_micro + (int64_t)g->rank * c->grad_accum + micro;
        moe__model_set_noise_seed(m, c->seed * 0x9e3779b97f4a7c15ULL + (uint64_t)q + 1);
        moe_losses l;
        st = moe_model_forward(m, t->tokens, t->targets, c->batch_size, c->seq_len, 1, &l);
        // a non-finite loss is not an error yet: backward runs (every rank joins the same
        // collectives) and the step's fault check below decides, knowing where it came from
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
            for (int e = 0; e < s->n_experts; e++) t->load_acc[t->load_off[i] + e] += s->load[e];
            t->dropped_acc[i] += s->dropped;
            t->routed_acc[i] += s->assignments;
        }
    }
    // injected before the reductions, so that one rank's fault (TENSOR@RANK) reaches all as a real one would
    if (inject && !strcmp(t->fault_kind, "grad_nan") && moe_model_find(m, t->fault_tensor))
        moe_model_grads(m)[moe_model_find(m, t->fault_tensor)->offset] = NAN;
    if (inject && !strcmp(t->fault_kind, "loss_spike")) info->loss.ce += 50.0f, info->loss.total += 50.0f;
    if (g->size > 1) {
        allreduce_grads(m);
        double lv[7] = {info->loss.ce, info->loss.aux, info->loss.z, info->loss.seq_aux, info->loss.importance,
                        info->loss.load, info->loss.total};
        moe__dist_allreduce_f64(MOE_COMM_WORLD, lv, 7);
        info->loss.ce = (float)lv[0], info->loss.aux = (float)lv[1], info->loss.z = (float)lv[2];
        info->loss.seq_aux = (float)lv[3], info->loss.importance = (float)lv[4], info->loss.load = (float)lv[5];
        info->loss.total = (float)lv[6];
        moe__dist_allreduce_i64(MOE_COMM_WORLD, t->load_acc, t->total_e);
        moe__dist_allreduce_i64(MOE_COMM_WORLD, t->dropped_acc, nm);
        moe__dist_allreduce_i64(MOE_COMM_WORLD, t->routed_acc, nm);
    }
    float lr = moe__lr_at(c, t->run.step);
    double t_opt = moe__now();
    float norm = moe__grad_norm(m);
    // numerical faults: loss and gradients are global here, so every rank decides alike
    int spike = c->loss_spike_factor > 0 && t->run.ema_n >= 20 && info->loss.ce > c->loss_spike_factor * t->run.loss_ema;
    if (!isfinite(info->loss.total) || !isfinite(norm) || spike) {
        char where[224] = "nowhere";
        int kind = 0;
        if (spike)
            snprintf(info->fault, sizeof info->fault, "loss spike: %.4f is above %g x the running mean %.4f", info->loss.ce,
                     c->loss_spike_factor, t->run.loss_ema);
        else {
            kind = locate_nonfinite(m, where, sizeof where);
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
    } else {
        t->run.skipped_run = 0;
        t->run.loss_ema = t->run.ema_n ? 0.99 * t->run.loss_ema + 0.01 * info->loss.ce : info->loss.ce;
        t->run.ema_n++;
        moe__adamw_apply(m, t->opt, t->run.step, lr, c, norm);
    }
    moe__model_prof(m)[MOE_PHASE_OPTIMIZER] += moe__now() - t_opt;
    for (int i = 0; i < nm; i++) {
        moe_layer_stats *ls = (moe_layer_stats *)moe_model_layer_stats(m, i);
        int E = ls->n_experts;
        const int64_t *load = t->load_acc + t->load_off[i];
        t->layer_maxvio[i] = (float)moe_maxvio(load, E);
        t->layer_dropped[i] = t->routed_acc[i] ? (float)((double)t->dropped_acc[i] / (double)t->routed_acc[i]) : 0.0f;
        info->maxvio = t->layer_maxvio[i] > info->maxvio ? t->layer_maxvio[i] : info->maxvio;
        info->dropped_frac += t->layer_dropped[i] / (float)nm;
        // DeepSeek-V3 aux-loss-free balancing: b_e += rate * sign(mean load - load_e), once per
        // optimizer step, from the training loads of all its micro-batches
        if (ls->bias && !info->skipped) {
            float *bias = (float *)ls->bias;
            double mean = 0.0;
            for (int e = 0; e < E; e++) mean += (double)load[e];
            mean /= E;
            for (int e = 0; e < E; e++)
                bias[e] += c->bias_update_rate * (float)(((double)load[e] < mean) - ((double)load[e] > mean));
        }
    }
    t->run.step++;
    double dt = moe__now() - t0;
    info->step = t->run.step;
    info->lr = lr;
    info->grad_norm = norm;
    info->step_ms = dt * 1e3;
    info->tokens_per_s = (double)n_micro * c->batch_size * c->seq_len / dt;
    info->a2a_bytes = g->a2a_bytes, info->allreduce_bytes = g->ar_bytes;
    info->a2a_s = g->a2a_s, info->allreduce_s = g->ar_s;
    int last = t->run.step >= c->steps;
    if ((c->eval_every > 0 && t->run.step % c->eval_every == 0) || last) {
        st = evaluate_into(m, t->val, c->batch_size, c->eval_batches, t->tokens, t->targets, &info->val_loss, NULL,
                           NULL, NULL);
        if (st != MOE_STATUS_OK) return st;
        info->has_val = 1;
    }
    write_record(t, info);
    moe_status tb = write_tensorboard(t, info); // reported after the checkpoint, which matters more
    if ((c->ckpt_every > 0 && t->run.step % c->ckpt_every == 0) || last) {
        st = moe_trainer_save(t);
        if (st != MOE_STATUS_OK) return st;
    }
    return tb;
}
