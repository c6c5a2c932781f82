/*
 * metrics.c — what a training step reports: MaxVio and the dropped fraction of every MoE layer,
 * the step's record in metrics.jsonl (schema in docs/metrics.md) and its TensorBoard event (the
 * same numbers under TensorBoard tags). Rank 0 writes; the statistics are global by then.
 */
#include "train/train.h"
#include "dist/dist.h"

#include <errno.h>
#include <string.h>

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

void moe__metrics_summarise(moe__step_stats *ss, const moe_model *m, moe_step_info *info) {
    int nm = moe_model_n_moe_layers(m);
    for (int i = 0; i < nm; i++) {
        ss->maxvio[i] = (float)moe_maxvio(ss->load + ss->load_off[i], moe_model_layer_stats(m, i)->n_experts);
        ss->dropped_frac[i] = ss->routed[i] ? (float)((double)ss->dropped[i] / (double)ss->routed[i]) : 0.0f;
        info->maxvio = ss->maxvio[i] > info->maxvio ? ss->maxvio[i] : info->maxvio;
        info->dropped_frac += ss->dropped_frac[i] / (float)nm;
    }
}

moe_status moe__metrics_record(moe_trainer *t, const moe_step_info *info) {
    FILE *f = t->metrics;
    if (!f) return MOE_STATUS_OK; // ranks other than 0
    int nm = moe_model_n_moe_layers(t->m);
    fprintf(f, "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,\"aux_loss\":%.9g,\"z_loss\":%.9g,"
               "\"seq_aux_loss\":%.9g,\"importance_loss\":%.9g,\"load_loss\":%.9g,"
               "\"total_loss\":%.9g,\"tokens_per_s\":%.1f,\"step_ms\":%.3f,\"threads\":%d",
            (long long)info->step, info->loss.ce, info->lr, info->grad_norm, info->loss.aux, info->loss.z,
            info->loss.seq_aux, info->loss.importance, info->loss.load, info->loss.total, info->tokens_per_s,
            info->step_ms, info->threads);
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
        const int64_t *load = t->ss.load + t->ss.load_off[i];
        fprintf(f, "%s{\"layer\":%d,\"maxvio\":%.6g,\"dropped_frac\":%.6g,\"load\":[", i ? "," : "", st->layer,
                t->ss.maxvio[i], t->ss.dropped_frac[i]);
        for (int e = 0; e < E; e++) fprintf(f, "%s%lld", e ? "," : "", (long long)load[e]);
        fprintf(f, "]");
        if (st->bias) {
            fprintf(f, ",\"bias\":[");
            for (int e = 0; e < E; e++) fprintf(f, "%s%.6g", e ? "," : "", st->bias[e]);
            fprintf(f, "]");
        }
        fprintf(f, "}");
    }
    // a record that did not reach the file is an error (a full disk must not silently end the log)
    if (fprintf(f, "]}\n") < 0 || fflush(f) != 0 || ferror(f))
        return moe__err(MOE_STATUS_IO, "cannot write the step's record to '%s': %s", t->metrics_path, strerror(errno));
    return MOE_STATUS_OK;
}

/* The step's TensorBoard event: the metrics.jsonl record's numbers under TensorBoard tags. */
moe_status moe__metrics_tensorboard(moe_trainer *t, const moe_step_info *info) {
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
    double limits[21];
    for (int i = 0; i < nm; i++) {
        const moe_layer_stats *st = moe_model_layer_stats(t->m, i);
        int E = st->n_experts;
        const int64_t *load = t->ss.load + t->ss.load_off[i];
        double *share = t->ss.share + t->ss.load_off[i];
        int64_t tot = 0;
        for (int e = 0; e < E; e++) tot += load[e];
        snprintf(tag, sizeof tag, "moe/layer%d/maxvio", st->layer);
        moe__tb_scalar(tb, tag, t->ss.maxvio[i]);
        snprintf(tag, sizeof tag, "moe/layer%d/dropped_frac", st->layer);
        moe__tb_scalar(tb, tag, t->ss.dropped_frac[i]);
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
