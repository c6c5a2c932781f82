/*
 * moe.c — the `moe` command line: train, sample, eval. The only code that exits; everything
 * else is the library (include/moe.h). Errors go to stderr as "moe: <message>" with exit 1
 * (bad data, files, configs) or 2 (bad command-line usage).
 */
#define _POSIX_C_SOURCE 200809L
#include "moe.h"
#include "args.h"
#include "plot.h"

#include <math.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static _Noreturn void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (moe_dist_size() > 1) fprintf(stderr, "moe (rank %d of %d): ", moe_dist_rank(), moe_dist_size());
    else fprintf(stderr, "moe: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    moe_dist_abort(code); // under MPI: ends every rank, none is left waiting in a collective
    exit(code);
}

static void check(moe_status st) {
    if (st != MOE_STATUS_OK) die(1, "%s: %s", moe_status_str(st), moe_last_error());
}

/* The value of a numeric flag (its range is in args.c's table); exit 2 when refused. */
static double flag_value(const char *flag, const char *v) {
    const moe_arg_spec *spec = moe_arg_find(flag);
    char err[512];
    double x;
    if (!spec) die(1, "internal: no range for flag %s", flag);
    if (moe_arg_number(spec, v, &x, err, sizeof err) != 0) die(2, "%s", err);
    return x;
}

/* A flag that is short for --set KEY=VALUE: its value checked, the KEY=VALUE string (to free). */
static char *flag_as_set(const char *flag, const char *key, const char *v) {
    flag_value(flag, v);
    size_t n = strlen(key) + strlen(v) + 2;
    char *kv = malloc(n);
    if (!kv) die(1, "out of memory");
    snprintf(kv, n, "%s=%s", key, v);
    return kv;
}

static const char *need(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) die(2, "%s needs a value", argv[*i]);
    return argv[++*i];
}

/* Splits a comma-separated list in place. */
static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) out[n++] = tok;
    return n;
}

/* dir/name, to free. */
static char *path_in(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) die(1, "out of memory");
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* 1 if dir/name exists. */
static int has_file(const char *dir, const char *name) {
    char *p = path_in(dir, name);
    struct stat sb;
    int ok = stat(p, &sb) == 0;
    free(p);
    return ok;
}

/* A checkpoint given as its run directory or as the file itself; to free. */
static char *ckpt_path(const char *arg) {
    return has_file(arg, "model.safetensors") ? path_in(arg, "model.safetensors") : strdup(arg);
}

/* Reads a whole text file (or pipe) as a string, to free; exits naming it as `what` when it
 * cannot be read or holds a NUL byte (text ends there). */
static char *read_text(const char *path, const char *what) {
    FILE *f = fopen(path, "rb");
    if (!f) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) die(1, "out of memory");
        n += fread(buf + n, 1, cap - 1 - n, f);
        if (n < cap - 1) break;
        buf = realloc(buf, cap *= 2);
    }
    if (ferror(f)) die(1, "cannot read %s '%s': %s", what, path, strerror(errno));
    fclose(f);
    buf[n] = 0;
    if (strlen(buf) != n) die(1, "%s '%s' holds a NUL byte: it is not text", what, path);
    return buf;
}

/* Applies a JSON config file (may be NULL), then each --set KEY=VALUE, to c. */
static void apply_keys(moe_config *c, const char *config, char **sets, int n_sets) {
    if (config) {
        char *txt = read_text(config, "config");
        check(moe_config_apply_json(c, txt, config));
        free(txt);
    }
    char err[1200];
    for (int i = 0; i < n_sets; i++)
        if (moe_arg_set(c, sets[i], err, sizeof err) != 0) die(strchr(sets[i], '=') ? 1 : 2, "%s", err);
}

/* A model to start from (import, --init-from): where, which kind, and its own config. */
typedef struct {
    const char *path;
    int hf;
    moe_config cfg;
} source;

/* Reads the source's config once; *c = its model keys with default training keys. */
static source source_open(const char *path, moe_config *c) {
    source s = {path, has_file(path, "config.json"), moe_config_default()}; // HF directories have config.json
    if (s.hf) {
        check(moe_hf_config(path, &s.cfg));
    } else {
        char *p = ckpt_path(path);
        check(moe_checkpoint_config(p, &s.cfg, NULL));
        free(p);
    }
    moe_config train = moe_config_default();
    *c = s.cfg;
    moe_config_take_training(c, &train);
    return s;
}

/* Loads the source model; its activations are planned for at most seq_len tokens. */
static moe_model *source_load(const source *s, int seq_len) {
    moe_model *m;
    if (s->hf) {
        moe_config c = s->cfg;
        if (seq_len < c.seq_len) c.seq_len = seq_len; // shapes do not depend on it
        check(moe_hf_load(s->path, &c, 1, &m));
    } else {
        char *p = ckpt_path(s->path);
        check(moe_model_load(p, 1, &m));
        free(p);
    }
    return m;
}

static void print_init_report(const char *src, const moe_init_report *r) {
    printf("moe: initialised from %s: %d tensors copied", src, r->copied);
    if (r->upcycled) printf(", %d layers upcycled (dense FFN copied into every expert)", r->upcycled);
    if (r->fresh) printf(", %d router tensors fresh", r->fresh);
    printf("\n");
}

/* ---------------------------------------------------------------- train */

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

