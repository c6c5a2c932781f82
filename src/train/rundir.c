/*
 * rundir.c — the run directory: model.safetensors (weights, config, step), state.bin (AdamW
 * moments, step, data RNG, spike guard; checksummed, format in state.c) and metrics.jsonl; with
 * expert parallelism, each rank's expert and state shards. Saves are atomic and ordered so that
 * a run killed at any moment keeps a loadable checkpoint (docs/formats.md); keep_checkpoints
 * keeps older ones as hard links, and a resume that fails names them. A training process holds
 * the directory's lock (DIR/.lock) for its life, so that two trainings never write one run.
 */
#define _POSIX_C_SOURCE 200809L
#include "train/train.h"
#include "dist/dist.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- state file */

static moe_status save_state(moe_trainer *t, const char *path) {
    moe_model *m = t->m;
    int64_t P = moe_model_n_params(m);
    char head[MOE_STATE_HEADER];
    size_t hl = moe__state_header(&t->run, P, head);
    size_t opt_bytes = (size_t)P * 2 * sizeof(float);
    moe_status st = m->be->to_host(m, MOE_BUF_OPT);
    if (st != MOE_STATUS_OK) return st;
    uint64_t sum = moe__fnv1a(MOE_FNV_INIT, head, hl);
    sum = moe__fnv1a(sum, m->opt, opt_bytes);
    const void *parts[] = {head, m->opt, &sum};
    size_t lens[] = {hl, opt_bytes, sizeof sum};
    return moe__write_atomic(path, parts, lens, 3);
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
void moe__rundir_hint(const char *dir, moe_status st) {
    char first[1024], base[4200], path[4600];
    const char *best[2] = {NULL, NULL};
    snprintf(first, sizeof first, "%s", moe_last_error()); // the error stays, with or without a hint
    if (moe__pathf(base, sizeof base, "%s/checkpoints", dir) != MOE_STATUS_OK ||
        moe__pathf(path, sizeof path, "%s/model.safetensors", dir) != MOE_STATUS_OK) {
        moe__err(st, "%s", first);
        return;
    }
    struct stat cur, sb;
    int have_cur = stat(path, &cur) == 0, n, k = 0;
    char **list = list_snapshots(base, &n);
    for (int i = n - 1; i >= 0 && k < 2; i--)
        if (moe__pathf(path, sizeof path, "%s/%s/model.safetensors", base, list[i]) == MOE_STATUS_OK &&
            stat(path, &sb) == 0 && !(have_cur && sb.st_ino == cur.st_ino && sb.st_dev == cur.st_dev))
            best[k++] = list[i];
    moe__err(st, "%s", first);
    if (k) {
        moe__err(st, "%s; kept checkpoints in %s/, newest first: %s%s%s...; to resume from one: cp --remove-destination %s/%s/* %s/ "
                     "(--remove-destination: the run's files are hard links to a kept checkpoint)",
                 first, base, best[0], k > 1 ? ", " : "", k > 1 ? best[1] : "", base, best[0], dir);
    }
    free_list(list, n);
}

moe_status moe_run_config(const char *dir, moe_config *out) {
    char *path = moe__path_join(dir, "model.safetensors");
    if (!path) return MOE_STATUS_NOMEM;
    moe_status st = moe_checkpoint_config(path, out, NULL);
    if (st != MOE_STATUS_OK) moe__rundir_hint(dir, st);
    free(path);
    return st;
}

/* ---------------------------------------------------------------- resume */

/* A state file (state.bin, or rank j's of a checkpoint written with ep W) read and checked
 * against the W-rank layout (pw parameters) and the model's step; *opt points into *buf, which
 * the caller frees. */
static moe_status read_state(const char *path, int64_t pw, int64_t model_step, char **buf, moe__state *s,
                             const float **opt) {
    size_t len;
    *buf = moe__read_file(path, &len);
    if (!*buf) return MOE_STATUS_IO;
    const void *o = NULL;
    moe_status st = moe__state_parse(*buf, len, path, pw, s, &o);
    if (st == MOE_STATUS_OK && s->step != model_step)
        st = moe__err(MOE_STATUS_FORMAT, "'%s' is at step %lld but model.safetensors is at step %lld", path,
                      (long long)s->step, (long long)model_step);
    *opt = o;
    return st;
}

/* This rank's AdamW moments from a checkpoint written with expert parallelism W, whatever this
 * run's ep: the moments of a tensor are laid out as its weights are (docs/distributed.md), so
 * they are gathered by global expert id, as the weights are (moe__model_load_weights): the
 * replicated tensors from the first state file read, each routed expert from the file of the rank
 * that held it. Only the files whose experts overlap this rank's are read. */
static moe_status load_state_any(moe_trainer *t, int W, int64_t model_step, const char *path1) {
    const moe__dist *g = moe__dist_get();
    moe_model *m = t->m;
    int n = moe_model_n_tensors(m), ep = g->ep, r = g->ep_rank;
    int64_t P = moe_model_n_params(m), pw = 0;
    int64_t *woff = malloc((size_t)n * sizeof *woff);
    if (!woff) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    moe_status st = MOE_STATUS_OK;
    for (int i = 0; i < n; i++) { // where each tensor lies in a file of the W-rank layout
        const moe_tensor_info *ti = moe_model_tensor(m, i);
        int64_t E = ti->shape[0] * ep, numel = ti->numel;
        if (ti->group == MOE_GROUP_EXPERT) {
            if (E % W) st = moe__err(MOE_STATUS_FORMAT, "'%s': %lld experts of '%s' do not split over the %d ranks that "
                                     "wrote it", t->model_path, (long long)E, ti->name, W);
            numel = ti->numel / ti->shape[0] * (E / W);
        }
        woff[i] = pw;
        pw += numel;
    }
    int have = 0;
    for (int j = 0; j < W && st == MOE_STATUS_OK; j++) {
        // rank j of W held the fraction [j, j+1)/W of each layer's experts; this one [r, r+1)/ep
        if (!moe__shard_overlaps(j, W, r, ep)) continue;
        char path[4200], *buf = NULL;
        moe__state s;
        const float *opt = NULL;
        st = W == 1 ? moe__pathf(path, sizeof path, "%s", path1)
                    : moe__shard_name(path, sizeof path, t->dir, "state", j, W, model_step);
        if (st == MOE_STATUS_OK) st = read_state(path, pw, model_step, &buf, &s, &opt);
        for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
            const moe_tensor_info *ti = moe_model_tensor(m, i);
            if (ti->group != MOE_GROUP_EXPERT) {
                if (!have) // replicated: the same in every file
                    for (int k = 0; k < 2; k++)
                        memcpy(m->opt + k * P + ti->offset, opt + k * pw + woff[i], (size_t)ti->numel * sizeof(float));
                continue;
            }
            int64_t per = ti->numel / ti->shape[0], El = ti->shape[0], Ew = El * ep / W;
            int64_t lo = (int64_t)r * El > j * Ew ? (int64_t)r * El : j * Ew;
            int64_t hi = (int64_t)(r + 1) * El < (j + 1) * Ew ? (int64_t)(r + 1) * El : (j + 1) * Ew;
            for (int k = 0; k < 2 && hi > lo; k++) // global experts [lo, hi): from file j's rows to this rank's
                memcpy(m->opt + k * P + ti->offset + (lo - (int64_t)r * El) * per,
                       opt + k * pw + woff[i] + (lo - j * Ew) * per, (size_t)((hi - lo) * per) * sizeof(float));
        }
        if (st == MOE_STATUS_OK && !have) t->run = s;
        have = 1;
        free(buf);
    }
    free(woff);
    return st == MOE_STATUS_OK ? m->be->from_host(m, MOE_BUF_OPT) : st;
}

