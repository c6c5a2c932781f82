/*
 * decode.c — ids to text as tokenizers' decode does: the tokens of the ids (special ones left
 * out on request) go through the decoders in order, each turning a list of strings into another;
 * the result is their concatenation. Without a decoder the tokens are joined by spaces.
 */
#define _POSIX_C_SOURCE 200809L
#include "tok/tok.h"
#include "core/core.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char **s;
    size_t *n;
    int len, cap;
} slist;

static int sl_add(slist *l, const char *s, size_t n) {
    if (l->len == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **a = realloc(l->s, (size_t)cap * sizeof *a);
        if (a) l->s = a;
        size_t *b = a ? realloc(l->n, (size_t)cap * sizeof *b) : NULL;
        if (!b) return -1;
        l->n = b, l->cap = cap;
    }
    char *c = malloc(n + 1);
    if (!c) return -1;
    memcpy(c, s, n);
    c[n] = 0;
    l->s[l->len] = c, l->n[l->len] = n, l->len++;
    return 0;
}

static void sl_free(slist *l) {
    for (int i = 0; i < l->len; i++) free(l->s[i]);
    free(l->s), free(l->n);
    memset(l, 0, sizeof *l);
}

/* a growing string */
typedef struct {
    char *p;
    size_t n, cap;
} str;