static const char *train_help =
    "usage: moe train --data FILE[,FILE...] --out DIR [options]\n"
    "\n"
    "Trains an MoE transformer on text files (bytes, vocab 256) or llm.c token shards\n"
    "(magic 20240520, uint16 tokens), writing to DIR: model.safetensors (weights + config),\n"
    "state.bin (optimizer, step, data position), metrics.jsonl (one record per step).\n"
    "\n"
    "options:\n"
    "  --data FILES       training data, comma-separated (concatenated in order)\n"
    "  --val-data FILES   validation data; default: the last val_frac of --data\n"
    "  --config FILE      JSON object of config keys (below)\n"
    "  --set KEY=VALUE    set one config key; repeatable, applied after --config\n"
    "  --out DIR          run directory (created if missing)\n"
    "  --steps N          same as --set steps=N\n"
    "  --ep N             under mpirun: N ranks share each MoE layer's experts (E/N each);\n"
    "                     the other ranks/N-fold is data parallel (docs/distributed.md)\n"
    "  --resume           continue the run in DIR from its checkpoint, with its keys (model and\n"
    "                     training); --config/--set may change training keys (lr, steps, ...)\n"
    "  --init-from SRC    start a new run from SRC's weights: a Hugging Face directory (Mixtral;\n"
    "                     Llama/Mistral dense) or a moe checkpoint. Model keys come from SRC, then\n"
    "                     --config/--set; a layer made MoE where SRC is dense is upcycled (its FFN\n"
    "                     copied into every expert, router fresh; see moe import --help)\n"
    "  --stop-after N     stop (and checkpoint) after N steps of this invocation, keeping the\n"
    "                     schedule of --steps; continue later with --resume\n"
    "  --quiet            no progress output (metrics.jsonl and TensorBoard files are still written)\n"
    "  --log-every N      a log line every N steps (and at evaluations); same as --set log_every=N.\n"
    "                     On a terminal a progress bar with the ETA stays under the log lines;\n"
    "                     otherwise each line ends with the ETA\n"
    "  --profile          at the end, print where the training time went, by phase\n"
    "\n";

/* Progress of a training run: on a terminal, one bar redrawn in place (at most 10 times a
 * second) under the log lines; otherwise only the log lines, each with the ETA. */