moe_status moe__rundir_load_state(moe_trainer *t, int64_t model_step, int shards, int *ckpt_failed) {
    const moe__dist *g = moe__dist_get();
    int W = shards ? shards : 1;
    moe_status st = load_state_any(t, W, model_step, t->state_path);
    if (st != MOE_STATUS_OK && W == 1 && access(t->state_next_path, F_OK) == 0) {
        // killed between committing model.safetensors and renaming state.next.bin over
        // state.bin (moe_trainer_save): the state of the model's step is the next one
        char first[1024];
        snprintf(first, sizeof first, "%s", moe_last_error());
        st = load_state_any(t, W, model_step, t->state_next_path);
        // one process puts it in place; several leave it to the next save (another rank may be
        // reading it now)
        if (st == MOE_STATUS_OK && g->size == 1 && rename(t->state_next_path, t->state_path) != 0)
            st = moe__err(MOE_STATUS_IO, "cannot rename '%s' to '%s': %s", t->state_next_path, t->state_path,
                          strerror(errno));
        if (st != MOE_STATUS_OK) st = moe__err(st, "%s (and %s)", first, moe_last_error());
    }
    if (st != MOE_STATUS_OK && W != g->ep)
        st = moe__err(st, "resume with ep=%d of a checkpoint written with ep=%d: %s", g->ep, W, moe_last_error());
    *ckpt_failed = st == MOE_STATUS_FORMAT || st == MOE_STATUS_IO; // the state did not load
    if (st == MOE_STATUS_OK && g->rank == 0) st = trim_metrics(t);
    return st;
}

