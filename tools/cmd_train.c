/*
 * cmd_train.c — `moe train`: a training run from its flags and config keys to its checkpoint,
 * in phases: the config (a new run, --resume or --init-from, then --config and --set), the data
 * (files, directories, patterns; llm.c's train/val split; --check-data), the tokenizer
 * (--tokenizer, or the one named by the sidecar of token shards, or --init-from's), the trainer
 * (with the weights of --init-from), the tokenizer copied into the run, the steps (log lines and
 * a progress bar; SIGINT and SIGTERM stop after the step in progress, with a checkpoint), and
 * the --profile report.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const char *data, *val, *out, *config, *init_from, *tokenizer, *device, *dtype, *max_memory;
    cli_list sets;       /* --set, --steps and --log-every, in command-line order */
    long stop_after, ep; /* stop_after 0: run to the last step */
    int resume, overwrite, quiet, profile, check_data;
} train_opts;

#define OPT(field) offsetof(train_opts, field)
static const cli_flag train_flags[] = {
    {"--data", CLI_STRING, "FILES", OPT(data),
     .help = "training data, comma-separated (concatenated in order): files, directories\n"
             "(their *.bin shards, else their files) or quoted glob patterns. A directory\n"
             "of llm.c shards named *_train*.bin and *_val*.bin, without --val-data,\n"
             "trains on the first and validates on the second",
     .required = 1},
    {"--val-data", CLI_STRING, "FILES", OPT(val),
     .help = "validation data, as --data; default: the last val_frac of --data"},
    {"--check-data", CLI_NONE, NULL, OPT(check_data),
     .help = "read every token before training, checking it against vocab_size\n"
             "(by default each batch's tokens are checked when they are read)"},
    {"--config", CLI_STRING, "FILE", OPT(config), .help = "JSON object of config keys (below)"},
    {"--set", CLI_LIST, "KEY=VALUE", OPT(sets), .help = "set one config key; repeatable, applied after --config"},
    {"--out", CLI_STRING, "DIR", OPT(out), .help = "run directory (created if missing)", .required = 1},
    {"--steps", CLI_INT, "N", OPT(sets), .help = "same as --set steps=N", .lo = 0, .hi = INT_MAX, .set_key = "steps"},
    {"--ep", CLI_INT, "N", OPT(ep),
     .help = "under mpirun: N ranks share each MoE layer's experts (E/N each);\n"
             "the other ranks/N-fold is data parallel (docs/distributed.md); a\n"
             "run resumes under any --ep",
     .lo = 1, .hi = 65536},
    {"--resume", CLI_NONE, NULL, OPT(resume),
     .help = "continue the run in DIR from its checkpoint, with its keys (model and\n"
             "training); --config/--set may change training keys (lr, steps, ...)"},
    {"--overwrite", CLI_NONE, NULL, OPT(overwrite),
     .help = "start a new run in DIR although it holds one: its checkpoints, state and\n"
             "metrics are removed first (without it, training into a run is refused)"},
    {"--init-from", CLI_STRING, "SRC", OPT(init_from),
     .help = "start a new run from SRC's weights: a Hugging Face directory (Mixtral;\n"
             "Llama/Mistral dense) or a moe checkpoint. Model keys come from SRC, then\n"
             "--config/--set; a layer made MoE where SRC is dense is upcycled (its FFN\n"
             "copied into every expert, router fresh; see moe import --help)"},
    {"--tokenizer", CLI_STRING, "PATH", OPT(tokenizer),
     .help = "the run's tokenizer (a tokenizer.json or a directory holding one),\n"
             "copied into DIR; by default the one that token shards' sidecar\n"
             "(moe tokenize) names, else --init-from SRC's. Its vocabulary must fit\n"
             "vocab_size; moe sample and moe eval use it"},
    {"--stop-after", CLI_INT, "N", OPT(stop_after),
     .help = "stop (and checkpoint) after N steps of this invocation, keeping the\n"
             "schedule of --steps; continue later with --resume",
     .lo = 1, .hi = INT_MAX},
    {"--quiet", CLI_NONE, NULL, OPT(quiet),
     .help = "no progress output (metrics.jsonl and TensorBoard files are still written)"},
    {"--log-every", CLI_INT, "N", OPT(sets),
     .help = "a log line every N steps (and at evaluations); same as --set log_every=N.\n"
             "On a terminal a progress bar with the ETA stays under the log lines;\n"
             "otherwise each line ends with the ETA",
     .lo = 1, .hi = INT_MAX, .set_key = "log_every"},
    {"--profile", CLI_NONE, NULL, OPT(profile), .help = "at the end, print where the training time went, by phase"},
    CLI_DEVICE_FLAGS(train_opts),
};
#undef OPT