typedef struct {
    int tty, drawn;
    int64_t first, target; /* steps done at the start; step this invocation stops at */
    double t0, last_draw;
} progress;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_dur(char *b, size_t n, double s) {
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(b, n, "%ldh%02ldm", t / 3600, t / 60 % 60);
    else if (t >= 60) snprintf(b, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(b, n, "%lds", t);
}

/* Seconds left, from this invocation's mean step time; -1 before the first step. */
static double eta(const progress *p, int64_t step) {
    if (step <= p->first) return -1;
    return (now_s() - p->t0) / (double)(step - p->first) * (double)(p->target - step);
}

static void progress_clear(progress *p) {
    if (p->tty && p->drawn) fputs("\r\033[K", stdout);
    p->drawn = 0;
}

static void progress_draw(progress *p, const moe_step_info *s) {
    double t = now_s();
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

static int cmd_train(int argc, char **argv) {
    char *data = NULL, *val = NULL, *out = NULL, *config = NULL, *init_from = NULL;
    source from = {NULL, 0, moe_config_default()};
    int resume = 0, quiet = 0, profile = 0;
    long stop_after = 0, ep = 1;
    moe_config c = moe_config_default();
    char **sets = calloc((size_t)argc, sizeof(char *));
    int n_sets = 0;
    if (!sets) die(1, "out of memory");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(train_help, stdout);
            moe_config_help(stdout);
            printf("\nNote: moe_layers every:k makes layers k-1, 2k-1, ... MoE; capacity is\n"
                   "max(min_capacity, ceil(top_k * tokens / n_experts * capacity_factor)) per expert.\n");
            exit(0);
        } else if (!strcmp(a, "--data")) data = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--val-data")) val = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--out")) out = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--config")) config = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--set")) sets[n_sets++] = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--steps")) sets[n_sets++] = flag_as_set("--steps", "steps", need(argc, argv, &i));
        else if (!strcmp(a, "--stop-after")) stop_after = (long)flag_value("--stop-after", need(argc, argv, &i));
        else if (!strcmp(a, "--resume")) resume = 1;
        else if (!strcmp(a, "--init-from")) init_from = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--ep")) ep = (long)flag_value("--ep", need(argc, argv, &i));
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "--log-every")) sets[n_sets++] = flag_as_set("--log-every", "log_every", need(argc, argv, &i));
        else if (!strcmp(a, "--profile")) profile = 1;
        else die(2, "train: unknown option '%s' (see moe train --help)", a);
    }
    if (!data) die(2, "train: --data is required (see moe train --help)");
    if (!out) die(2, "train: --out is required (see moe train --help)");
    if (init_from) {
        if (resume) die(2, "train: --init-from starts a new run; --resume continues one (not both)");
        from = source_open(init_from, &c);
    }
    if (resume) {
        // the run's own keys, training ones included, then --config/--set on top: a plain
        // --resume continues the run as it was
        check(moe_run_config(out, &c));
    }
    apply_keys(&c, config, sets, n_sets);
    check(moe_config_validate(&c));
    check(moe_dist_setup((int)ep));
    quiet |= moe_dist_rank() != 0; // rank 0 speaks for the job
    profile &= moe_dist_rank() == 0;
    char *paths[256];
    int n_paths = split_list(data, paths, 256);
    if (n_paths == 0) die(2, "train: --data is empty");
    moe_dataset *train = NULL, *vald = NULL;
    check(moe_dataset_load((const char *const *)paths, n_paths, c.vocab_size, &train));
    if (val) {
        int n_val = split_list(val, paths, 256);
        check(moe_dataset_load((const char *const *)paths, n_val, c.vocab_size, &vald));
    }
    moe_trainer *t;
    check(moe_trainer_create(&c, train, vald, out, resume, &t));
    const moe_config *tc = moe_trainer_config(t);
    moe_model *m = moe_trainer_model(t);
    if (!quiet) {
        int threads = 1;
#ifdef _OPENMP
        threads = omp_get_max_threads();
#endif
        printf("moe: %lld parameters (%lld active per token), %d layers (%d MoE, E=%d K=%d S=%d), %d threads\n",
               (long long)moe_model_n_params(m), (long long)moe_model_active_params(m), tc->n_layer,
               moe_model_n_moe_layers(m), tc->n_experts, tc->top_k, tc->n_shared, threads);
        if (resume) printf("moe: resumed %s at step %lld\n", out, (long long)moe_trainer_steps_done(t));
    }
    if (init_from) {
        moe_model *src = source_load(&from, tc->seq_len);
        moe_init_report r;
        check(moe_trainer_init_from(t, src, &r));
        moe_model_free(src);
        if (!quiet) print_init_report(init_from, &r);
    }
    int64_t first = moe_trainer_steps_done(t);
    double train_ms = 0.0;
    progress prog = {isatty(STDOUT_FILENO) && !quiet, 0, first, tc->steps, now_s(), 0.0};
    if (stop_after > 0 && first + stop_after < prog.target) prog.target = first + stop_after;
    moe_model_profile_reset(m);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    int stopped = 0;
    while (moe_trainer_steps_done(t) < tc->steps && (stop_after == 0 || moe_trainer_steps_done(t) - first < stop_after)) {
        moe_step_info s;
        moe_status st = moe_trainer_step(t, &s);
        if (st != MOE_STATUS_OK) progress_clear(&prog);
        check(st);
        train_ms += s.step_ms;
        if (!quiet && (s.step % tc->log_every == 0 || s.has_val || s.skipped || s.step == tc->steps))
            print_step(&prog, &s, tc, m);
        if (!quiet) progress_draw(&prog, &s);
        if ((stopped = moe_dist_max_int(stop_signal))) break; // every rank stops after the same step
    }
    progress_clear(&prog);
    if (profile && train_ms > 0) {
        double ph[MOE_PHASE_COUNT], sum = 0.0;
        moe_model_profile(m, ph);
        for (int i = 0; i < MOE_PHASE_COUNT; i++) sum += ph[i];
        double total = train_ms / 1e3 > sum ? train_ms / 1e3 : sum;
        printf("profile over %lld steps (%.2f s of training steps):\n", (long long)(moe_trainer_steps_done(t) - first),
               train_ms / 1e3);
        for (int i = 0; i < MOE_PHASE_COUNT; i++)
            printf("  %-10s %8.3f s  %5.1f%%\n", moe_phase_name((moe_phase)i), ph[i], 100.0 * ph[i] / total);
        printf("  %-10s %8.3f s  %5.1f%%\n", "other", total - sum, 100.0 * (total - sum) / total);
    }
    // the trainer saves at the last step; save here when stopped early or when there was no step
    if (moe_trainer_steps_done(t) < tc->steps || moe_trainer_steps_done(t) == first) check(moe_trainer_save(t));
    if (!quiet) printf("moe: saved %s/model.safetensors at step %lld\n", out, (long long)moe_trainer_steps_done(t));
    if (stopped) {
        if (moe_dist_rank() == 0)
            fprintf(stderr, "moe: stopped by %s after step %lld; continue with --resume\n",
                    stopped == SIGINT ? "SIGINT" : stopped == SIGTERM ? "SIGTERM" : "a signal", (long long)moe_trainer_steps_done(t));
        moe_trainer_free(t);
        exit(128 + stopped);
    }

    moe_trainer_free(t);
    for (int i = 0; i < n_sets; i++) free(sets[i]);
    free(sets);
    free(data);
    free(val);
    free(out);
    free(config);
    free(init_from);
    return 0;
}

/* ---------------------------------------------------------------- sample */

static const char *sample_help =
    "usage: moe sample --ckpt DIR --prompt TEXT [options]\n"
    "\n"
    "Generates text from a checkpoint (DIR/model.safetensors, or the file itself).\n"
    "Routing uses the eval capacity factor (dropless by default).\n"
    "\n"
    "options:\n"
    "  --ckpt DIR         run directory or .safetensors file\n"
    "  --prompt TEXT      prompt (bytes, for vocab 256 models)\n"
    "  --tokens N         tokens to generate (default 200)\n"
    "  --temperature T    0 = greedy (default 0.8)\n"
    "  --top-k K          keep the K most likely tokens; 0 = off (default 0)\n"
    "  --top-p P          nucleus filter; 1 = off (default 0.95)\n"
    "  --seed S           sampling seed (default 42)\n"
    "  --threads N        OpenMP threads (default: OpenMP's)\n";

