/*
 * sample.c — autoregressive sampling: temperature, top-k, then top-p (nucleus) filtering of the
 * next-token distribution. The context is the last seq_len tokens; routing uses the eval
 * capacity factor (dropless by default).
 */
#include "core/core.h"

#include <math.h>
#include <string.h>

typedef struct {
    float p;
    int i;
} prob_idx;

static int by_prob_desc(const void *a, const void *b) {
    const prob_idx *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->i - y->i;
}

moe_status moe_model_sample(moe_model *m, const int *prompt, int n_prompt, int *out, int n_new,
                            float temperature, int top_k, float top_p, uint64_t seed) {
    const moe_config *c = moe_model_config(m);
    int V = c->vocab_size, T = c->seq_len;
    if (n_prompt < 1) return moe__err(MOE_STATUS_ARG, "sample: the prompt is empty");
    if (!(temperature >= 0.0f) || !(top_p > 0.0f && top_p <= 1.0f) || top_k < 0)
        return moe__err(MOE_STATUS_ARG, "sample: temperature %g, top_k %d, top_p %g out of range", temperature,
                        top_k, top_p);
    int total = n_prompt + n_new;
    int *seq = malloc((size_t)total * sizeof(int));
    prob_idx *pi = malloc((size_t)V * sizeof(prob_idx));
    if (!seq || !pi) {
        free(seq);
        free(pi);
        return moe__err(MOE_STATUS_NOMEM, "sample: out of memory");
    }
    memcpy(seq, prompt, (size_t)n_prompt * sizeof(int));
    moe__rng r;
    moe__rng_seed(&r, seed);
    moe_status st = MOE_STATUS_OK;
    for (int pos = n_prompt; pos < total; pos++) {
        int ctx = pos < T ? pos : T;
        st = moe_model_forward(m, seq + pos - ctx, NULL, 1, ctx, 0, NULL);
        if (st != MOE_STATUS_OK) break;
        const float *l = moe_model_logits(m);
        if (!l) {
            st = MOE_STATUS_DEVICE;
            break;
        }
        l += (int64_t)(ctx - 1) * V;
        int next = 0;
        if (temperature == 0.0f) {
            for (int i = 1; i < V; i++)
                if (l[i] > l[next]) next = i;
        } else {
            float maxv = l[0];
            for (int i = 1; i < V; i++) maxv = l[i] > maxv ? l[i] : maxv;
            double sum = 0;
            for (int i = 0; i < V; i++) {
                pi[i].p = expf((l[i] - maxv) / temperature);
                pi[i].i = i;
                sum += pi[i].p;
            }
            for (int i = 0; i < V; i++) pi[i].p = (float)(pi[i].p / sum);
            qsort(pi, (size_t)V, sizeof *pi, by_prob_desc);
            int keep = top_k > 0 && top_k < V ? top_k : V;
            // nucleus: the smallest prefix whose mass reaches top_p
            double cum = 0;
            for (int i = 0; i < keep; i++) {
                cum += pi[i].p;
                if (cum >= top_p) {
                    keep = i + 1;
                    break;
                }
            }
            double mass = 0;
            for (int i = 0; i < keep; i++) mass += pi[i].p;
            double u = moe__rng_uniform(&r) * mass, acc = 0;
            next = pi[keep - 1].i;
            for (int i = 0; i < keep; i++) {
                acc += pi[i].p;
                if (u < acc) {
                    next = pi[i].i;
                    break;
                }
            }
        }
        seq[pos] = next;
        out[pos - n_prompt] = next;
    }
    free(seq);
    free(pi);
    return st;
}