static void train_help_tail(FILE *f) {
    moe_config_help(f);
    fprintf(f, "\nNote: moe_layers every:k makes layers k-1, 2k-1, ... MoE; capacity is\n"
               "max(min_capacity, ceil(top_k * tokens / n_experts * capacity_factor)) per expert.\n");
}

/* ---------------------------------------------------------------- progress */

/* Progress of a training run: on a terminal, one bar redrawn in place (at most 10 times a
 * second) under the log lines; otherwise only the log lines, each with the ETA. */
typedef struct {
    int tty, drawn;
    int64_t first, target; /* steps done at the start; step this invocation stops at */
    double t0, last_draw;
} progress;

static void fmt_dur(char *b, size_t n, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(b, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(b, n, "%lds", t);
}

/* Seconds left, from this invocation's mean step time; -1 before the first step. */
static double eta(const progress *p, int64_t step) {
    if (step <= p->first) return -1;
    return (now_seconds() - p->t0) / (double)(step - p->first) * (double)(p->target - step);
}

/* The bar redraws one line with escape codes: only on a terminal, and never under an MPI
 * launcher, where a rank's stdout is the launcher's pseudo-terminal (Open MPI forwards through
 * one) whatever mpirun's own output is: a log file would fill with escape codes. */
static int bar_wanted(void) {
    const char *launcher[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof launcher / sizeof launcher[0]; i++)
        if (getenv(launcher[i])) return 0;
    return moe_dist_size() == 1 && isatty(STDOUT_FILENO);
}

static void progress_clear(progress *p) {
    if (p->tty && p->drawn) fputs("\r\033[K", stdout);
    p->drawn = 0;
}

static void progress_draw(progress *p, const moe_step_info *s) {
    double t = now_seconds();
    if (!p->tty || (t - p->last_draw < 0.1 && s->step < p->target)) return;
    p->last_draw = t;
    const int width = 30;
    int64_t span = p->target > 0 ? p->target : 1;
    int fill = (int)((double)s->step / (double)span * width);
    char bar[64], el[32], left[32];
    for (int i = 0; i < width; i++) bar[i] = i < fill ? '=' : i == fill ? '>' : ' ';
    bar[width] = 0;
    fmt_dur(el, sizeof el, t - p->t0);
    double e = eta(p, s->step);
    if (e >= 0) fmt_dur(left, sizeof left, e);
    else snprintf(left, sizeof left, "?");
    printf("\r\033[K[%s] %lld/%lld %3.0f%% | loss %.4f | %.0f tok/s | %s elapsed, ETA %s", bar, (long long)s->step,
           (long long)p->target, 100.0 * (double)s->step / (double)span, s->loss.ce, s->tokens_per_s, el, left);
    fflush(stdout);
    p->drawn = 1;
}

static void print_step(progress *p, const moe_step_info *s, const moe_config *c, moe_model *m) {
    progress_clear(p);
    printf("step %6lld/%d | loss %.4f | lr %.2e | gnorm %.3f", (long long)s->step, c->steps, s->loss.ce, s->lr,
           s->grad_norm);
    if (moe_model_n_moe_layers(m)) {
        printf(" | aux %.3f | z %.3f", s->loss.aux, s->loss.z);
        if (c->seq_aux_loss_coef > 0) printf(" | seq %.3f", s->loss.seq_aux);
        if (c->routing == MOE_ROUTING_NOISY_TOPK) printf(" | imp %.3f | load %.3f", s->loss.importance, s->loss.load);
        printf(" | maxvio %.2f | drop %.1f%%", s->maxvio, 100.0 * s->dropped_frac);
    }
    printf(" | %.0f tok/s", s->tokens_per_s);
    if (s->has_val) printf(" | val %.4f", s->val_loss);
    if (s->skipped) printf(" | SKIPPED: %s", s->fault);
    double e = eta(p, s->step);
    if (!p->tty && e >= 0 && s->step < p->target) {
        char left[32];
        fmt_dur(left, sizeof left, e);
        printf(" | eta %s", left);
    }
    printf("\n");
    fflush(stdout);
}

/* ---------------------------------------------------------------- phases */

/* SIGINT / SIGTERM during training: the step in progress finishes, a checkpoint is saved, and
 * the command exits 128 + signal. A second signal ends it at once (the checkpoint files are
 * replaced atomically, so the previous one stays whole). */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) {
    stop_signal = sig;
    static const char msg[] = "\nmoe: signal received: saving a checkpoint after this step (again to quit now)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
    signal(sig, SIG_DFL);
}