static int cmd_sample(int argc, char **argv) {
    const char *ckpt = NULL, *prompt = NULL;
    long n_new = 200, top_k = 0;
    double temp = 0.8, top_p = 0.95;
    unsigned long long seed = 42;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(sample_help, stdout);
            exit(0);
        } else if (!strcmp(a, "--ckpt")) ckpt = need(argc, argv, &i);
        else if (!strcmp(a, "--prompt")) prompt = need(argc, argv, &i);
        else if (!strcmp(a, "--tokens")) n_new = (long)flag_value("--tokens", need(argc, argv, &i));
        else if (!strcmp(a, "--temperature")) temp = flag_value("--temperature", need(argc, argv, &i));
        else if (!strcmp(a, "--top-k")) top_k = (long)flag_value("--top-k", need(argc, argv, &i));
        else if (!strcmp(a, "--top-p")) top_p = flag_value("--top-p", need(argc, argv, &i));
        else if (!strcmp(a, "--seed")) seed = (unsigned long long)flag_value("--seed", need(argc, argv, &i));
        else if (!strcmp(a, "--threads")) {
#ifdef _OPENMP
            omp_set_num_threads((int)flag_value("--threads", need(argc, argv, &i)));
#else
            need(argc, argv, &i);
#endif
        } else die(2, "sample: unknown option '%s' (see moe sample --help)", a);
    }
    if (!ckpt) die(2, "sample: --ckpt is required");
    if (!prompt) die(2, "sample: --prompt is required");
    size_t np = strlen(prompt);
    if (np == 0) die(2, "sample: --prompt is empty; give at least one character");
    char *path = ckpt_path(ckpt);
    moe_model *m;
    check(moe_model_load(path, 1, &m));
    const moe_config *c = moe_model_config(m);
    if (c->vocab_size < 256) die(1, "sample: the model's vocab_size %d cannot encode a text prompt as bytes", c->vocab_size);
    int *toks = malloc(np * sizeof(int)), *out = malloc(((size_t)n_new + 1) * sizeof(int));
    if (!toks || !out) die(1, "out of memory");
    for (size_t i = 0; i < np; i++) toks[i] = (unsigned char)prompt[i];
    check(moe_model_sample(m, toks, (int)np, out, (int)n_new, (float)temp, (int)top_k, (float)top_p, seed));
    fwrite(prompt, 1, np, stdout);
    for (long i = 0; i < n_new; i++) {
        if (c->vocab_size == 256) putchar(out[i]);
        else printf(" %d", out[i]);
    }
    putchar('\n');
    free(toks);
    free(out);
    free(path);
    moe_model_free(m);
    return 0;
}

/* ---------------------------------------------------------------- eval */

/* Options shared by eval and route: a checkpoint, data, batching, JSON output. */
typedef struct {
    const char *ckpt;
    char *data;
    long batch, max_batches;
    int json;
} ckpt_data_opts;

static ckpt_data_opts parse_ckpt_data(int argc, char **argv, const char *cmd, const char *help, long max_batches) {
    ckpt_data_opts o = {NULL, NULL, 8, max_batches, 0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            exit(0);
        } else if (!strcmp(a, "--ckpt")) o.ckpt = need(argc, argv, &i);
        else if (!strcmp(a, "--data")) o.data = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--batch-size")) o.batch = (long)flag_value("--batch-size", need(argc, argv, &i));
        else if (!strcmp(a, "--max-batches")) o.max_batches = (long)flag_value("--max-batches", need(argc, argv, &i));
        else if (!strcmp(a, "--json")) o.json = 1;
        else die(2, "%s: unknown option '%s' (see moe %s --help)", cmd, a, cmd);
    }
    if (!o.ckpt) die(2, "%s: --ckpt is required", cmd);
    if (!o.data) die(2, "%s: --data is required", cmd);
    return o;
}

static const char *eval_help =
    "usage: moe eval --ckpt DIR --data FILE[,FILE...] [options]\n"
    "\n"
    "Mean cross-entropy of a checkpoint over non-overlapping seq_len windows of the data,\n"
    "with per-layer expert loads. Routing uses eval_capacity_factor (dropless by default) and\n"
    "reports what the training capacity would have dropped.\n"
    "\n"
    "options:\n"
    "  --ckpt DIR         run directory or .safetensors file\n"
    "  --data FILES       evaluation data, comma-separated\n"
    "  --batch-size B     sequences per forward pass (default 8)\n"
    "  --max-batches N    stop after N batches; 0 = all (default 0)\n"
    "  --json             one JSON object on stdout instead of text\n";

