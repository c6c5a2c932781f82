/*
 * cmd_plot.c — `moe plot`: PNG figures of a run from its metrics.jsonl, drawn by gnuplot (Debian's
 * gnuplot-nox, pngcairo terminal). This file only turns records into gnuplot data and a script:
 *   loss.png          train and validation loss over steps
 *   balance.png       MaxVio and dropped fraction of each MoE layer over steps
 *   load_layerL.png   heatmap of each expert's share of layer L's routed assignments over steps,
 *                     relative to the balanced share 1/E: a balanced layer is one flat colour, a
 *                     collapsed one shows a few bright rows and the rest dark
 * In phases: the records into data files in a temporary directory, the script, gnuplot, and
 * the temporary files removed whatever happened.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_LAYERS 1024

/* One MoE layer's data files: the heatmap (step, expert, share x E) and the balance (step,
 * MaxVio, dropped fraction). */
typedef struct {
    int layer, E;
    FILE *heat, *bal;
} layer_out;

/* A plot in progress. */
typedef struct {
    const char *run, *out, *title;
    char tmp[32];   /* the temporary directory of the data files and the script */
    char err[1024]; /* why it failed */
    long n_rec, n_val;
    int n_layers;
    layer_out lay[MAX_LAYERS];
} plot_job;

static int fail(plot_job *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(plot_job *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* The file named by fmt and i in the temporary directory, opened for writing; NULL when it
 * cannot be. */
static FILE *open_tmp(const plot_job *j, const char *fmt, int i) {
    char *p = path_in(j->tmp, fmt, i);
    FILE *f = fopen(p, "w");
    free(p);
    return f;
}

static void unlink_tmp(const plot_job *j, const char *fmt, int i) {
    char *p = path_in(j->tmp, fmt, i);
    unlink(p);
    free(p);
}

/* ---------------------------------------------------------------- records into data files */

/* The MoE layer entries of one record (array `moe`, at line `lineno` of `path`), into the
 * layers' data files, each opened when its layer is first seen. */
static int read_layers(plot_job *j, const cJSON *moe, long step, const char *path, long lineno) {
    int li = 0;
    for (const cJSON *l = moe ? moe->child : NULL; l; l = l->next, li++) {
        const cJSON *ln = cJSON_GetObjectItemCaseSensitive(l, "layer"),
                    *load = cJSON_GetObjectItemCaseSensitive(l, "load"),
                    *mv = cJSON_GetObjectItemCaseSensitive(l, "maxvio"),
                    *dr = cJSON_GetObjectItemCaseSensitive(l, "dropped_frac");
        int E = cJSON_GetArraySize(load);
        if (!cJSON_IsNumber(ln) || !cJSON_IsArray(load) || E < 1 || !cJSON_IsNumber(mv) || !cJSON_IsNumber(dr))
            return fail(j, "plot: '%s' line %ld: MoE layer entry %d lacks layer, load, maxvio or dropped_frac", path,
                        lineno, li);
        if (li >= MAX_LAYERS) return fail(j, "plot: more than %d MoE layers", MAX_LAYERS);
        layer_out *lo = &j->lay[li];
        if (li >= j->n_layers) { // a layer seen for the first time
            *lo = (layer_out){(int)ln->valuedouble, E, open_tmp(j, "heat%d.dat", li), open_tmp(j, "bal%d.dat", li)};
            j->n_layers = li + 1;
            if (!lo->heat || !lo->bal) return fail(j, "plot: cannot write in '%s': %s", j->tmp, strerror(errno));
        } else if (lo->layer != (int)ln->valuedouble || lo->E != E) {
            return fail(j, "plot: '%s' line %ld: MoE layer entry %d changed from layer %d with %d experts", path,
                        lineno, li, lo->layer, lo->E);
        }
        double tot = 0;
        for (const cJSON *x = load->child; x; x = x->next) tot += cJSON_IsNumber(x) ? x->valuedouble : 0;
        int e = 0;
        for (const cJSON *x = load->child; x; x = x->next, e++) // share relative to 1/E
            fprintf(lo->heat, "%ld %d %.6g\n", step, e, tot > 0 && cJSON_IsNumber(x) ? x->valuedouble / tot * E : 0.0);
        fprintf(lo->heat, "\n");
        fprintf(lo->bal, "%ld %.6g %.6g\n", step, mv->valuedouble, dr->valuedouble);
    }
    return 0;
}

/* The records of the open metrics file `in` (named path) into loss.dat, val.dat and the layers'
 * files. A torn last line (a run killed mid-write) is left out. */
static int read_records(plot_job *j, FILE *in, const char *path, FILE *loss, FILE *val) {
    char *line = NULL; // one record per line, of any length
    size_t cap = 0;
    long lineno = 0;
    int rc = 0;
    for (ssize_t len; !rc && (len = getline(&line, &cap, in)) != -1;) {
        int torn = line[len - 1] != '\n';
        if (!torn) line[len - 1] = 0;
        lineno++;
        cJSON *r = cJSON_Parse(line);
        if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "event"))) { // a typed record: not a step
            cJSON_Delete(r);
            continue;
        }
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(r, "step"),
                    *ce = cJSON_GetObjectItemCaseSensitive(r, "loss"),
                    *vl = cJSON_GetObjectItemCaseSensitive(r, "val_loss"),
                    *moe = cJSON_GetObjectItemCaseSensitive(r, "moe");
        if (!cJSON_IsNumber(step) || !cJSON_IsNumber(ce) || (moe && !cJSON_IsArray(moe))) {
            cJSON_Delete(r);
            if (!torn) rc = fail(j, "plot: '%s' line %ld is not a moe metrics record", path, lineno);
            break;
        }
        j->n_rec++;
        long s = (long)step->valuedouble;
        fprintf(loss, "%ld %.9g\n", s, ce->valuedouble);
        if (cJSON_IsNumber(vl)) fprintf(val, "%ld %.9g\n", s, vl->valuedouble), j->n_val++;
        rc = read_layers(j, moe, s, path, lineno);
        cJSON_Delete(r);
    }
    free(line);
    return rc;
}