static void catch_stop_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

/* The run's config: defaults, SRC's model keys (--init-from) or the run's own keys (--resume),
 * then --config and --set on top. *from is opened for --init-from. */
static moe_config train_config(const train_opts *o, model_source *from) {
    moe_config c = moe_config_default();
    if (o->init_from) {
        if (o->resume) die(2, "train: --init-from starts a new run; --resume continues one (not both)");
        *from = source_open(o->init_from, &c);
    }
    // the run's own keys, training ones included: a plain --resume continues the run as it was
    if (o->resume) check(moe_run_config(o->out, &c));
    apply_keys(&c, o->config, &o->sets);
    check(moe_config_validate(&c));
    return c;
}

/* The dataset of the comma-separated entries in list; NULL for a NULL list. A --data that names
 * nothing is a usage error; for the others the library says so. */
static moe_dataset *load_data(const char *list, int vocab_size, int is_train_data) {
    if (!list) return NULL;
    char *copy = strdup(list), *paths[256];
    if (!copy) die(1, "out of memory");
    int n = split_list(copy, paths, 256);
    if (n == 0 && is_train_data) die(2, "train: --data is empty");
    moe_dataset *d;
    check(moe_dataset_load((const char *const *)paths, n, vocab_size, &d));
    print_notices(d);
    free(copy);
    return d;
}

/* llm.c's split: --data DIR of shards named *_train*.bin and *_val*.bin, without --val-data,
 * trains on the first and validates on the second (the patterns, in o, are static). */
static void llmc_split(train_opts *o) {
    static char train[PATH_MAX + 16], val[PATH_MAX + 16];
    if (o->val || strchr(o->data, ',') || !is_dir(o->data) || strlen(o->data) > PATH_MAX) return;
    const char *sep = o->data[strlen(o->data) - 1] == '/' ? "" : "/";
    snprintf(train, sizeof train, "%s%s*_train*.bin", o->data, sep);
    snprintf(val, sizeof val, "%s%s*_val*.bin", o->data, sep);
    glob_t gt, gv;
    int ht = glob(train, 0, NULL, &gt) == 0, hv = glob(val, 0, NULL, &gv) == 0;
    if (ht && hv) {
        if (!o->quiet)
            printf("moe: %s: training on its %zu *_train*.bin shards, validating on its %zu *_val*.bin shards\n", o->data,
                   gt.gl_pathc, gv.gl_pathc);
        o->data = train;
        o->val = val;
    }
    if (ht) globfree(&gt);
    if (hv) globfree(&gv);
}

/* --check-data: every token of d read and checked now (on rank 0, which speaks for the job). */
static void check_all(const moe_dataset *d, const char *what, int quiet) {
    if (!d || moe_dist_rank() != 0) return;
    double t0 = now_seconds();
    check(moe_dataset_check(d));
    if (!quiet)
        printf("moe: %s data checked: %lld tokens in %d file(s), all within the vocabulary (%.1f s)\n", what,
               (long long)moe_dataset_len(d), moe_dataset_n_files(d), now_seconds() - t0);
}

/* ---------------------------------------------------------------- the tokenizer */

/* The run's tokenizer: the file to copy into it, where it comes from (for messages), and the
 * hash that names it (data sidecars, --tokenizer; "" for --init-from's, not loaded). */
typedef struct {
    char *json, *config; /* NULL: the run has no tokenizer */
    char *sidecar;       /* the first data file's sidecar; NULL when none has one */
    const char *origin;  /* sidecar, --tokenizer or --init-from */
    char hash[17];
} run_tokenizer;

/* Checks each data file that has a shard sidecar (moe tokenize) against the model: a vocabulary
 * within vocab_size, one tokenizer for all; the first sidecar and its tokenizer go to *rt. */