static int cmd_eval(int argc, char **argv) {
    ckpt_data_opts o = parse_ckpt_data(argc, argv, "eval", eval_help, 0);
    const char *ckpt = o.ckpt;
    char *data = o.data;
    long batch = o.batch, max_batches = o.max_batches;
    int json = o.json;
    char *path = ckpt_path(ckpt);
    moe_model *m;
    check(moe_model_load(path, (int)batch, &m));
    const moe_config *c = moe_model_config(m);
    char *paths[256];
    int n_paths = split_list(data, paths, 256);
    moe_dataset *d;
    check(moe_dataset_load((const char *const *)paths, n_paths, c->vocab_size, &d));
    int nm = moe_model_n_moe_layers(m);
    int64_t total_e = 0;
    for (int i = 0; i < nm; i++) total_e += moe_model_layer_stats(m, i)->n_experts;
    int64_t *loads = calloc((size_t)(total_e ? total_e : 1), sizeof(int64_t));
    float loss;
    int64_t n_tok, would_drop;
    check(moe_evaluate(m, d, (int)batch, (int)max_batches, &loss, &n_tok, loads, &would_drop));
    int64_t assigned = n_tok * c->top_k * nm;
    if (json) {
        printf("{\"loss\":%.9g,\"perplexity\":%.9g,\"bits_per_token\":%.9g,\"tokens\":%lld,\"would_drop_frac\":%.6g,\"layers\":[",
               loss, exp(loss), loss / log(2.0), (long long)n_tok, assigned ? (double)would_drop / (double)assigned : 0.0);
        for (int i = 0, off = 0; i < nm; i++) {
            int E = moe_model_layer_stats(m, i)->n_experts;
            printf("%s{\"layer\":%d,\"load\":[", i ? "," : "", moe_model_layer_stats(m, i)->layer);
            for (int e = 0; e < E; e++) printf("%s%lld", e ? "," : "", (long long)loads[off + e]);
            printf("]}");
            off += E;
        }
        printf("]}\n");
    } else {
        printf("loss %.4f | perplexity %.3f | bits/token %.4f | %lld tokens\n", loss, exp(loss), loss / log(2.0),
               (long long)n_tok);
        for (int i = 0, off = 0; i < nm; i++) {
            int E = moe_model_layer_stats(m, i)->n_experts;
            const int64_t *ld = loads + off;
            int64_t tot = 0, mx = 0;
            for (int e = 0; e < E; e++) {
                tot += ld[e];
                mx = ld[e] > mx ? ld[e] : mx;
            }
            printf("layer %2d load %%:", moe_model_layer_stats(m, i)->layer);
            for (int e = 0; e < E; e++) printf(" %5.1f", tot ? 100.0 * (double)ld[e] / (double)tot : 0.0);
            printf(" | maxvio %.2f\n", tot ? ((double)mx - (double)tot / E) / ((double)tot / E) : 0.0);
            off += E;
        }
        if (nm) printf("the training capacity factor %.2f would drop %.2f%% of assignments\n", c->capacity_factor,
                       assigned ? 100.0 * (double)would_drop / (double)assigned : 0.0);
    }
    free(loads);
    moe_dataset_free(d);
    moe_model_free(m);
    free(path);
    free(data);
    return 0;
}

/* ---------------------------------------------------------------- route */

static const char *route_help =
    "usage: moe route --ckpt DIR --data FILE[,FILE...] [options]\n"
    "\n"
    "Expert specialisation report: which experts take which tokens, per MoE layer, by byte\n"
    "class of the token (letter, digit, space, punctuation, other; byte-level models) and by\n"
    "source file. Each row is the share (%) of that group's routed assignments going to each\n"
    "expert; the last column is the mutual information I(expert; group) in bits (0 = no\n"
    "specialisation). Routing as at evaluation (eval_capacity_factor).\n"
    "\n"
    "options:\n"
    "  --ckpt DIR         run directory or .safetensors file\n"
    "  --data FILES       comma-separated; each file is a source group\n"
    "  --batch-size B     sequences per forward pass (default 8)\n"
    "  --max-batches N    batches per file; 0 = all (default 16)\n"
    "  --json             one JSON object instead of tables\n";

enum { CLS_LETTER, CLS_DIGIT, CLS_SPACE, CLS_PUNCT, CLS_OTHER, N_CLS };
static const char *const cls_names[N_CLS] = {"letter", "digit", "space", "punct", "other"};

static int byte_class(int t) {
    if ((t >= 'a' && t <= 'z') || (t >= 'A' && t <= 'Z')) return CLS_LETTER;
    if (t >= '0' && t <= '9') return CLS_DIGIT;
    if (t == ' ' || t == '\n' || t == '\t' || t == '\r') return CLS_SPACE;
    if (t >= 33 && t <= 126) return CLS_PUNCT;
    return CLS_OTHER;
}

/* Mutual information in bits between the row label and the expert, from counts (rows x E). */
static double mutual_info(const double *cnt, int rows, int E) {
    double tot = 0, mi = 0;
    for (int i = 0; i < rows * E; i++) tot += cnt[i];
    if (tot == 0) return 0;
    for (int r = 0; r < rows; r++) {
        double pr = 0;
        for (int e = 0; e < E; e++) pr += cnt[r * E + e];
        for (int e = 0; e < E; e++) {
            double pe = 0;
            for (int q = 0; q < rows; q++) pe += cnt[q * E + e];
            double j = cnt[r * E + e];
            if (j > 0) mi += j / tot * log2(j * tot / (pr * pe));
        }
    }
    return mi;
}

