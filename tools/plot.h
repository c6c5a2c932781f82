/* plot.h — `moe plot`: figures of a run directory (tools/plot.c). */
#ifndef MOE_PLOT_H
#define MOE_PLOT_H

#include <stddef.h>

/* Writes out/loss.png, out/balance.png and out/load_layerL.png (one per MoE layer) from
 * run/metrics.jsonl with gnuplot. 0 on success (*n_written figures), -1 with a message in err. */
int moe_plot_run(const char *run, const char *out, int *n_written, char *err, size_t errn);

#endif