static void check_sidecars(const moe_dataset *d, const moe_config *c, run_tokenizer *rt) {
    for (int i = 0; d && i < moe_dataset_n_files(d); i++) {
        const char *path = moe_dataset_file(d, i).path;
        shard_sidecar s;
        if (!sidecar_read(path, &s)) continue;
        if (c->vocab_size < s.vocab_size)
            die(1, "train: '%s' holds tokens of a vocabulary of %d ids (sidecar '%s'), more than the model's vocab_size %d: "
                   "--set vocab_size=%d", path, s.vocab_size, s.path, c->vocab_size, s.vocab_size);
        if (!rt->sidecar) {
            rt->sidecar = s.path;
            memcpy(rt->hash, s.hash, sizeof rt->hash);
            rt->json = s.tokenizer;
            rt->config = s.tokenizer_config;
            rt->origin = rt->sidecar;
            s.path = s.tokenizer = s.tokenizer_config = NULL;
        } else if (strcmp(rt->hash, s.hash)) {
            die(1, "train: '%s' was tokenized with another tokenizer (%s, sidecar '%s') than the data of sidecar '%s' (%s)",
                path, s.hash, s.path, rt->sidecar, rt->hash);
        }
        sidecar_free(&s);
    }
}

/* The run's tokenizer: --tokenizer (its vocabulary within vocab_size, the same as the data's),
 * else the data's (shard sidecars), else --init-from SRC's tokenizer.json. */
static run_tokenizer plan_tokenizer(const train_opts *o, const moe_config *c, const moe_dataset *train,
                                    const moe_dataset *val) {
    run_tokenizer rt = {NULL, NULL, NULL, NULL, ""};
    check_sidecars(train, c, &rt);
    check_sidecars(val, c, &rt);
    if (o->tokenizer) {
        moe_tokenizer *t;
        check(moe_tokenizer_load(o->tokenizer, &t));
        int v = moe_tokenizer_vocab_size(t);
        if (v > c->vocab_size)
            die(1, "train: tokenizer '%s' has %d ids, more than the model's vocab_size %d: --set vocab_size=%d",
                o->tokenizer, v, c->vocab_size, v);
        if (rt.sidecar && strcmp(rt.hash, moe_tokenizer_hash(t)))
            die(1, "train: tokenizer '%s' (%s) is not the one that tokenized the data (%s, sidecar '%s')", o->tokenizer,
                moe_tokenizer_hash(t), rt.hash, rt.sidecar);
        memcpy(rt.hash, moe_tokenizer_hash(t), sizeof rt.hash);
        moe_tokenizer_free(t);
        free(rt.json);
        free(rt.config);
        rt.json = tokenizer_json(o->tokenizer);
        rt.config = tokenizer_config_beside(rt.json);
        rt.origin = o->tokenizer;
    } else if (rt.sidecar && !rt.json && moe_dist_rank() == 0) {
        fprintf(stderr, "moe: warning: sidecar '%s' names tokenizer %s, but its .tokenizer.json beside it is missing: "
                        "the run gets no tokenizer (give --tokenizer)\n", rt.sidecar, rt.hash);
    } else if (!rt.sidecar && o->init_from && is_dir(o->init_from)) {
        char *json = path_in(o->init_from, "tokenizer.json");
        if (exists(json)) {
            rt.json = json;
            rt.config = tokenizer_config_beside(json);
            rt.origin = o->init_from;
        } else {
            free(json);
        }
    }
    return rt;
}

/* Copies the run's tokenizer into DIR as tokenizer.json (and tokenizer_config.json), atomically;
 * a resumed run keeps the one it has. On rank 0, after the trainer holds DIR. */
static void install_tokenizer(const train_opts *o, const run_tokenizer *rt) {
    if (!rt->json || moe_dist_rank() != 0) return;
    char *dst = path_in(o->out, "tokenizer.json");
    if (o->resume && exists(dst)) {
        moe_tokenizer *t;
        check(moe_tokenizer_load(o->out, &t));
        if (rt->hash[0] && strcmp(rt->hash, moe_tokenizer_hash(t)))
            fprintf(stderr, "moe: warning: the run keeps its tokenizer %s (%s); the tokenizer of %s is another (%s)\n",
                    dst, moe_tokenizer_hash(t), rt->origin, rt->hash);
        moe_tokenizer_free(t);
        free(dst);
        return;
    }
    copy_file(rt->json, dst);
    free(dst);
    dst = path_in(o->out, "tokenizer_config.json");
    if (rt->config) copy_file(rt->config, dst);
    else if (exists(dst) && unlink(dst) != 0) die(1, "train: cannot remove '%s': %s", dst, strerror(errno));
    free(dst);
    if (!o->quiet) printf("moe: tokenizer of %s copied to %s/tokenizer.json\n", rt->origin, o->out);
}

