/*
 * plot.c — `moe plot`: PNG figures of a run from its metrics.jsonl, drawn by gnuplot (Debian's
 * gnuplot-nox, pngcairo terminal). This file only turns records into gnuplot data and a script:
 *   loss.png          train and validation loss over steps (log-scaled x when the run is long)
 *   balance.png       MaxVio and dropped fraction of each MoE layer over steps
 *   load_layerL.png   heatmap of each expert's share of layer L's routed assignments over steps,
 *                     relative to the balanced share 1/E: a balanced layer is one flat colour, a
 *                     collapsed one shows a few bright rows and the rest dark
 */
#define _POSIX_C_SOURCE 200809L
#include "plot.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int fail(char *err, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
    return -1;
}

#define MAX_LAYERS 1024

typedef struct {
    int layer, E;
    FILE *heat, *bal;
} layer_out;

/* gnuplot single-quoted string: ' doubled. */
static void gp_quote(FILE *f, const char *s) {
    fputc('\'', f);
    for (; *s; s++) {
        if (*s == '\'') fputc('\'', f);
        fputc(*s, f);
    }
    fputc('\'', f);
}

static void gp_path(FILE *f, const char *dir, const char *name) {
    char p[4600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    gp_quote(f, p);
}

int moe_plot_run(const char *run, const char *out, int *n_written, char *err, size_t errn) {
    char path[4400], tmp[] = "/tmp/moe-plot-XXXXXX";
    *n_written = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *in = fopen(path, "r");
    if (!in) return fail(err, errn, "plot: cannot open '%s': %s", path, strerror(errno));
    if (!mkdtemp(tmp)) {
        fclose(in);
        return fail(err, errn, "plot: cannot create a temporary directory: %s", strerror(errno));
    }
    int rc = 0, n_layers = 0;
    long n_rec = 0, lineno = 0, last_step = 0, n_val = 0;
    layer_out lay[MAX_LAYERS];
    char p[4600];
    snprintf(p, sizeof p, "%s/loss.dat", tmp);
    FILE *loss = fopen(p, "w");
    snprintf(p, sizeof p, "%s/val.dat", tmp);
    FILE *val = fopen(p, "w");
    if (!loss || !val) rc = fail(err, errn, "plot: cannot write in '%s': %s", tmp, strerror(errno));
    char *line = NULL; // one record per line, of any length
    size_t cap = 0;
    for (ssize_t len; !rc && (len = getline(&line, &cap, in)) != -1;) {
        int torn = line[len - 1] != '\n'; // a last line without its newline: a run killed mid-write
        if (!torn) line[len - 1] = 0;
        lineno++;
        cJSON *r = cJSON_Parse(line);
        const cJSON *step = cJSON_GetObjectItemCaseSensitive(r, "step"),
                    *ce = cJSON_GetObjectItemCaseSensitive(r, "loss"), *vl = cJSON_GetObjectItemCaseSensitive(r, "val_loss"),
                    *moe = cJSON_GetObjectItemCaseSensitive(r, "moe");
        if (!cJSON_IsNumber(step) || !cJSON_IsNumber(ce) || (moe && !cJSON_IsArray(moe))) {
            cJSON_Delete(r);
            if (torn) break; // a torn last line is left out
            rc = fail(err, errn, "plot: '%s' line %ld is not a moe metrics record", path, lineno);
            break;
        }
        n_rec++;
        last_step = (long)step->valuedouble;
        fprintf(loss, "%ld %.9g\n", last_step, ce->valuedouble);
        if (cJSON_IsNumber(vl)) fprintf(val, "%ld %.9g\n", last_step, vl->valuedouble), n_val++;
        int li = 0;
        for (const cJSON *l = moe ? moe->child : NULL; l && !rc; l = l->next, li++) {
            const cJSON *ln = cJSON_GetObjectItemCaseSensitive(l, "layer"), *load = cJSON_GetObjectItemCaseSensitive(l, "load"),
                        *mv = cJSON_GetObjectItemCaseSensitive(l, "maxvio"),
                        *dr = cJSON_GetObjectItemCaseSensitive(l, "dropped_frac");
            int E = cJSON_GetArraySize(load);
            if (!cJSON_IsNumber(ln) || !cJSON_IsArray(load) || E < 1 || !cJSON_IsNumber(mv) || !cJSON_IsNumber(dr)) {
                rc = fail(err, errn, "plot: '%s' line %ld: MoE layer entry %d lacks layer, load, maxvio or dropped_frac",
                          path, lineno, li);
                break;
            }
            if (li >= n_layers) { // a layer seen for the first time
                if (li >= MAX_LAYERS) {
                    rc = fail(err, errn, "plot: more than %d MoE layers", MAX_LAYERS);
                    break;
                }
                lay[li].layer = (int)ln->valuedouble;
                lay[li].E = E;
                snprintf(p, sizeof p, "%s/heat%d.dat", tmp, li);
                lay[li].heat = fopen(p, "w");
                snprintf(p, sizeof p, "%s/bal%d.dat", tmp, li);
                lay[li].bal = fopen(p, "w");
                n_layers = li + 1;
                if (!lay[li].heat || !lay[li].bal) {
                    rc = fail(err, errn, "plot: cannot write in '%s': %s", tmp, strerror(errno));
                    break;
                }
            } else if (lay[li].layer != (int)ln->valuedouble || lay[li].E != E) {
                rc = fail(err, errn, "plot: '%s' line %ld: MoE layer entry %d changed from layer %d with %d experts",
                          path, lineno, li, lay[li].layer, lay[li].E);
                break;
            }
            double tot = 0;
            for (const cJSON *x = load->child; x; x = x->next) tot += cJSON_IsNumber(x) ? x->valuedouble : 0;
            int e = 0;
            for (const cJSON *x = load->child; x; x = x->next, e++) // share relative to 1/E
                fprintf(lay[li].heat, "%ld %d %.6g\n", last_step, e,
                        tot > 0 && cJSON_IsNumber(x) ? x->valuedouble / tot * E : 0.0);
            fprintf(lay[li].heat, "\n");
            fprintf(lay[li].bal, "%ld %.6g %.6g\n", last_step, mv->valuedouble, dr->valuedouble);
        }
        cJSON_Delete(r);
    }
    free(line);
    fclose(in);
    if (loss) fclose(loss);
    if (val) fclose(val);
    for (int i = 0; i < n_layers; i++) {
        if (lay[i].heat) fclose(lay[i].heat);
        if (lay[i].bal) fclose(lay[i].bal);
    }
    if (!rc && n_rec == 0) rc = fail(err, errn, "plot: '%s' has no records yet", path);
    if (!rc && mkdir(out, 0755) != 0 && errno != EEXIST)
        rc = fail(err, errn, "plot: cannot create '%s': %s", out, strerror(errno));
    // the gnuplot script
    snprintf(p, sizeof p, "%s/plot.gp", tmp);
    FILE *gp = rc ? NULL : fopen(p, "w");
    if (!rc && !gp) rc = fail(err, errn, "plot: cannot write '%s': %s", p, strerror(errno));
    if (!rc) {
        const char *title = strrchr(run, '/') && strrchr(run, '/')[1] ? strrchr(run, '/') + 1 : run;
        fprintf(gp, "set terminal pngcairo size 1000,600 font ',11'\nset grid\nset key top right\nset xlabel 'step'\n");
        fprintf(gp, "set output ");
        gp_path(gp, out, "loss.png");
        fprintf(gp, "\nset ylabel 'cross-entropy'\nset title ");
        gp_quote(gp, title);
        fprintf(gp, "\nplot ");
        gp_path(gp, tmp, "loss.dat");
        fprintf(gp, " using 1:2 with lines lw 1.5 title 'train'");
        if (n_val) {
            fprintf(gp, ", ");
            gp_path(gp, tmp, "val.dat");
            fprintf(gp, " using 1:2 with linespoints lw 2 pt 7 title 'validation'");
        }
        fprintf(gp, "\n");
        *n_written = 1;
        if (n_layers) {
            fprintf(gp, "set output ");
            gp_path(gp, out, "balance.png");
            fprintf(gp, "\nset multiplot layout 2,1 title ");
            gp_quote(gp, title);
            fprintf(gp, "\nset yrange [0:*]\n");
            const char *panel[2][3] = {{"MaxVio: (max load - mean load) / mean load", "MaxVio", "2"},
                                       {"dropped assignments (capacity)", "fraction", "3"}};
            for (int k = 0; k < 2; k++) { // one panel per column of balL.dat, a line per layer
                fprintf(gp, "set title '%s'\nset ylabel '%s'\nplot ", panel[k][0], panel[k][1]);
                for (int i = 0; i < n_layers; i++) {
                    char name[32];
                    snprintf(name, sizeof name, "bal%d.dat", i);
                    gp_path(gp, tmp, name);
                    fprintf(gp, " using 1:%s with lines title 'layer %d'%s", panel[k][2], lay[i].layer,
                            i + 1 < n_layers ? ", " : "\n");
                }
            }
            fprintf(gp, "unset multiplot\n");
            *n_written += 1;
        }
        // heatmaps: colour = share / (1/E); 1 is balanced, 0 an unused expert, >= 3 saturates
        fprintf(gp, "set grid noxtics noytics\nset palette defined (0 '#000004', 0.5 '#3b0f70', 1 '#8c2981', "
                    "1.5 '#de4968', 2 '#fe9f6d', 3 '#fcfdbf')\nset cbrange [0:3]\n"
                    "set cblabel \"share of assignments x E (1 = balanced)\"\nset ylabel 'expert'\n");
        for (int i = 0; i < n_layers; i++) {
            char name[64];
            snprintf(name, sizeof name, "load_layer%d.png", lay[i].layer);
            fprintf(gp, "set output ");
            gp_path(gp, out, name);
            fprintf(gp, "\nset title ");
            char t[4600];
            snprintf(t, sizeof t, "%s: layer %d, %d experts, per-expert load over steps", title, lay[i].layer, lay[i].E);
            gp_quote(gp, t);
            fprintf(gp, "\nset yrange [-0.5:%f]\nset autoscale xfix\nplot ", lay[i].E - 0.5);
            snprintf(name, sizeof name, "heat%d.dat", i);
            gp_path(gp, tmp, name);
            fprintf(gp, " using 1:2:3 with image notitle\n");
        }
        *n_written += n_layers;
        if (fclose(gp) != 0) rc = fail(err, errn, "plot: cannot write '%s'", p);
    }
    if (!rc) {
        // gnuplot's messages go to our stderr; its exit status decides
        char cmd[4800];
        snprintf(cmd, sizeof cmd, "gnuplot '%s/plot.gp'", tmp);
        int s = system(cmd);
        if (s == -1 || !WIFEXITED(s))
            rc = fail(err, errn, "plot: cannot run gnuplot");
        else if (WEXITSTATUS(s) == 127)
            rc = fail(err, errn, "plot: gnuplot is not installed (Debian: apt-get install gnuplot-nox)");
        else if (WEXITSTATUS(s) != 0)
            rc = fail(err, errn, "plot: gnuplot failed (exit %d) on the script it was given", WEXITSTATUS(s));
    }
    // remove the temporary files
    const char *fixed[] = {"loss.dat", "val.dat", "plot.gp"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", tmp, fixed[i]);
        unlink(p);
    }
    for (int i = 0; i < n_layers; i++) {
        snprintf(p, sizeof p, "%s/heat%d.dat", tmp, i);
        unlink(p);
        snprintf(p, sizeof p, "%s/bal%d.dat", tmp, i);
        unlink(p);
    }
    rmdir(tmp);
    if (rc) *n_written = 0;
    return rc;
}