static void print_table(const char *title, const double *cnt, const char *const *names, int rows, int E, int json) {
    if (json) {
        printf("\"%s\":{", title);
        for (int r = 0; r < rows; r++) {
            printf("%s\"%s\":[", r ? "," : "", names[r]);
            for (int e = 0; e < E; e++) printf("%s%.0f", e ? "," : "", cnt[r * E + e]);
            printf("]");
        }
        printf("},\"%s_mutual_info_bits\":%.6f", title, mutual_info(cnt, rows, E));
        return;
    }
    printf("  by %s (%% of the group's assignments per expert)\n  %-14s", title, "");
    for (int e = 0; e < E; e++) printf(" %5d", e);
    printf(" |  tokens\n");
    for (int r = 0; r < rows; r++) {
        double tot = 0;
        for (int e = 0; e < E; e++) tot += cnt[r * E + e];
        if (tot == 0) continue;
        printf("  %-14.14s", names[r]);
        for (int e = 0; e < E; e++) printf(" %5.1f", 100.0 * cnt[r * E + e] / tot);
        printf(" | %7.0f\n", tot);
    }
    printf("  I(expert; %s) = %.3f bits\n", title, mutual_info(cnt, rows, E));
}

static int cmd_route(int argc, char **argv) {
    ckpt_data_opts o = parse_ckpt_data(argc, argv, "route", route_help, 16);
    const char *ckpt = o.ckpt;
    char *data = o.data;
    long batch = o.batch, max_batches = o.max_batches > 0 ? o.max_batches : (1L << 30);
    int json = o.json;
    char *path = ckpt_path(ckpt);
    moe_model *m;
    check(moe_model_load(path, (int)batch, &m));
    const moe_config *c = moe_model_config(m);
    int nm = moe_model_n_moe_layers(m), T = c->seq_len;
    if (nm == 0) die(1, "route: the model has no MoE layers");
    char *paths[256];
    const char *names[256];
    int n_src = split_list(data, paths, 256);
    for (int i = 0; i < n_src; i++) names[i] = strrchr(paths[i], '/') ? strrchr(paths[i], '/') + 1 : paths[i];
    int maxE = 0;
    for (int i = 0; i < nm; i++) maxE = moe_model_layer_stats(m, i)->n_experts > maxE ? moe_model_layer_stats(m, i)->n_experts : maxE;
    double *by_cls = calloc((size_t)nm * N_CLS * maxE, sizeof(double));
    double *by_src = calloc((size_t)nm * n_src * maxE, sizeof(double));
    int *tok = malloc((size_t)batch * T * sizeof(int)), *routes = malloc((size_t)batch * T * maxE * sizeof(int));
    if (!by_cls || !by_src || !tok || !routes) die(1, "out of memory");
    for (int src = 0; src < n_src; src++) {
        moe_dataset *d;
        check(moe_dataset_load((const char *const *)&paths[src], 1, c->vocab_size, &d));
        const uint16_t *toks = moe_dataset_tokens(d);
        int64_t windows = moe_dataset_len(d) / T;
        if (windows > batch * max_batches) windows = batch * max_batches;
        if (windows < 1) die(1, "route: '%s' is shorter than one sequence of %d tokens", paths[src], T);
        for (int64_t w0 = 0; w0 < windows; w0 += batch) {
            int B = windows - w0 < batch ? (int)(windows - w0) : (int)batch;
            for (int64_t i = 0; i < (int64_t)B * T; i++) tok[i] = toks[w0 * T + i];
            check(moe_model_forward(m, tok, NULL, B, T, 0, NULL));
            for (int l = 0; l < nm; l++) {
                int slots = moe_model_routing(m, l, routes);
                for (int64_t n = 0; n < (int64_t)B * T; n++)
                    for (int s = 0; s < slots; s++) {
                        int e = routes[n * slots + s];
                        if (e < 0) continue;
                        by_cls[((int64_t)l * N_CLS + byte_class(tok[n])) * maxE + e] += 1;
                        by_src[((int64_t)l * n_src + src) * maxE + e] += 1;
                    }
            }
        }
        moe_dataset_free(d);
    }
    // compact each layer's tables to its own E
    if (json) printf("{\"layers\":[");
    for (int l = 0; l < nm; l++) {
        int E = moe_model_layer_stats(m, l)->n_experts;
        double *cls = calloc((size_t)N_CLS * E, sizeof(double)), *srcs = calloc((size_t)n_src * E, sizeof(double));
        for (int r = 0; r < N_CLS; r++)
            for (int e = 0; e < E; e++) cls[r * E + e] = by_cls[((int64_t)l * N_CLS + r) * maxE + e];
        for (int r = 0; r < n_src; r++)
            for (int e = 0; e < E; e++) srcs[r * E + e] = by_src[((int64_t)l * n_src + r) * maxE + e];
        if (json) {
            printf("%s{\"layer\":%d,", l ? "," : "", moe_model_layer_stats(m, l)->layer);
            print_table("class", cls, cls_names, N_CLS, E, 1);
            printf(",");
            print_table("source", srcs, names, n_src, E, 1);
            printf("}");
        } else {
            printf("layer %d (%d experts)\n", moe_model_layer_stats(m, l)->layer, E);
            if (c->vocab_size == 256) print_table("class", cls, cls_names, N_CLS, E, 0);
            if (n_src > 1) print_table("source", srcs, names, n_src, E, 0);
        }
        free(cls);
        free(srcs);
    }
    if (json) printf("]}\n");
    free(by_cls);
    free(by_src);
    free(tok);
    free(routes);
    free(path);
    free(data);
    moe_model_free(m);
    return 0;
}

/* ---------------------------------------------------------------- main */