static void free_tokenizer(run_tokenizer *rt) {
    free(rt->json);
    free(rt->config);
    free(rt->sidecar);
}

/* ---------------------------------------------------------------- the run */

/* The trainer with its banner, and the weights of --init-from. */
static moe_trainer *start_trainer(const train_opts *o, const moe_config *c, moe_dataset *train, moe_dataset *val,
                                  const model_source *from) {
    moe_trainer *t;
    if (o->resume && o->overwrite) die(2, "train: --resume continues the run in --out; --overwrite replaces it (not both)");
    moe_run_mode mode = o->resume ? MOE_RUN_RESUME : o->overwrite ? MOE_RUN_OVERWRITE : MOE_RUN_NEW;
    moe_status st = moe_trainer_create(c, train, val, o->out, mode, &t);
    if (st == MOE_STATUS_EXISTS)
        die(1, "%s; continue it with --resume, or start over with --overwrite", moe_last_error());
    if (st == MOE_STATUS_BUSY) die(1, "%s; wait for it to end, or train into another --out", moe_last_error());
    check(st);
    if (moe_trainer_data_change(t) && moe_dist_rank() == 0) // on record in metrics.jsonl too
        fprintf(stderr, "moe: warning: resuming with other training data: %s\n", moe_trainer_data_change(t));
    const moe_config *tc = moe_trainer_config(t);
    moe_model *m = moe_trainer_model(t);
    if (!o->quiet) {
        int threads = 1;
#ifdef _OPENMP
        threads = omp_get_max_threads();
#endif
        printf("moe: %lld parameters (%lld active per token), %d layers (%d MoE, E=%d K=%d S=%d), %d threads%s\n",
               (long long)moe_model_n_params(m), (long long)moe_model_active_params(m), tc->n_layer,
               moe_model_n_moe_layers(m), tc->n_experts, tc->top_k, tc->n_shared, threads,
               moe_trainer_threads_auto(t) ? " (automatic: fewer while the cores are shared)" : "");
        printf("moe: BLAS %s%s%s\n", moe_blas_info(), getenv("MOE_BLAS_RETUNED") ? "; OpenBLAS had chosen " : "",
               getenv("MOE_BLAS_RETUNED") ? getenv("MOE_BLAS_RETUNED") : "");
        if (o->resume) printf("moe: resumed %s at step %lld\n", o->out, (long long)moe_trainer_steps_done(t));
    }
    if (o->init_from) {
        moe_model *src = source_load(from, tc->seq_len);
        moe_init_report r;
        check(moe_trainer_init_from(t, src, &r));
        moe_model_free(src);
        if (!o->quiet) print_init_report(o->init_from, &r);
    }
    return t;
}

/* Steps until the schedule's end or --stop-after; returns the signal that stopped it (0: none)
 * and the milliseconds spent in training steps. */
static int train_steps(const train_opts *o, moe_trainer *t, double *train_ms) {
    const moe_config *tc = moe_trainer_config(t);
    moe_model *m = moe_trainer_model(t);
    int64_t first = moe_trainer_steps_done(t);
    progress prog = {bar_wanted() && !o->quiet, 0, first, tc->steps, now_seconds(), 0.0};
    if (o->stop_after > 0 && first + o->stop_after < prog.target) prog.target = first + o->stop_after;
    int stopped = 0;
    *train_ms = 0.0;
    while (moe_trainer_steps_done(t) < tc->steps &&
           (o->stop_after == 0 || moe_trainer_steps_done(t) - first < o->stop_after)) {
        moe_step_info s;
        moe_status st = moe_trainer_step(t, &s);
        if (st != MOE_STATUS_OK) progress_clear(&prog);
        check(st);
        *train_ms += s.step_ms;
        if (!o->quiet && (s.step % tc->log_every == 0 || s.has_val || s.skipped || s.step == tc->steps))
            print_step(&prog, &s, tc, m);
        if (!o->quiet && s.threads_change[0]) {
            progress_clear(&prog);
            printf("moe: step %lld: %s\n", (long long)s.step, s.threads_change);
        }
        if (!o->quiet) progress_draw(&prog, &s);
        if ((stopped = moe_dist_max_int(stop_signal))) break; // every rank stops after the same step
    }
    progress_clear(&prog);
    return stopped;
}

