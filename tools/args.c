/* args.c — the command line's values (args.h). */
#include "args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const moe_arg_spec moe_arg_specs[] = {
    {"--steps", 1, 0, INT_MAX},       /* train */
    {"--stop-after", 1, 1, INT_MAX},  /* train */
    {"--ep", 1, 1, 65536},            /* train */
    {"--log-every", 1, 1, INT_MAX},   /* train */
    {"--tokens", 1, 0, 1000000},      /* sample: tokens to generate */
    {"--temperature", 0, 0, 100},     /* sample */
    {"--top-k", 1, 0, 1 << 20},       /* sample */
    {"--top-p", 0, 1e-6, 1},          /* sample */
    {"--seed", 1, 0, INT_MAX},        /* sample, import */
    {"--threads", 1, 1, 4096},        /* sample */
    {"--batch-size", 1, 1, 1 << 16},  /* eval, route */
    {"--max-batches", 1, 0, 1 << 30}, /* eval, route */
};
const int moe_arg_n_specs = (int)(sizeof moe_arg_specs / sizeof moe_arg_specs[0]);

const moe_arg_spec *moe_arg_find(const char *flag) {
    for (int i = 0; i < moe_arg_n_specs; i++)
        if (!strcmp(moe_arg_specs[i].flag, flag)) return &moe_arg_specs[i];
    return NULL;
}

int moe_arg_number(const moe_arg_spec *s, const char *v, double *out, char *err, size_t n) {
    char *end;
    errno = 0;
    double x;
    if (s->is_int) {
        long long i = strtoll(v, &end, 10);
        x = (double)i;
        if (!*v || *end || errno || i < (long long)s->lo || i > (long long)s->hi) {
            snprintf(err, n, "%s needs an integer in [%.0f, %.0f], got '%s'", s->flag, s->lo, s->hi, v);
            return -1;
        }
    } else {
        x = strtod(v, &end);
        if (!*v || *end || !(x >= s->lo && x <= s->hi)) { // NaN fails the range test too
            snprintf(err, n, "%s needs a number in [%g, %g], got '%s'", s->flag, s->lo, s->hi, v);
            return -1;
        }
    }
    *out = x;
    return 0;
}

int moe_arg_set(moe_config *c, const char *kv, char *err, size_t n) {
    const char *eq = strchr(kv, '=');
    if (!eq) {
        snprintf(err, n, "--set needs KEY=VALUE, got '%s'", kv);
        return -1;
    }
    char key[128];
    if ((size_t)(eq - kv) >= sizeof key) {
        snprintf(err, n, "--set: config key '%.40s...' is too long (no key is)", kv);
        return -1;
    }
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = 0;
    if (moe_config_set(c, key, eq + 1) != MOE_STATUS_OK) {
        snprintf(err, n, "%s: %s", moe_status_str(MOE_STATUS_CONFIG), moe_last_error());
        return -1;
    }
    return 0;
}

int moe_arg_tokens(const char *text, const char *origin, int vocab, int max, int *tok, int *n_tok, char *err, size_t n) {
    int T = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno || (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            snprintf(err, n, "'%s' holds '%.20s', which is not a token id", origin, p);
            return -1;
        }
        if (v < 0 || v >= vocab) {
            snprintf(err, n, "token %lld in '%s' is outside the vocabulary [0, %d)", v, origin, vocab);
            return -1;
        }
        if (T == max) {
            snprintf(err, n, "'%s' has more than seq_len = %d tokens", origin, max);
            return -1;
        }
        tok[T++] = (int)v;
        p = end;
    }
    if (T == 0) {
        snprintf(err, n, "'%s' has no tokens", origin);
        return -1;
    }
    *n_tok = T;
    return 0;
}