static const char *main_help =
    "moe — train sparse Mixture-of-Experts language models\n"
    "\n"
    "usage: moe <command> [options]\n"
    "\n"
    "commands:\n"
    "  train    train a model on text or token shards (moe train --help)\n"
    "  sample   generate text from a checkpoint (moe sample --help)\n"
    "  eval     loss and expert loads of a checkpoint on data (moe eval --help)\n"
    "  export   a Hugging Face checkpoint (Mixtral, Qwen2-MoE) of a model (moe export --help)\n"
    "  import   a model from a Hugging Face checkpoint or another model; upcycling (moe import --help)\n"
    "  logits   raw logits of a token sequence, for comparisons (moe logits --help)\n"
    "  route    which experts take which tokens: by byte class and by source (moe route --help)\n"
    "  plot     PNG figures of a run: loss curves, balance, per-expert load heatmaps (moe plot --help)\n";

/* ---------------------------------------------------------------- export */

static const char *export_help =
    "usage: moe export --ckpt DIR --out HFDIR [--dtype f32|bf16] [--family auto|mixtral|qwen2_moe]\n"
    "\n"
    "Writes a Hugging Face checkpoint (config.json + model.safetensors) that transformers loads, when\n"
    "the model maps onto a family exactly (the same logits), otherwise says why not:\n"
    "  mixtral    MixtralForCausalLM: every layer MoE, softmax top-K renormalised, no shared experts\n"
    "  qwen2_moe  Qwen2MoeForCausalLM: dense layers, shared experts, top-K renormalised or not\n"
    "  auto       Mixtral when it maps, else Qwen2-MoE (the default)\n"
    "Neither takes sigmoid scores, a gate scale, a selection bias or per-layer expert counts.\n";

static int cmd_export(int argc, char **argv) {
    const char *ckpt = NULL, *out = NULL, *dtype = "f32", *family = "auto", *written = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(export_help, stdout);
            return 0;
        } else if (!strcmp(a, "--ckpt")) ckpt = need(argc, argv, &i);
        else if (!strcmp(a, "--out")) out = need(argc, argv, &i);
        else if (!strcmp(a, "--dtype")) dtype = need(argc, argv, &i);
        else if (!strcmp(a, "--family")) family = need(argc, argv, &i);
        else die(2, "export: unknown option '%s' (see moe export --help)", a);
    }
    if (!ckpt || !out) die(2, "export: --ckpt and --out are required (see moe export --help)");
    if (strcmp(dtype, "f32") && strcmp(dtype, "bf16")) die(2, "export: --dtype must be f32 or bf16, got '%s'", dtype);
    if (strcmp(family, "auto") && strcmp(family, "mixtral") && strcmp(family, "qwen2_moe"))
        die(2, "export: --family must be auto, mixtral or qwen2_moe, got '%s'", family);
    char *path = ckpt_path(ckpt);
    moe_model *m;
    check(moe_model_load(path, 1, &m));
    free(path);
    check(moe_export_hf(m, out, family, !strcmp(dtype, "bf16"), &written));
    printf("moe: wrote %s/config.json and %s/model.safetensors (%s, %s)\n", out, out, written, dtype);
    moe_model_free(m);
    return 0;
}

/* ---------------------------------------------------------------- import */

static const char *import_help =
    "usage: moe import --from SRC --out DIR [--config FILE] [--set KEY=VALUE ...] [--seed N]\n"
    "\n"
    "Writes DIR/model.safetensors (a moe checkpoint at step 0) from SRC: a Hugging Face directory\n"
    "(config.json with model.safetensors or model.safetensors.index.json and its shards; F32, BF16\n"
    "or F16) of MixtralForCausalLM, or of LlamaForCausalLM / MistralForCausalLM (dense), or a moe\n"
    "checkpoint. The model keys come from SRC, then --config and --set may change them:\n"
    "\n"
    "  * keys that change no shape (seq_len, capacity_factor, routing details, losses) apply as set;\n"
    "  * sparse upcycling: --set moe_layers=all --set n_experts=8 on a dense SRC makes every FFN an\n"
    "    MoE layer whose experts all start as that FFN, with a fresh router (Komatsuzaki et al. 2022);\n"
    "    expert_hidden must equal SRC's ffn_hidden; with norm_topk=1 the model computes the same\n"
    "    function as SRC until trained;\n"
    "  * any other difference is an error naming the tensor.\n"
    "\n"
    "Grouped-query attention (num_key_value_heads < num_attention_heads) is expanded to one K/V head\n"
    "per query head: the same function, but K/V projections untied from then on if trained.\n"
    "seq_len defaults to max_position_embeddings capped at 4096 (and at sliding_window).\n"
    "moe train --init-from SRC does the same as the start of a training run.\n";

