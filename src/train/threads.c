/*
 * threads.c — the thread count of a training run with threads=0 (automatic). Since the products
 * run on fixed tiles (nn/matmul.c) and every reduction has a fixed order, a step's bits do not
 * depend on how many threads run it; the count is then only a matter of speed, and may change
 * between steps. It starts at OpenMP's count (the cores, or OMP_NUM_THREADS) and is tried
 * against neighbours: now and then one step runs on half (or twice) the threads, and when that
 * step is clearly faster than the recent median, the run moves there. A run that suddenly slows
 * down (another program took the cores) tries at once. Two runs sharing two cores so end on one
 * thread each, instead of spinning OpenMP threads that steal each other's cores; a run alone
 * keeps its cores, paying one slower step per probe, ever more rarely.
 */
#include "train/train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    WINDOW = MOE_TUNER_WINDOW,
    MIN_REF = 3,         // steps at a count before it is compared (the first probe comes after them)
    FIRST = 8,           // steps between probes after a change
    LONGEST = 128,       // steps between probes at most (each lost probe doubles the wait)
};
#define GAIN 0.9         // a probe wins when its step takes under GAIN x the median
#define SLOWER 1.5       // a median this much above the settled one probes at once

static double median(const double *v, int n) {
    double s[WINDOW];
    memcpy(s, v, (size_t)n * sizeof *s);
    for (int i = 1; i < n; i++) // insertion sort of at most WINDOW values
        for (int j = i; j > 0 && s[j] < s[j - 1]; j--) {
            double x = s[j];
            s[j] = s[j - 1], s[j - 1] = x;
        }
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

void moe__tuner_init(moe__tuner *u, int on, int max, int64_t step) {
    memset(u, 0, sizeof *u);
    u->on = on && max > 1;
    u->max = u->cur = max < 1 ? 1 : max;
    u->interval = FIRST;
    u->next = step + MIN_REF;
    const char *force = getenv("MOE_TEST_THREADS"); // tests: "STEP:N,STEP:N": N threads from STEP on
    if (force && on) {
        u->forced = 1;
        snprintf(u->force, sizeof u->force, "%s", force);
    }
}

/* MOE_TEST_THREADS: the count its list gives for the step after `step` (0: none given). */
static int forced_at(const moe__tuner *u, int64_t step) {
    int n = 0;
    for (const char *p = u->force; *p;) {
        long long s;
        int k, used;
        if (sscanf(p, "%lld:%d%n", &s, &k, &used) != 2) break;
        if (s <= step) n = k;
        p += used;
        if (*p == ',') p++;
    }
    return n;
}

int moe__tuner_after(moe__tuner *u, int64_t step, double seconds) {
    u->changed[0] = 0;
    if (!u->on) return u->cur;
    if (u->forced) {
        int n = forced_at(u, step);
        if (n > 0 && n != u->cur) {
            snprintf(u->changed, sizeof u->changed, "now %d thread%s (was %d): MOE_TEST_THREADS", n, n == 1 ? "" : "s", u->cur);
            u->cur = n;
        }
        return u->cur;
    }
    if (u->probe) { // the step just done ran on u->probe threads
        double ref = median(u->ring, u->n);
        int p = u->probe;
        u->probe = 0;
        if (seconds < GAIN * ref) {
            snprintf(u->changed, sizeof u->changed, "now %d thread%s (was %d): a step took %.3f s on %d, the median %.3f s on %d",
                     p, p == 1 ? "" : "s", u->cur, seconds, p, ref, u->cur);
            u->cur = p;
            u->n = 0, u->settled = 0.0;
            u->interval = FIRST;
        } else if (u->interval < LONGEST) {
            u->interval *= 2;
        }
        u->next = step + u->interval;
        return u->cur;
    }
    if (u->n == WINDOW) memmove(u->ring, u->ring + 1, (WINDOW - 1) * sizeof *u->ring), u->n--;
    u->ring[u->n++] = seconds;
    if (u->n < MIN_REF) return u->cur;
    if (u->n == WINDOW) {
        double now = median(u->ring, u->n);
        if (u->settled == 0.0) u->settled = now;
        if (now > SLOWER * u->settled) { // something else took the cores: try now
            u->settled = now;
            u->next = step;
        }
    }
    if (step < u->next) return u->cur;
    int down = u->cur / 2 > 1 ? u->cur / 2 : 1, up = 2 * u->cur < u->max ? 2 * u->cur : u->max;
    int cand = u->cur == u->max ? down : u->cur == 1 ? up : (u->toggle ^= 1) ? up : down;
    if (cand == u->cur) {
        u->next = step + u->interval;
        return u->cur;
    }
    u->probe = cand;
    return cand;
}