/* run/metrics.jsonl into the data files, which are all closed after. */
static int read_metrics(plot_job *j) {
    char *path = path_in(j->run, "metrics.jsonl");
    FILE *in = fopen(path, "r"), *loss = NULL, *val = NULL;
    int rc = 0;
    if (!in) rc = fail(j, "plot: cannot open '%s': %s", path, strerror(errno));
    else if (!(loss = open_tmp(j, "loss.dat", 0)) || !(val = open_tmp(j, "val.dat", 0)))
        rc = fail(j, "plot: cannot write in '%s': %s", j->tmp, strerror(errno));
    else rc = read_records(j, in, path, loss, val);
    if (in) fclose(in);
    if (loss) fclose(loss);
    if (val) fclose(val);
    for (int i = 0; i < j->n_layers; i++) {
        if (j->lay[i].heat) fclose(j->lay[i].heat);
        if (j->lay[i].bal) fclose(j->lay[i].bal);
    }
    if (!rc && j->n_rec == 0) rc = fail(j, "plot: '%s' has no records yet", path);
    free(path);
    return rc;
}

/* ---------------------------------------------------------------- the gnuplot script */

/* gnuplot single-quoted string: ' doubled. */
static void gp_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

/* dir/NAME quoted, NAME formatted from fmt and i. */
static void gp_path(FILE *f, const char *dir, const char *fmt, int i) {
    char *p = path_in(dir, fmt, i);
    gp_quote(f, p);
    free(p);
}

static void script_loss(FILE *gp, const plot_job *j) {
    fprintf(gp, "set terminal pngcairo size 1000,600 font ',11'\nset grid\nset key top right\nset xlabel 'step'\n");
    fprintf(gp, "set output ");
    gp_path(gp, j->out, "loss.png", 0);
    fprintf(gp, "\nset ylabel 'cross-entropy'\nset title ");
    gp_quote(gp, j->title);
    fprintf(gp, "\nplot ");
    gp_path(gp, j->tmp, "loss.dat", 0);
    fprintf(gp, " using 1:2 with lines lw 1.5 title 'train'");
    if (j->n_val) {
        fprintf(gp, ", ");
        gp_path(gp, j->tmp, "val.dat", 0);
        fprintf(gp, " using 1:2 with linespoints lw 2 pt 7 title 'validation'");
    }
    fprintf(gp, "\n");
}

static void script_balance(FILE *gp, const plot_job *j) {
    fprintf(gp, "set output ");
    gp_path(gp, j->out, "balance.png", 0);
    fprintf(gp, "\nset multiplot layout 2,1 title ");
    gp_quote(gp, j->title);
    fprintf(gp, "\nset yrange [0:*]\n");
    const char *panel[2][3] = {{"MaxVio: (max load - mean load) / mean load", "MaxVio", "2"},
                               {"dropped assignments (capacity)", "fraction", "3"}};
    for (int k = 0; k < 2; k++) { // one panel per column of balL.dat, a line per layer
        fprintf(gp, "set title '%s'\nset ylabel '%s'\nplot ", panel[k][0], panel[k][1]);
        for (int i = 0; i < j->n_layers; i++) {
            gp_path(gp, j->tmp, "bal%d.dat", i);
            fprintf(gp, " using 1:%s with lines title 'layer %d'%s", panel[k][2], j->lay[i].layer,
                    i + 1 < j->n_layers ? ", " : "\n");
        }
    }
    fprintf(gp, "unset multiplot\n");
}