static int cmd_import(int argc, char **argv) {
    const char *src = NULL, *out = NULL, *config = NULL;
    char **sets = calloc((size_t)argc + 1, sizeof(char *));
    int n_sets = 0;
    unsigned long long seed = 1337;
    if (!sets) die(1, "out of memory");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(import_help, stdout);
            return 0;
        } else if (!strcmp(a, "--from")) src = need(argc, argv, &i);
        else if (!strcmp(a, "--out")) out = need(argc, argv, &i);
        else if (!strcmp(a, "--config")) config = need(argc, argv, &i);
        else if (!strcmp(a, "--set")) sets[n_sets++] = strdup(need(argc, argv, &i));
        else if (!strcmp(a, "--seed")) seed = (unsigned long long)flag_value("--seed", need(argc, argv, &i));
        else die(2, "import: unknown option '%s' (see moe import --help)", a);
    }
    if (!src || !out) die(2, "import: --from and --out are required (see moe import --help)");
    moe_config c;
    source from_src = source_open(src, &c);
    apply_keys(&c, config, sets, n_sets);
    check(moe_config_validate(&c));
    moe_model *from = source_load(&from_src, c.seq_len), *m;
    check(moe_model_create(&c, 1, &m));
    moe_model_init(m, seed); // what init_from does not copy (routers) keeps this
    moe_init_report r;
    check(moe_model_init_from(m, from, &r));
    moe_model_free(from);
    if (mkdir(out, 0755) != 0 && errno != EEXIST) die(1, "import: cannot create '%s': %s", out, strerror(errno));
    char *path = path_in(out, "model.safetensors");
    check(moe_model_save(m, path, 0));
    print_init_report(src, &r);
    printf("moe: wrote %s (%lld parameters, %d of %d layers MoE)\n", path, (long long)moe_model_n_params(m),
           moe_model_n_moe_layers(m), c.n_layer);
    free(path);
    moe_model_free(m);
    for (int i = 0; i < n_sets; i++) free(sets[i]);
    free(sets);
    return 0;
}

/* ---------------------------------------------------------------- plot */

static const char *plot_help =
    "usage: moe plot --run DIR [--out DIR]\n"
    "\n"
    "Draws a run's metrics.jsonl with gnuplot (Debian: gnuplot-nox) into PNG files in --out\n"
    "(default: the run directory):\n"
    "  loss.png          train and validation loss over steps\n"
    "  balance.png       MaxVio and dropped fraction of each MoE layer over steps\n"
    "  load_layerL.png   per MoE layer: each expert's share of the routed assignments over steps,\n"
    "                    times E (1 = balanced): collapse shows as a few bright rows, the rest dark\n"
    "Works on a run in progress (a torn last line is left out).\n";

static int cmd_plot(int argc, char **argv) {
    const char *run = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(plot_help, stdout);
            return 0;
        } else if (!strcmp(a, "--run")) run = need(argc, argv, &i);
        else if (!strcmp(a, "--out")) out = need(argc, argv, &i);
        else die(2, "plot: unknown option '%s' (see moe plot --help)", a);
    }
    if (!run) die(2, "plot: --run is required (see moe plot --help)");
    char err[1024];
    int n;
    if (moe_plot_run(run, out ? out : run, &n, err, sizeof err) != 0) die(1, "%s", err);
    printf("moe: wrote %d figures to %s (loss.png%s)\n", n, out ? out : run, n > 1 ? ", balance.png, load_layer*.png" : "");
    return 0;
}

/* ---------------------------------------------------------------- logits */

static const char *logits_help =
    "usage: moe logits --ckpt DIR --tokens FILE --out FILE\n"
    "\n"
    "Writes the model's logits (inference routing) for one sequence of token ids (whitespace-\n"
    "separated in --tokens) as float32 little-endian (T, V) to --out: for comparisons with other\n"
    "implementations (tests/hf/check_export.py).\n";

static int cmd_logits(int argc, char **argv) {
    const char *ckpt = NULL, *tokf = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(logits_help, stdout);
            return 0;
        } else if (!strcmp(a, "--ckpt")) ckpt = need(argc, argv, &i);
        else if (!strcmp(a, "--tokens")) tokf = need(argc, argv, &i);
        else if (!strcmp(a, "--out")) out = need(argc, argv, &i);
        else die(2, "logits: unknown option '%s' (see moe logits --help)", a);
    }
    if (!ckpt || !tokf || !out) die(2, "logits: --ckpt, --tokens and --out are required");
    char *path = ckpt_path(ckpt);
    moe_model *m;
    check(moe_model_load(path, 1, &m));
    free(path);
    const moe_config *c = moe_model_config(m);
    char *text = read_text(tokf, "token file");
    int *tok = malloc((size_t)c->seq_len * sizeof(int)), T = 0;
    char err[512];
    if (!tok) die(1, "out of memory");
    if (moe_arg_tokens(text, tokf, c->vocab_size, c->seq_len, tok, &T, err, sizeof err) != 0) die(2, "logits: %s", err);
    free(text);
    check(moe_model_forward(m, tok, NULL, 1, T, 0, NULL));
    FILE *o = fopen(out, "wb");
    if (!o || fwrite(moe_model_logits(m), sizeof(float), (size_t)T * c->vocab_size, o) != (size_t)T * c->vocab_size ||
        fclose(o) != 0)
        die(1, "logits: cannot write '%s'", out);
    free(tok);
    moe_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    check(moe_dist_init(&argc, &argv));
    atexit(moe_dist_finalize);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(main_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "train")) return cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "sample")) return cmd_sample(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "route")) return cmd_route(argc - 2, argv + 2);
    if (!strcmp(argv[1], "export")) return cmd_export(argc - 2, argv + 2);
    if (!strcmp(argv[1], "logits")) return cmd_logits(argc - 2, argv + 2);
    if (!strcmp(argv[1], "import")) return cmd_import(argc - 2, argv + 2);
    if (!strcmp(argv[1], "plot")) return cmd_plot(argc - 2, argv + 2);
    die(2, "unknown command '%s' (commands: train, sample, eval, route, plot, export, import, logits)", argv[1]);
}