/* --profile: where the time of this invocation's steps went, by phase. */
static void print_profile(moe_model *m, int64_t steps, double train_ms) {
    double ph[MOE_PHASE_COUNT], sum = 0.0;
    moe_model_profile(m, ph);
    for (int i = 0; i < MOE_PHASE_COUNT; i++) sum += ph[i];
    double total = train_ms / 1e3 > sum ? train_ms / 1e3 : sum;
    printf("profile over %lld steps (%.2f s of training steps):\n", (long long)steps, train_ms / 1e3);
    for (int i = 0; i < MOE_PHASE_COUNT; i++)
        printf("  %-10s %8.3f s  %5.1f%%\n", moe_phase_name((moe_phase)i), ph[i], 100.0 * ph[i] / total);
    printf("  %-10s %8.3f s  %5.1f%%\n", "other", total - sum, 100.0 * (total - sum) / total);
}

static int run_train(void *opts) {
    train_opts o = *(const train_opts *)opts;
    model_source from = {NULL, 0, moe_config_default()};
    moe_config c = train_config(&o, &from);
    check(moe_dist_setup((int)o.ep));
    use_max_memory(o.max_memory);
    if ((!o.device || !strcmp(o.device, "cpu")) && o.dtype && !strcmp(o.dtype, "bf16"))
        die(2, "train: --dtype bf16 on the CPU keeps bf16 weights for inference (moe sample, eval, logits, route); "
               "training on the CPU computes in fp32");
    use_device(o.device, o.dtype, &c);
    o.quiet |= moe_dist_rank() != 0; // rank 0 speaks for the job
    o.profile &= moe_dist_rank() == 0;
    llmc_split(&o);
    moe_dataset *train = load_data(o.data, c.vocab_size, 1), *val = load_data(o.val, c.vocab_size, 0);
    run_tokenizer tok = plan_tokenizer(&o, &c, train, val);
    if (o.check_data) {
        check_all(train, "training", o.quiet);
        check_all(val, "validation", o.quiet);
    }
    moe_trainer *t = start_trainer(&o, &c, train, val, &from);
    install_tokenizer(&o, &tok);
    free_tokenizer(&tok);
    moe_model *m = moe_trainer_model(t);
    int64_t first = moe_trainer_steps_done(t), steps = moe_trainer_config(t)->steps;
    double train_ms;
    moe_model_profile_reset(m);
    catch_stop_signals();
    int stopped = train_steps(&o, t, &train_ms);
    if (o.profile && train_ms > 0) print_profile(m, moe_trainer_steps_done(t) - first, train_ms);
    // the trainer saves at the last step; save here when stopped early or when there was no step
    if (moe_trainer_steps_done(t) < steps || moe_trainer_steps_done(t) == first) check(moe_trainer_save(t));
    if (!o.quiet) printf("moe: saved %s/model.safetensors at step %lld\n", o.out, (long long)moe_trainer_steps_done(t));
    if (stopped) {
        if (moe_dist_rank() == 0)
            fprintf(stderr, "moe: stopped by %s after step %lld; continue with --resume\n",
                    stopped == SIGINT    ? "SIGINT"
                    : stopped == SIGTERM ? "SIGTERM"
                                         : "a signal",
                    (long long)moe_trainer_steps_done(t));
        moe_trainer_free(t);
        exit(128 + stopped);
    }
    moe_trainer_free(t);
    return 0;
}

const cli_command moe_cmd_train = {
    "train",
    "train a model on text or token shards",
    "train --data FILE[,FILE...] --out DIR [options]",
    "Trains an MoE transformer on text files (bytes, vocab 256) or llm.c token shards\n"
    "(uint16 or uint32 tokens; moe tokenize writes them), read from the files a batch at\n"
    "a time (the corpus is never loaded whole), writing to DIR:\n"
    "model.safetensors (weights + config), state.bin (optimizer, step, data position),\n"
    "metrics.jsonl (one record per step), and tokenizer.json when the run has a tokenizer.\n",
    CLI_FLAGS(train_flags),
    train_help_tail,
    sizeof(train_opts),
    &(train_opts){.ep = 1},
    run_train,
};