/* Heatmaps: colour = share / (1/E); 1 is balanced, 0 an unused expert, >= 3 saturates. */
static void script_heatmaps(FILE *gp, const plot_job *j) {
    fprintf(gp, "set grid noxtics noytics\nset palette defined (0 '#000004', 0.5 '#3b0f70', 1 '#8c2981', "
                "1.5 '#de4968', 2 '#fe9f6d', 3 '#fcfdbf')\nset cbrange [0:3]\n"
                "set cblabel \"share of assignments x E (1 = balanced)\"\nset ylabel 'expert'\n");
    for (int i = 0; i < j->n_layers; i++) {
        fprintf(gp, "set output ");
        gp_path(gp, j->out, "load_layer%d.png", j->lay[i].layer);
        fprintf(gp, "\nset title ");
        char t[4600];
        snprintf(t, sizeof t, "%s: layer %d, %d experts, per-expert load over steps", j->title, j->lay[i].layer,
                 j->lay[i].E);
        gp_quote(gp, t);
        fprintf(gp, "\nset yrange [-0.5:%f]\nset autoscale xfix\nplot ", j->lay[i].E - 0.5);
        gp_path(gp, j->tmp, "heat%d.dat", i);
        fprintf(gp, " using 1:2:3 with image notitle\n");
    }
}

/* tmp/plot.gp; *n_figures gets how many figures it draws. */
static int write_script(plot_job *j, int *n_figures) {
    char *p = path_in(j->tmp, "plot.gp");
    FILE *gp = fopen(p, "w");
    int rc = 0;
    if (!gp) rc = fail(j, "plot: cannot write '%s': %s", p, strerror(errno));
    else {
        script_loss(gp, j);
        if (j->n_layers) script_balance(gp, j);
        script_heatmaps(gp, j);
        *n_figures = 1 + (j->n_layers > 0) + j->n_layers;
        if (fclose(gp) != 0) rc = fail(j, "plot: cannot write '%s'", p);
    }
    free(p);
    return rc;
}

/* gnuplot on the script: its messages go to our stderr; its exit status decides. */
static int run_gnuplot(plot_job *j) {
    char cmd[sizeof j->tmp + 32];
    snprintf(cmd, sizeof cmd, "gnuplot '%s/plot.gp'", j->tmp);
    int s = system(cmd), rc = 0;
    if (s == -1 || !WIFEXITED(s)) rc = fail(j, "plot: cannot run gnuplot");
    else if (WEXITSTATUS(s) == 127)
        rc = fail(j, "plot: gnuplot is not installed (Debian: apt-get install gnuplot-nox)");
    else if (WEXITSTATUS(s) != 0)
        rc = fail(j, "plot: gnuplot failed (exit %d) on the script it was given", WEXITSTATUS(s));
    return rc;
}

static void remove_tmp(const plot_job *j) {
    unlink_tmp(j, "loss.dat", 0);
    unlink_tmp(j, "val.dat", 0);
    unlink_tmp(j, "plot.gp", 0);
    for (int i = 0; i < j->n_layers; i++) {
        unlink_tmp(j, "heat%d.dat", i);
        unlink_tmp(j, "bal%d.dat", i);
    }
    rmdir(j->tmp);
}

/* ---------------------------------------------------------------- the command */

typedef struct {
    const char *run, *out;
} plot_opts;

#define OPT(field) offsetof(plot_opts, field)
static const cli_flag plot_flags[] = {
    {"--run", CLI_STRING, "DIR", OPT(run), .help = "the run directory (its metrics.jsonl)", .required = 1},
    {"--out", CLI_STRING, "DIR", OPT(out), .help = "where to write the figures (default: the run directory)"},
};
#undef OPT

static int run_plot(void *opts) {
    const plot_opts *o = opts;
    plot_job *j = calloc(1, sizeof *j);
    if (!j) die(1, "out of memory");
    const char *slash = strrchr(o->run, '/');
    j->run = o->run;
    j->out = o->out ? o->out : o->run;
    j->title = slash && slash[1] ? slash + 1 : o->run;
    strcpy(j->tmp, "/tmp/moe-plot-XXXXXX");
    if (!mkdtemp(j->tmp)) die(1, "plot: cannot create a temporary directory: %s", strerror(errno));
    int n = 0, rc = read_metrics(j);
    if (!rc && make_dirs(j->out) != 0)
        rc = fail(j, "plot: cannot create '%s': %s", j->out, strerror(errno));
    if (!rc) rc = write_script(j, &n);
    if (!rc) rc = run_gnuplot(j);
    remove_tmp(j);
    if (rc) die(1, "%s", j->err);
    printf("moe: wrote %d figures to %s (loss.png%s)\n", n, j->out, n > 1 ? ", balance.png, load_layer*.png" : "");
    free(j);
    return 0;
}

const cli_command moe_cmd_plot = {
    "plot",
    "PNG figures of a run: loss curves, balance, per-expert load heatmaps",
    "plot --run DIR [--out DIR]",
    "Draws a run's metrics.jsonl with gnuplot (Debian: gnuplot-nox) into PNG files in --out\n"
    "(default: the run directory):\n"
    "  loss.png          train and validation loss over steps\n"
    "  balance.png       MaxVio and dropped fraction of each MoE layer over steps\n"
    "  load_layerL.png   per MoE layer: each expert's share of the routed assignments over steps,\n"
    "                    times E (1 = balanced): collapse shows as a few bright rows, the rest dark\n"
    "Works on a run in progress (a torn last line is left out).\n",
    CLI_FLAGS(plot_flags),
    NULL,
    sizeof(plot_opts),
    &(plot_opts){0},
    run_plot,
};
