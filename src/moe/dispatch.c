/*
 * dispatch.c — capacity and permutation: which routed assignments each expert keeps, and
 * their rows in the expert-contiguous buffer (token order within an expert).
 *
 *   token choice: capacity = max(min_capacity, ceil(K*N/E * cf)), at most N; cf = 0 is dropless.
 *     Over capacity, an expert keeps the assignments with the highest score (drop_policy
 *     probability, Megatron's default) or the earliest tokens (position).
 *   expert choice: each expert takes its top-capacity tokens by score, capacity =
 *     ceil(K*N/E * cf) with cf = 0 read as 1 (on average K experts per token); the rest of its
 *     slots are unrouted. Nothing is dropped.
 *   soft mixture: every expert takes every token; no capacity.
 * Ties in score go to the lower token index, so routing is deterministic.
 */
#include "moe/moe_layer.h"

#include <math.h>
#include <string.h>

int moe__capacity(const moe__moe_dims *d, int64_t N, float cf) {
    if (cf <= 0.0f) return 0;
    double c = ceil((double)d->K * (double)N / (double)d->E * (double)cf);
    if (c < d->min_capacity) c = d->min_capacity;
    if (c > (double)N) c = (double)N; /* an expert never takes a token twice */
    return (int)c;
}

/* Entries are n*slots + s; their priority for expert e is scores[n, e]. */
static int prio_before(int a, int b, const float *scores, int E, int slots, int e) {
    float pa = scores[(int64_t)(a / slots) * E + e], pb = scores[(int64_t)(b / slots) * E + e];
    if (pa != pb) return pa > pb;
    return a < b;
}

/* Stable merge sort of a[0..n) by decreasing priority; tmp has room for n; no allocation. */
static void sort_by_priority(int *a, int *tmp, int64_t n, const float *scores, int E, int slots, int e) {
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) tmp[o++] = prio_before(a[j], a[i], scores, E, slots, e) ? a[j++] : a[i++];
            while (i < mid) tmp[o++] = a[i++];
            while (j < hi) tmp[o++] = a[j++];
        }
        memcpy(a, tmp, (size_t)n * sizeof(int));
    }
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void moe__dispatch(moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int E = d->E, slots = moe__moe_slots(d);
    moe_routing routing = moe__moe_effective_routing(d);
    int64_t A = (int64_t)slots * N;
    int *list = c->scratch_idx, *tmp = c->scratch_idx + A;
    c->dropped = c->would_drop = 0;
    if (routing == MOE_ROUTING_EXPERT_CHOICE) {
        int cap = moe__capacity(d, N, d->capacity_factor > 0.0f ? d->capacity_factor : 1.0f);
        c->capacity = cap;
        int64_t row = 0;
        for (int e = 0; e < E; e++) {
            for (int64_t n = 0; n < N; n++) list[n] = (int)(n * slots + e);
            sort_by_priority(list, tmp, N, c->scores, E, slots, e);
            qsort(list, (size_t)cap, sizeof(int), cmp_int); // the chosen, in token order
            for (int64_t n = 0; n < N; n++) c->row_of[n * slots + e] = MOE_ROW_UNROUTED;
            c->offsets[e] = row;
            c->load[e] = cap;
            for (int i = 0; i < cap; i++) {
                c->row_of[list[i]] = (int)row;
                c->row_token[row++] = list[i] / slots;
            }
        }
        c->offsets[E] = row;
        c->routed = row;
        return;
    }
    // counting sort of routed assignments by expert, token order within an expert;
    // offsets serves as the fill cursors here and is rewritten with row offsets below
    memset(c->load, 0, (size_t)E * sizeof(int64_t));
    for (int64_t a = 0; a < A; a++)
        if (c->row_of[a] != MOE_ROW_UNROUTED) c->load[c->sel[a]]++;
    int64_t *cur = c->offsets;
    cur[0] = 0;
    for (int e = 1; e < E; e++) cur[e] = cur[e - 1] + c->load[e - 1];
    int64_t routed = 0;
    for (int64_t a = 0; a < A; a++)
        if (c->row_of[a] != MOE_ROW_UNROUTED) {
            list[cur[c->sel[a]]++] = (int)a;
            c->row_of[a] = MOE_ROW_DROPPED; // until kept below
            routed++;
        }
    c->routed = routed;
    int cap = routing == MOE_ROUTING_SOFT ? 0 : moe__capacity(d, N, d->capacity_factor);
    c->capacity = cap;
    int64_t row = 0, s0 = 0;
    for (int e = 0; e < E; e++) {
        int64_t n_e = c->load[e], keep = n_e;
        int *le = list + s0;
        s0 += n_e;
        if (cap > 0 && n_e > cap) {
            keep = cap;
            if (d->drop_policy == MOE_DROP_PROBABILITY) {
                sort_by_priority(le, tmp, n_e, c->scores, E, slots, e);
                qsort(le, (size_t)keep, sizeof(int), cmp_int); // back to token order
            }
            c->dropped += n_e - keep;
        }
        c->offsets[e] = row;
        for (int64_t i = 0; i < keep; i++) {
            c->row_of[le[i]] = (int)row;
            c->row_token[row++] = le[i] / slots;
        }
    }
    c->offsets[E] = row;
    // what the training capacity would drop, for dropless evaluation
    if (cap == 0 && routing != MOE_ROUTING_SOFT) {
        int tcap = moe__capacity(d, N, d->train_capacity_factor);
        if (tcap > 0)
            for (int e = 0; e < E; e++)
                if (c->load[e] > tcap) c->would_drop += c->load[e] - tcap;
    }
}