static int st_add(str *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int utf8_char(const char *s, size_t n, size_t i) {
    int l = moe__tk_utf8_len((const unsigned char *)s + i, n - i);
    return l ? l : 1;
}

/* One decoder over the list: the new list in *out. */
static int decode_step(const tk_dec *d, const slist *in, slist *out) {
    str b = {0};
    int err = 0;
    switch (d->kind) {
    case DEC_BYTELEVEL: { // characters back to bytes (a token with any other character as it is), then lossy UTF-8
        for (int i = 0; i < in->len && !err; i++) {
            const char *s = in->s[i];
            size_t n = in->n[i], at = b.n;
            for (size_t k = 0; k < n && !err;) {
                int l = moe__tk_utf8_len((const unsigned char *)s + k, n - k);
                int byte = l ? moe__tk_char_byte(moe__tk_cp(s + k, l)) : -1;
                if (byte < 0) { // not a byte character: the token's own text instead
                    b.n = at;
                    err = st_add(&b, s, n);
                    break;
                }
                char c = (char)byte;
                err = st_add(&b, &c, 1);
                k += (size_t)l;
            }
        }
        char *lossy = err ? NULL : malloc(b.n * 3 + 1);
        if (!lossy) err = -1;
        else {
            size_t m = moe__tk_lossy(b.p ? b.p : "", b.n, lossy);
            err = sl_add(out, lossy, m);
            free(lossy);
        }
        break;
    }
    case DEC_REPLACE: {
        size_t pl = strlen(d->a), cl = strlen(d->b);
        for (int i = 0; i < in->len && !err; i++) {
            b.n = 0;
            const char *s = in->s[i];
            size_t n = in->n[i];
            for (size_t k = 0; k < n && !err;) {
                if (pl && k + pl <= n && !memcmp(s + k, d->a, pl)) err = st_add(&b, d->b, cl), k += pl;
                else err = st_add(&b, s + k, 1), k++;
            }
            if (!err) err = sl_add(out, b.p ? b.p : "", b.n);
        }
        break;
    }
    case DEC_BYTEFALLBACK: { // runs of <0xXX> tokens become their UTF-8 text, or one U+FFFD per byte if invalid
        int i = 0;
        while (i < in->len && !err) {
            int j = i;
            b.n = 0;
            while (j < in->len && in->n[j] == 6 && !strncmp(in->s[j], "<0x", 3) && in->s[j][5] == '>') {
                char hex[3] = {in->s[j][3], in->s[j][4], 0}, *end;
                long v = strtol(hex, &end, 16);
                if (*end || !((hex[0] >= '0' && hex[0] <= '9') || (hex[0] >= 'A' && hex[0] <= 'F') || (hex[0] >= 'a' && hex[0] <= 'f'))) break;
                char c = (char)v;
                if ((err = st_add(&b, &c, 1))) break;
                j++;
            }
            if (j > i) {
                size_t k = 0;
                while (k < b.n && moe__tk_utf8_len((const unsigned char *)b.p + k, b.n - k)) k += (size_t)moe__tk_utf8_len((const unsigned char *)b.p + k, b.n - k);
                if (k == b.n) err = sl_add(out, b.p, b.n);
                else
                    for (int q = i; q < j && !err; q++) err = sl_add(out, "\xef\xbf\xbd", 3);
                i = j;
            } else {
                err = sl_add(out, in->s[i], in->n[i]);
                i++;
            }
        }
        break;
    }
    case DEC_FUSE:
        for (int i = 0; i < in->len && !err; i++) err = st_add(&b, in->s[i], in->n[i]);
        if (!err) err = sl_add(out, b.p ? b.p : "", b.n);
        break;
    case DEC_STRIP: { // up to start characters `strip` off the front, stop off the back, per token
        size_t cl = strlen(d->strip);
        for (int i = 0; i < in->len && !err; i++) {
            const char *s = in->s[i];
            size_t n = in->n[i], a = 0, z = n;
            int cut_a = 0, cut_z = 0;
            while (cut_a < d->start && a + cl <= n && !memcmp(s + a, d->strip, cl)) a += cl, cut_a++;
            while (cut_z < d->stop && z >= a + cl && !memcmp(s + z - cl, d->strip, cl)) z -= cl, cut_z++;
            // tokenizers keeps take(byte length - cuts) characters after the front cut
            long keep = (long)n - cut_a - cut_z;
            size_t e = a;
            for (long c = 0; c < keep && e < n; c++) e += (size_t)utf8_char(s, n, e);
            err = sl_add(out, s + a, e - a);
        }
        break;
    }
    case DEC_METASPACE: {
        size_t rl = strlen(d->repl);
        for (int i = 0; i < in->len && !err; i++) {
            b.n = 0;
            const char *s = in->s[i];
            size_t n = in->n[i];
            for (size_t k = 0; k < n && !err;) {
                if (k + rl <= n && !memcmp(s + k, d->repl, rl)) {
                    if (!(i == 0 && d->prepend != PREPEND_NEVER)) err = st_add(&b, " ", 1);
                    k += rl;
                } else {
                    int l = utf8_char(s, n, k);
                    err = st_add(&b, s + k, (size_t)l);
                    k += (size_t)l;
                }
            }
            if (!err) err = sl_add(out, b.p ? b.p : "", b.n);
        }
        break;
    }
    }
    free(b.p);
    return err;
}

moe_status moe_tokenizer_decode(const moe_tokenizer *t, const int *ids, size_t n, int skip_special, char **text,
                                size_t *len) {
    *text = NULL;
    if (len) *len = 0;
    slist a = {0}, b = {0};
    int err = 0;
    for (size_t i = 0; i < n && !err; i++) {
        int id = ids[i];
        if (id < 0 || id >= t->n_ids || !t->tok[id]) {
            sl_free(&a);
            return moe__err(MOE_STATUS_ARG, "decode: id %d (position %zu) is not in the vocabulary of %d", id, i, t->n_ids);
        }
        if (!(skip_special && t->special[id])) err = sl_add(&a, t->tok[id], (size_t)t->tok_len[id]);
    }
    str out = {0};
    if (!t->has_decoder) {
        for (int i = 0; i < a.len && !err; i++) err = (i && st_add(&out, " ", 1)) || st_add(&out, a.s[i], a.n[i]);
    } else {
        for (int k = 0; k < t->n_dec && !err; k++) {
            err = decode_step(&t->dec[k], &a, &b);
            sl_free(&a);
            a = b;
            memset(&b, 0, sizeof b);
        }
        for (int i = 0; i < a.len && !err; i++) err = st_add(&out, a.s[i], a.n[i]);
    }
    sl_free(&a);
    sl_free(&b);
    if (!err && !out.p) err = st_add(&out, "", 0);
    if (err) {
        free(out.p);
        return moe__err(MOE_STATUS_NOMEM, "out of memory while decoding %zu ids", n);
    }
    *text = out.p;
    if (len) *len = out.n;
    return MOE_STATUS_OK;
}