/* ---------------------------------------------------------------- save */

/* Removes the shard files (experts-J-of-N.stepS.safetensors, state-J-of-N.stepS.bin) of any
 * other layout or step than ep ranks at step, after that checkpoint was committed: older steps,
 * and a layout the run was resumed from (with ep 1, every shard). Rank 0. */
static void remove_old_shards(const char *dir, int ep, int64_t step) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *n = e->d_name;
        int j, w, end = 0;
        long long s;
        char ext[16] = "";
        int ex = sscanf(n, "experts-%d-of-%d.step%lld.%15s%n", &j, &w, &s, ext, &end) == 4 && !strcmp(ext, "safetensors");
        int sb = !ex && sscanf(n, "state-%d-of-%d.step%lld.%15s%n", &j, &w, &s, ext, &end) == 4 && !strcmp(ext, "bin");
        if ((!ex && !sb) || n[end] || (ep > 1 && w == ep && s == (long long)step)) continue;
        char *path = moe__path_join(dir, n);
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
        char *p = moe__path_join(dir, e->d_name);
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
    moe_status st = moe__pathf(base, sizeof base, "%s/checkpoints", t->dir);
    if (st == MOE_STATUS_OK) st = moe__pathf(snap, sizeof snap, "%s/step-%08lld", base, (long long)t->run.step);
    if (st != MOE_STATUS_OK) return st;
    if (moe__mkdir_p(snap) != 0) return moe__err(MOE_STATUS_IO, "cannot create '%s': %s", snap, strerror(errno));
    const char *names[3] = {"model.safetensors", ep == 1 ? "state.bin" : NULL, NULL};
    for (int i = 0; i < 2 && names[i]; i++) {
        if ((st = moe__pathf(src, sizeof src, "%s/%s", t->dir, names[i])) != MOE_STATUS_OK ||
            (st = moe__pathf(dst, sizeof dst, "%s/%s", snap, names[i])) != MOE_STATUS_OK)
            return st;
        unlink(dst);
        if (link(src, dst) != 0) return moe__err(MOE_STATUS_IO, "cannot link '%s' to '%s': %s", src, dst, strerror(errno));
    }
    for (int j = 0; ep > 1 && j < ep; j++)
        for (int k = 0; k < 2; k++) {
            const char *kind = k ? "state" : "experts";
            if ((st = moe__shard_name(src, sizeof src, t->dir, kind, j, ep, t->run.step)) != MOE_STATUS_OK ||
                (st = moe__shard_name(dst, sizeof dst, snap, kind, j, ep, t->run.step)) != MOE_STATUS_OK)
                return st;
            unlink(dst);
            if (link(src, dst) != 0)
                return moe__err(MOE_STATUS_IO, "cannot link '%s' to '%s': %s", src, dst, strerror(errno));
        }
    // the newest keep_checkpoints stay
    int n;
    char **list = list_snapshots(base, &n);
    for (int i = 0; i < n - t->cfg.keep_checkpoints; i++)
        if (moe__pathf(snap, sizeof snap, "%s/%s", base, list[i]) == MOE_STATUS_OK) remove_dir(snap);
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
        if (st == MOE_STATUS_OK && g->rank == 0) remove_old_shards(t->dir, 1, t->run.step); // of a sharded run resumed
        return st;
    }
    char ex[4200], sp[4200];
    if (g->dp_rank == 0) {
        st = moe__shard_name(ex, sizeof ex, t->dir, "experts", g->ep_rank, g->ep, t->run.step);
        if (st == MOE_STATUS_OK) st = moe__shard_name(sp, sizeof sp, t->dir, "state", g->ep_rank, g->ep, t->run.step);
        if (st == MOE_STATUS_OK) st = moe__model_save_experts(t->m, ex, t->run.step);
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
    if (g->rank == 0) remove_old_shards(t->dir, g->ep, t->run.step);
    return st;
}

/* ---------------------------------------------------------------- ownership */

