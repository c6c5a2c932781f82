/*
 * eval.c — evaluation: the mean cross-entropy over non-overlapping windows of a dataset, spread
 * evenly over it when not all are evaluated, at the evaluation capacity factor (dropless by
 * default), with the routing statistics summed over the batches; and where each window starts
 * (moe_evaluate_window), which `moe eval` needs too, to count the bytes of the targets.
 */
#include "train/train.h"

#include <string.h>

int64_t moe_evaluate_window(int64_t n, int seq_len, int64_t windows, int64_t i) {
    return i * ((n - 1) / seq_len) / windows * seq_len;
}

moe_status moe__evaluate_into(moe_model *m, const moe_dataset *d, int batch, int max_batches, int *tok, int *tgt,
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
    double total = 0.0;
    moe_status st = MOE_STATUS_OK;
    double prof[MOE_PHASE_COUNT]; // evaluation is not training time: keep it out of the profile
    moe_model_profile(m, prof);
    for (int64_t w0 = 0; w0 < windows; w0 += batch) {
        int B = windows - w0 < batch ? (int)(windows - w0) : batch;
        for (int b = 0; b < B; b++) {
            int64_t start = moe_evaluate_window(n, T, windows, w0 + b);
            st = moe__dataset_window(d, start, T, tok + b * T, tgt + b * T);
            if (st != MOE_STATUS_OK) break;
        }
        if (st != MOE_STATUS_OK) break;
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
    moe_status st = tok && tgt ? moe__evaluate_into(m, d, batch, max_batches, tok, tgt, loss, n_tokens, loads, would_drop)
                               : moe__err(MOE_STATUS_NOMEM, "out of memory");
    free(tok);
    free(tgt);
    return st;
}