moe_status moe__rundir_lock(moe_trainer *t) {
    moe_status st = MOE_STATUS_OK;
    t->lock_fd = -1;
    if (moe__dist_get()->rank == 0) {
        char path[4200];
        struct stat sb;
        st = moe__pathf(path, sizeof path, "%s/.lock", t->dir); // failing, it goes on to tell the other ranks
        int fd = st == MOE_STATUS_OK && stat(t->dir, &sb) == 0 ? open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644) : -2;
        if (fd == -2) { // or a resume of a directory that is not there: its checkpoint read says so
        } else if (fd < 0) {
            st = moe__err(MOE_STATUS_IO, "cannot open '%s': %s", path, strerror(errno));
        } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            char pid[32] = "";
            ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
            pid[n > 0 ? n : 0] = 0;
            pid[strcspn(pid, "\n")] = 0;
            st = errno == EWOULDBLOCK
                     ? moe__err(MOE_STATUS_BUSY, "run directory '%s' is in use: process %s is training there (%s)", t->dir,
                                pid[0] ? pid : "?", path)
                     : moe__err(MOE_STATUS_IO, "cannot lock '%s': %s", path, strerror(errno));
            close(fd);
        } else {
            char pid[32];
            int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) { /* the lock holds without it */
            }
            t->lock_fd = fd;
        }
    }
    if (moe__dist_min_int(st == MOE_STATUS_OK) == 0 && st == MOE_STATUS_OK) // rank 0 failed: all stop
        st = moe__err(MOE_STATUS_BUSY, "run directory '%s': rank 0 could not lock it", t->dir);
    return st;
}

moe_status moe__rundir_check_new(const char *dir) {
    const char *names[] = {"model.safetensors", "metrics.jsonl"};
    char path[4200];
    moe_status st = MOE_STATUS_OK;
    for (int i = 0; i < 2 && moe__dist_get()->rank == 0 && st == MOE_STATUS_OK; i++) { // rank 0 writes them
        if ((st = moe__pathf(path, sizeof path, "%s/%s", dir, names[i])) != MOE_STATUS_OK)
            break;
        if (access(path, F_OK) == 0)
            st = moe__err(MOE_STATUS_EXISTS, "run directory '%s' already holds a run (%s)", dir, names[i]);
    }
    if (moe__dist_min_int(st == MOE_STATUS_OK) == 0 && st == MOE_STATUS_OK) // as rank 0 found
        st = moe__err(MOE_STATUS_EXISTS, "run directory '%s' already holds a run", dir);
    return st;
}

/* A file a run writes (in the run directory or a kept checkpoint); moe train copies the run's
 * tokenizer in too. */
static int run_file(const char *name) {
    static const char *const exact[] = {"model.safetensors", "state.bin", "state.next.bin", "metrics.jsonl",
                                        "tokenizer.json", "tokenizer_config.json"};
    static const char *const prefix[] = {"events.out.tfevents.", "experts-", "state-"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
        if (!strcmp(name, exact[i])) return 1;
    for (size_t i = 0; i < sizeof prefix / sizeof prefix[0]; i++)
        if (!strncmp(name, prefix[i], strlen(prefix[i]))) return 1;
    return 0;
}

/* Removes the run files of dir; *left counts what else stays. */
static moe_status clear_files(const char *dir, int *left) {
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? MOE_STATUS_OK : moe__err(MOE_STATUS_IO, "cannot read '%s': %s", dir, strerror(errno));
    moe_status st = MOE_STATUS_OK;
    char path[4400];
    for (struct dirent *e; st == MOE_STATUS_OK && (e = readdir(d)) != NULL;) {
        if (!run_file(e->d_name)) {
            *left += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
            continue;
        }
        if ((st = moe__pathf(path, sizeof path, "%s/%s", dir, e->d_name)) != MOE_STATUS_OK)
            break;
        if (unlink(path) != 0 && errno != ENOENT)
            st = moe__err(MOE_STATUS_IO, "cannot remove '%s': %s", path, strerror(errno));
    }
    closedir(d);
    return st;
}

moe_status moe__rundir_clear(const char *dir) {
    if (moe__dist_get()->rank != 0) return MOE_STATUS_OK;
    char base[4200], snap[4400];
    int left = 0, n = 0;
    moe_status st = clear_files(dir, &left);
    if (st == MOE_STATUS_OK) st = moe__pathf(base, sizeof base, "%s/checkpoints", dir);
    if (st != MOE_STATUS_OK) return st;
    char **list = list_snapshots(base, &n);
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        int other = 0;
        st = moe__pathf(snap, sizeof snap, "%s/%s", base, list[i]);
        if (st == MOE_STATUS_OK) st = clear_files(snap, &other);
        if (st == MOE_STATUS_OK && !other && rmdir(snap) != 0)
            st = moe__err(MOE_STATUS_IO, "cannot remove '%s': %s", snap, strerror(errno));
    }
    free_list(list, n);
    if (st == MOE_STATUS_OK) rmdir(base); // when empty
    return st;
}

