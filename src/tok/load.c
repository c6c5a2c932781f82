/*
 * load.c — tokenizer.json (and tokenizer_config.json beside it) into a moe_tokenizer. Every
 * component that changes ids is read; one this code does not implement is refused by its name,
 * never approximated.
 */
#define _POSIX_C_SOURCE 200809L
#include "tok/tok.h"
#include "core/core.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* GPT-2's split pattern, which ByteLevel(use_regex=true) applies (tokenizers' byte_level.rs) */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static uint64_t next_serial = 1;

/* ---------------------------------------------------------------- maps */

static uint32_t str_hash(const char *s, int len) { return (uint32_t)moe__fnv1a(MOE_FNV_INIT, s, (size_t)len); }

static int map_init(tk_map *m, int n) {
    uint32_t cap = 16;
    while (cap < (uint32_t)n * 2 + 16) cap *= 2;
    m->slot = calloc(cap, sizeof *m->slot);
    m->mask = cap - 1;
    return m->slot != NULL;
}

int moe__tk_get(const moe_tokenizer *t, const tk_map *m, const char *s, int len) {
    for (uint32_t i = str_hash(s, len) & m->mask;; i = (i + 1) & m->mask) {
        int32_t v = m->slot[i];
        if (v == 0) return -1;
        int id = v - 1;
        if (t->tok_len[id] == len && !memcmp(t->tok[id], s, (size_t)len)) return id;
    }
}

/* Adds id (its string in t->tok) unless the string is there already. */
static void map_put(moe_tokenizer *t, tk_map *m, int id) {
    uint32_t i = str_hash(t->tok[id], t->tok_len[id]) & m->mask;
    for (; m->slot[i]; i = (i + 1) & m->mask) {
        int o = m->slot[i] - 1;
        if (t->tok_len[o] == t->tok_len[id] && !memcmp(t->tok[o], t->tok[id], (size_t)t->tok_len[id])) return;
    }
    m->slot[i] = id + 1;
}

static uint64_t mix64(uint64_t k) {
    k ^= k >> 33, k *= 0xff51afd7ed558ccdULL, k ^= k >> 33, k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

int moe__tk_merge(const moe_tokenizer *t, int a, int b, int *id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (uint32_t i = (uint32_t)mix64(key) & t->mmask;; i = (i + 1) & t->mmask) {
        if (t->mrank[i] < 0) return -1;
        if (t->mkey[i] == key) {
            *id = t->mid[i];
            return t->mrank[i];
        }
    }
}

/* ---------------------------------------------------------------- errors */

typedef struct {
    const char *path;
    moe_status st;
} ctx;

static int bad(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(ctx *c, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->st == MOE_STATUS_OK) c->st = moe__err(MOE_STATUS_FORMAT, "%s: %s", c->path, msg);
    return -1;
}

static const char *type_of(const cJSON *o) {
    const cJSON *ty = cJSON_GetObjectItemCaseSensitive(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

static int flag(const cJSON *o, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

static const char *str_of(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static pcre2_code *compile(ctx *c, const char *what, const char *pattern) {
    int err;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        bad(c, "%s: regex '%s' does not compile at offset %zu: %s", what, pattern, (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // without JIT it still matches, slower
    return re;
}

/* A "pattern" object {"String": s} or {"Regex": r}: *lit or *re. */
static int pattern_of(ctx *c, const cJSON *o, const char *what, char **lit, pcre2_code **re) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *s = str_of(p, "String"), *r = str_of(p, "Regex");
    if (s) return (*lit = strdup(s)) ? 0 : bad(c, "out of memory");
    if (r) return (*re = compile(c, what, r)) ? 0 : -1;
    return bad(c, "%s: 'pattern' must be {\"String\": ...} or {\"Regex\": ...}", what);
}

static int char_of(ctx *c, const char *what, const char *s, char out[8]) {
    if (!s || !*s || strlen(s) > 4 || moe__tk_utf8_len((const unsigned char *)s, strlen(s)) != (int)strlen(s))
        return bad(c, "%s: '%s' must be one character", what, s ? s : "(missing)");
    strcpy(out, s);
    return 0;
}

static int prepend_scheme(ctx *c, const cJSON *o, const char *what) {
    const char *s = str_of(o, "prepend_scheme");
    if (!s) return flag(o, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER; // before 0.19
    if (!strcmp(s, "always")) return PREPEND_ALWAYS;
    if (!strcmp(s, "first")) return PREPEND_FIRST;
    if (!strcmp(s, "never")) return PREPEND_NEVER;
    return bad(c, "%s: prepend_scheme '%s' is not one of always, first, never", what, s);
}

/* ---------------------------------------------------------------- components */

static int add_norm(ctx *c, moe_tokenizer *t, const cJSON *o) {
    const char *ty = type_of(o);
    if (!ty) return bad(c, "normalizer: no 'type'");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "normalizers")) if (add_norm(c, t, e)) return -1;
        return 0;
    }
    tk_norm n = {0};
    if (!strcmp(ty, "NFC")) n.kind = NORM_NFC;
    else if (!strcmp(ty, "NFD")) n.kind = NORM_NFD;
    else if (!strcmp(ty, "NFKC")) n.kind = NORM_NFKC;
    else if (!strcmp(ty, "NFKD")) n.kind = NORM_NFKD;
    else if (!strcmp(ty, "Prepend")) {
        n.kind = NORM_PREPEND;
        if (!str_of(o, "prepend")) return bad(c, "normalizer Prepend: no 'prepend' string");
        n.a = strdup(str_of(o, "prepend"));
    } else if (!strcmp(ty, "Replace")) {
        n.kind = NORM_REPLACE;
        if (pattern_of(c, o, "normalizer Replace", &n.a, &n.re)) return -1;
        if (!str_of(o, "content")) return bad(c, "normalizer Replace: no 'content' string");
        n.b = strdup(str_of(o, "content"));
    } else
        return bad(c, "normalizer type '%s' is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Prepend, Replace)", ty);
    tk_norm *g = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *g);
    if (!g) return bad(c, "out of memory");
    t->norm = g;
    t->norm[t->n_norm++] = n;
    return 0;
}

static int split_behavior(ctx *c, const cJSON *o, const char *what) {
    const char *b = str_of(o, "behavior");
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    for (int i = 0; b && i < 5; i++)
        if (!strcasecmp(b, names[i])) return i;
    return bad(c, "%s: behavior '%s' is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous", what,
               b ? b : "(missing)");
}

static int add_pre(ctx *c, moe_tokenizer *t, const cJSON *o) {
    const char *ty = type_of(o);
    if (!ty) return bad(c, "pre_tokenizer: no 'type'");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "pretokenizers")) if (add_pre(c, t, e)) return -1;
        return 0;
    }
    tk_pre p = {0};
    if (!strcmp(ty, "ByteLevel")) {
        p.kind = PRE_BYTELEVEL;
        p.add_prefix_space = flag(o, "add_prefix_space", 1);
        if (flag(o, "use_regex", 1) && !(p.re = compile(c, "pre_tokenizer ByteLevel", GPT2_PATTERN))) return -1;
        t->byte_level = 1;
    } else if (!strcmp(ty, "Split")) {
        p.kind = PRE_SPLIT;
        if (pattern_of(c, o, "pre_tokenizer Split", &p.lit, &p.re)) return -1;
        if ((p.behavior = split_behavior(c, o, "pre_tokenizer Split")) < 0) return -1;
        p.invert = flag(o, "invert", 0);
    } else if (!strcmp(ty, "Metaspace")) {
        p.kind = PRE_METASPACE;
        if (char_of(c, "pre_tokenizer Metaspace replacement", str_of(o, "replacement"), p.repl)) return -1;
        if ((p.prepend = prepend_scheme(c, o, "pre_tokenizer Metaspace")) < 0) return -1;
        p.split = flag(o, "split", 1);
    } else if (!strcmp(ty, "Digits")) {
        p.kind = PRE_DIGITS;
        p.individual = flag(o, "individual_digits", 0);
    } else
        return bad(c, "pre_tokenizer type '%s' is not supported (supported: Sequence, ByteLevel, Split, Metaspace, Digits)", ty);
    tk_pre *g = realloc(t->pre, (size_t)(t->n_pre + 1) * sizeof *g);
    if (!g) return bad(c, "out of memory");
    t->pre = g;
    t->pre[t->n_pre++] = p;
    return 0;
}

static int add_dec(ctx *c, moe_tokenizer *t, const cJSON *o) {
    const char *ty = type_of(o);
    if (!ty) return bad(c, "decoder: no 'type'");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "decoders")) if (add_dec(c, t, e)) return -1;
        return 0;
    }
    tk_dec d = {0};
    if (!strcmp(ty, "ByteLevel")) d.kind = DEC_BYTELEVEL;
    else if (!strcmp(ty, "ByteFallback")) d.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(ty, "Fuse")) d.kind = DEC_FUSE;
    else if (!strcmp(ty, "Replace")) {
        d.kind = DEC_REPLACE;
        pcre2_code *re = NULL;
        if (pattern_of(c, o, "decoder Replace", &d.a, &re)) return -1;
        if (re) {
            pcre2_code_free(re);
            return bad(c, "decoder Replace: a Regex pattern is not supported (only String)");
        }
        if (!str_of(o, "content")) return bad(c, "decoder Replace: no 'content' string");
        d.b = strdup(str_of(o, "content"));
    } else if (!strcmp(ty, "Strip")) {
        d.kind = DEC_STRIP;
        if (char_of(c, "decoder Strip content", str_of(o, "content"), d.strip)) return -1;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start"), *b = cJSON_GetObjectItemCaseSensitive(o, "stop");
        d.start = cJSON_IsNumber(a) ? a->valueint : 0;
        d.stop = cJSON_IsNumber(b) ? b->valueint : 0;
    } else if (!strcmp(ty, "Metaspace")) {
        d.kind = DEC_METASPACE;
        if (char_of(c, "decoder Metaspace replacement", str_of(o, "replacement"), d.repl)) return -1;
        if ((d.prepend = prepend_scheme(c, o, "decoder Metaspace")) < 0) return -1;
    } else
        return bad(c, "decoder type '%s' is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)", ty);
    tk_dec *g = realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *g);
    if (!g) return bad(c, "out of memory");
    t->dec = g;
    t->dec[t->n_dec++] = d;
    return 0;
}

/* TemplateProcessing's single template: the special tokens' ids around $A. */
static int add_post(ctx *c, moe_tokenizer *t, const cJSON *o) {
    const char *ty = type_of(o);
    if (!ty) return bad(c, "post_processor: no 'type'");
    if (!strcmp(ty, "Sequence")) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, "processors")) if (add_post(c, t, e)) return -1;
        return 0;
    }
    if (!strcmp(ty, "ByteLevel")) return 0; // offsets only
    if (strcmp(ty, "TemplateProcessing"))
        return bad(c, "post_processor type '%s' is not supported (supported: Sequence, ByteLevel, TemplateProcessing)", ty);
    if (t->n_post_pre || t->n_post_post) return bad(c, "post_processor: two TemplateProcessing");
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(o, "single"), *sp = cJSON_GetObjectItemCaseSensitive(o, "special_tokens");
    if (!cJSON_IsArray(single)) return bad(c, "post_processor TemplateProcessing: 'single' is not a list");
    int seen_a = 0, n = cJSON_GetArraySize(single);
    t->post_pre = calloc((size_t)n * 8 + 1, sizeof(int));
    t->post_post = calloc((size_t)n * 8 + 1, sizeof(int));
    if (!t->post_pre || !t->post_post) return bad(c, "out of memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, single) {
        const cJSON *seq = cJSON_GetObjectItemCaseSensitive(item, "Sequence"), *st = cJSON_GetObjectItemCaseSensitive(item, "SpecialToken");
        if (seq) {
            if (seen_a++ || strcmp(str_of(seq, "id") ? str_of(seq, "id") : "", "A"))
                return bad(c, "post_processor TemplateProcessing: 'single' must hold $A once");
            continue;
        }
        const char *name = str_of(st, "id");
        const cJSON *tok = name ? cJSON_GetObjectItemCaseSensitive(sp, name) : NULL;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(tok, "ids"), *x;
        if (!cJSON_IsArray(ids)) return bad(c, "post_processor TemplateProcessing: special token '%s' has no 'ids'", name ? name : "?");
        if (cJSON_GetArraySize(ids) > 8) return bad(c, "post_processor TemplateProcessing: special token '%s' has over 8 ids", name);
        cJSON_ArrayForEach(x, ids) {
            if (!cJSON_IsNumber(x) || x->valueint < 0 || x->valueint >= t->n_ids || !t->tok[x->valueint])
                return bad(c, "post_processor TemplateProcessing: special token '%s' has an id outside the vocabulary", name);
            if (seen_a) t->post_post[t->n_post_post++] = x->valueint;
            else t->post_pre[t->n_post_pre++] = x->valueint;
        }
    }
    if (!seen_a) return bad(c, "post_processor TemplateProcessing: 'single' has no $A");
    return 0;
}

/* ---------------------------------------------------------------- the model */

static int set_token(ctx *c, moe_tokenizer *t, int id, const char *s) {
    if (id < 0 || id >= t->n_ids) return bad(c, "token '%s': id %d outside 0..%d", s, id, t->n_ids - 1);
    if (t->tok[id] && strcmp(t->tok[id], s)) return bad(c, "id %d is both '%s' and '%s'", id, t->tok[id], s);
    if (!t->tok[id]) {
        t->tok[id] = strdup(s);
        t->tok_len[id] = (int)strlen(s);
        if (!t->tok[id]) return bad(c, "out of memory");
    }
    return 0;
}

static int load_model(ctx *c, moe_tokenizer *t, const cJSON *model, const cJSON *added) {
    const char *ty = type_of(model);
    if (!model) return bad(c, "no 'model'");
    if (ty && strcmp(ty, "BPE")) return bad(c, "model type '%s' is not supported (only BPE)", ty);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab"), *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab)) return bad(c, "model: 'vocab' is not an object of token: id");
    if (merges && !cJSON_IsArray(merges)) return bad(c, "model: 'merges' is not a list");
    const cJSON *drop = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (drop && !cJSON_IsNull(drop)) return bad(c, "model BPE: dropout %g is not supported (training-time sampling)", drop->valuedouble);
    const char *pre = str_of(model, "continuing_subword_prefix"), *suf = str_of(model, "end_of_word_suffix");
    if ((pre && *pre) || (suf && *suf))
        return bad(c, "model BPE: continuing_subword_prefix / end_of_word_suffix '%s' is not supported", pre && *pre ? pre : suf);
    t->byte_fallback = flag(model, "byte_fallback", 0);
    t->fuse_unk = flag(model, "fuse_unk", 0);
    t->ignore_merges = flag(model, "ignore_merges", 0);
    // ids: the largest over the vocabulary and the added tokens
    int max_id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 1e8 || e->valuedouble != (int)e->valuedouble)
            return bad(c, "model: vocab entry '%s' has no valid id", e->string);
        max_id = e->valueint > max_id ? e->valueint : max_id;
    }
    cJSON_ArrayForEach(e, added) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 1e8 || !str_of(e, "content"))
            return bad(c, "added_tokens: an entry without a valid 'id' and 'content'");
        max_id = id->valueint > max_id ? id->valueint : max_id;
    }
    if (max_id < 0) return bad(c, "model: the vocabulary is empty");
    t->n_ids = max_id + 1;
    t->tok = calloc((size_t)t->n_ids, sizeof *t->tok);
    t->tok_len = calloc((size_t)t->n_ids, sizeof *t->tok_len);
    if (!t->tok || !t->tok_len || !map_init(&t->vocab, t->n_ids) || !map_init(&t->all, t->n_ids)) return bad(c, "out of memory");
    cJSON_ArrayForEach(e, vocab) {
        if (set_token(c, t, e->valueint, e->string)) return -1;
        map_put(t, &t->vocab, e->valueint);
        map_put(t, &t->all, e->valueint);
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = moe__tk_get(t, &t->vocab, name, 6);
    }
    const char *unk = str_of(model, "unk_token");
    t->unk_id = unk ? moe__tk_get(t, &t->vocab, unk, (int)strlen(unk)) : -1;
    if (unk && t->unk_id < 0) return bad(c, "model: unk_token '%s' is not in the vocabulary", unk);
    // merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs
    int nm = merges ? cJSON_GetArraySize(merges) : 0;
    uint32_t cap = 16;
    while (cap < (uint32_t)nm * 2 + 16) cap *= 2;
    t->mkey = malloc(cap * sizeof *t->mkey);
    t->mrank = malloc(cap * sizeof *t->mrank);
    t->mid = malloc(cap * sizeof *t->mid);
    if (!t->mkey || !t->mrank || !t->mid) return bad(c, "out of memory");
    memset(t->mrank, 0xff, cap * sizeof *t->mrank);
    t->mmask = cap - 1;
    int rank = 0;
    char buf[1024];
    cJSON_ArrayForEach(e, merges) {
        const char *a, *b;
        int la, lb;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ')) return bad(c, "model: merge %d '%s' is not two tokens separated by one space", rank, e->valuestring);
            a = e->valuestring, la = (int)(sp - a), b = sp + 1, lb = (int)strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring, b = cJSON_GetArrayItem(e, 1)->valuestring;
            la = (int)strlen(a), lb = (int)strlen(b);
        } else
            return bad(c, "model: merge %d is neither \"a b\" nor [\"a\", \"b\"]", rank);
        int ia = moe__tk_get(t, &t->vocab, a, la), ib = moe__tk_get(t, &t->vocab, b, lb);
        if (la + lb >= (int)sizeof buf) return bad(c, "model: merge %d is too long", rank);
        memcpy(buf, a, (size_t)la), memcpy(buf + la, b, (size_t)lb);
        int im = moe__tk_get(t, &t->vocab, buf, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            buf[la + lb] = 0;
            return bad(c, "model: merge %d ('%.*s' + '%.*s') names a token not in the vocabulary", rank, la, a, lb, b);
        }
        uint64_t key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
        uint32_t i = (uint32_t)mix64(key) & t->mmask;
        while (t->mrank[i] >= 0 && t->mkey[i] != key) i = (i + 1) & t->mmask;
        if (t->mrank[i] < 0) { // a repeated merge keeps its first (lowest) rank, as tokenizers does
            t->mkey[i] = key, t->mrank[i] = rank, t->mid[i] = im;
        }
        rank++;
    }
    // added tokens: matched in the text before anything else
    t->n_added = cJSON_GetArraySize(added);
    t->added = calloc((size_t)t->n_added + 1, sizeof *t->added);
    if (!t->added) return bad(c, "out of memory");
    int k = 0;
    cJSON_ArrayForEach(e, added) {
        tk_added *a = &t->added[k++];
        a->id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        if (set_token(c, t, a->id, str_of(e, "content"))) return -1;
        map_put(t, &t->all, a->id);
        a->content = t->tok[a->id];
        a->len = t->tok_len[a->id];
        a->special = flag(e, "special", 0);
        a->lstrip = flag(e, "lstrip", 0);
        a->rstrip = flag(e, "rstrip", 0);
        a->single_word = flag(e, "single_word", 0);
        a->normalized = flag(e, "normalized", !a->special);
        if (a->len == 0) return bad(c, "added_tokens: id %d has empty content", a->id);
        t->any_normalized_added |= a->normalized;
    }
    // the index by first byte, longest first (leftmost-longest matching looks at one byte's list)
    if (!(t->added_by_byte = malloc(((size_t)t->n_added + 1) * sizeof(int)))) return bad(c, "out of memory");
    int at = 0;
    for (int byte = 0; byte < 256; byte++) {
        t->added_at[byte] = at;
        for (int i = 0; i < t->n_added; i++)
            if ((unsigned char)t->added[i].content[0] == byte) {
                int j = at++;
                while (j > t->added_at[byte] && t->added[t->added_by_byte[j - 1]].len < t->added[i].len)
                    t->added_by_byte[j] = t->added_by_byte[j - 1], j--;
                t->added_by_byte[j] = i;
            }
    }
    t->added_at[256] = at;
    return 0;
}

/* ---------------------------------------------------------------- BOS and EOS */

/* tokenizer_config.json's bos_token / eos_token: a string or {"content": ...}; -1 when absent
 * or null, -2 (an error set, naming path) when it names no token of the vocabulary. */
static int config_token(const moe_tokenizer *t, const cJSON *cfg, const char *key, const char *path) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    const char *s = cJSON_IsString(v) ? v->valuestring : str_of(v, "content");
    if (!s) return -1;
    int id = moe__tk_get(t, &t->all, s, (int)strlen(s));
    if (id < 0) moe__err(MOE_STATUS_FORMAT, "%s: %s '%s' is not a token of the tokenizer", path, key, s);
    return id < 0 ? -2 : id;
}

static moe_status find_bos_eos(moe_tokenizer *t, const char *dir) {
    t->bos = t->n_post_pre ? t->post_pre[0] : -1;
    t->eos = -1;
    static const char *eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>",
                                      "<｜end▁of▁sentence｜>"};
    for (size_t i = 0; i < sizeof eos_names / sizeof *eos_names && t->eos < 0; i++)
        t->eos = moe__tk_get(t, &t->all, eos_names[i], (int)strlen(eos_names[i]));
    char *path = moe__path_join(dir, "tokenizer_config.json");
    size_t len;
    char *text = path ? moe__read_file(path, &len) : NULL;
    cJSON *cfg = text ? cJSON_Parse(text) : NULL;
    moe_status st = MOE_STATUS_OK;
    if (text && !cfg) st = moe__err(MOE_STATUS_FORMAT, "%s: not JSON", path);
    if (cfg) {
        int b = config_token(t, cfg, "bos_token", path), e = b == -2 ? -2 : config_token(t, cfg, "eos_token", path);
        if (b == -2 || e == -2) st = MOE_STATUS_FORMAT;
        if (b >= 0) t->bos = b;
        if (e >= 0) t->eos = e;
    }
    cJSON_Delete(cfg);
    free(text);
    free(path);
    return st;
}

/* ---------------------------------------------------------------- the API */

static void compute_token_bytes(moe_tokenizer *t) {
    int meta = 0;
    for (int i = 0; i < t->n_dec; i++) meta |= t->dec[i].kind == DEC_METASPACE || t->dec[i].kind == DEC_REPLACE;
    for (int id = 0; id < t->n_ids; id++) {
        const char *s = t->tok[id];
        int n = 0;
        if (!s) continue;
        if (t->special[id]) {
            t->token_bytes[id] = 0;
            continue;
        }
        if (t->byte_fallback && t->tok_len[id] == 6 && !strncmp(s, "<0x", 3) && s[5] == '>') {
            t->token_bytes[id] = 1;
            continue;
        }
        for (int i = 0; i < t->tok_len[id];) {
            int l = moe__tk_utf8_len((const unsigned char *)s + i, (size_t)(t->tok_len[id] - i));
            if (l == 0) l = 1;
            if (t->byte_level && moe__tk_char_byte(moe__tk_cp(s + i, l)) >= 0) n += 1; // one byte per mapped character
            else if (meta && l == 3 && !memcmp(s + i, "\xe2\x96\x81", 3)) n += 1; // ▁ is a space
            else n += l;
            i += l;
        }
        t->token_bytes[id] = n;
    }
}

moe_status moe_tokenizer_load(const char *path, moe_tokenizer **out) {
    *out = NULL;
    struct stat sb;
    char *file = NULL, *dir = NULL;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        file = moe__path_join(path, "tokenizer.json");
        dir = strdup(path);
    } else {
        file = strdup(path);
        const char *sl = strrchr(path, '/');
        dir = sl ? strndup(path, (size_t)(sl - path) + (sl == path)) : strdup(".");
    }
    if (!file || !dir) {
        free(file), free(dir);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    size_t len;
    char *text = moe__read_file(file, &len);
    if (!text) {
        moe_status st = moe__err(MOE_STATUS_IO, "cannot read tokenizer '%s': %s", file, strerror(errno));
        free(file), free(dir);
        return st;
    }
    ctx c = {file, MOE_STATUS_OK};
    moe_tokenizer *t = calloc(1, sizeof *t);
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (!t) bad(&c, "out of memory");
    else if (!j) bad(&c, "not JSON (near byte %ld)", (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - text : 0));
    else {
        t->serial = __atomic_fetch_add(&next_serial, 1, __ATOMIC_RELAXED);
        snprintf(t->hash, sizeof t->hash, "%016llx", (unsigned long long)moe__fnv1a(MOE_FNV_INIT, text, len));
        const cJSON *x;
        const cJSON *tr = cJSON_GetObjectItemCaseSensitive(j, "truncation"), *pad = cJSON_GetObjectItemCaseSensitive(j, "padding");
        if (tr && !cJSON_IsNull(tr)) bad(&c, "truncation is set: moe encodes whole texts (set it to null)");
        else if (pad && !cJSON_IsNull(pad)) bad(&c, "padding is set: moe encodes whole texts (set it to null)");
        else if (load_model(&c, t, cJSON_GetObjectItemCaseSensitive(j, "model"), cJSON_GetObjectItemCaseSensitive(j, "added_tokens")) == 0) {
            if ((x = cJSON_GetObjectItemCaseSensitive(j, "normalizer")) && !cJSON_IsNull(x)) add_norm(&c, t, x);
            if (c.st == MOE_STATUS_OK && (x = cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer")) && !cJSON_IsNull(x)) add_pre(&c, t, x);
            if (c.st == MOE_STATUS_OK && (x = cJSON_GetObjectItemCaseSensitive(j, "post_processor")) && !cJSON_IsNull(x)) add_post(&c, t, x);
            if (c.st == MOE_STATUS_OK && (x = cJSON_GetObjectItemCaseSensitive(j, "decoder")) && !cJSON_IsNull(x)) {
                t->has_decoder = 1;
                add_dec(&c, t, x);
            }
        }
    }
    cJSON_Delete(j);
    free(text);
    if (c.st == MOE_STATUS_OK && (!(t->token_bytes = calloc((size_t)t->n_ids, sizeof(int))) || !(t->special = calloc((size_t)t->n_ids, 1))))
        bad(&c, "out of memory");
    for (int k = 0; c.st == MOE_STATUS_OK && k < t->n_added; k++) t->special[t->added[k].id] |= (unsigned char)t->added[k].special;
    if (c.st != MOE_STATUS_OK) {
        moe_status st = c.st;
        moe_tokenizer_free(t);
        free(file), free(dir);
        return st;
    }
    moe_status st = find_bos_eos(t, dir);
    if (st != MOE_STATUS_OK) {
        moe_tokenizer_free(t);
        free(file), free(dir);
        return st;
    }
    compute_token_bytes(t);
    // the cut must not split what one piece would do as a whole: a run of unknown characters
    // fused into one <unk> (when U+2581 itself is unknown) or a whole-text vocabulary lookup
    // (ignore_merges)
    int meta_known = moe__tk_get(t, &t->vocab, "\xe2\x96\x81", 3) >= 0 ||
                     (t->byte_fallback && t->byte_id[0xe2] >= 0 && t->byte_id[0x96] >= 0 && t->byte_id[0x81] >= 0);
    t->meta_split = t->n_pre == 0 && !t->ignore_merges && (meta_known || !t->fuse_unk || t->unk_id < 0);
    for (int id = 0; id < t->n_ids && t->meta_split; id++) {
        const char *s = t->tok[id];
        int n = t->tok_len[id], prev = -1; // prev: 1 = the character before was U+2581, 0 = another
        for (int i = 0; s && i < n && t->meta_split;) {
            int l = moe__tk_utf8_len((const unsigned char *)s + i, (size_t)(n - i));
            int meta = l == 3 && !memcmp(s + i, "\xe2\x96\x81", 3);
            if (meta && prev == 0) t->meta_split = 0;
            prev = meta;
            i += l ? l : 1;
        }
    }
    free(file), free(dir);
    *out = t;
    return MOE_STATUS_OK;
}

void moe_tokenizer_free(moe_tokenizer *t) {
    if (!t) return;
    for (int i = 0; t->tok && i < t->n_ids; i++) free(t->tok[i]);
    free(t->tok), free(t->tok_len), free(t->vocab.slot), free(t->all.slot);
    free(t->mkey), free(t->mrank), free(t->mid);
    for (int i = 0; i < t->n_norm; i++) free(t->norm[i].a), free(t->norm[i].b), pcre2_code_free(t->norm[i].re);
    for (int i = 0; i < t->n_pre; i++) free(t->pre[i].lit), pcre2_code_free(t->pre[i].re);
    for (int i = 0; i < t->n_dec; i++) free(t->dec[i].a), free(t->dec[i].b);
    free(t->norm), free(t->pre), free(t->dec), free(t->added);
    free(t->post_pre), free(t->post_post), free(t->token_bytes), free(t->added_by_byte), free(t->special);
    free(t);
}

int moe_tokenizer_vocab_size(const moe_tokenizer *t) { return t->n_ids; }
int moe_tokenizer_bos(const moe_tokenizer *t) { return t->bos; }
int moe_tokenizer_eos(const moe_tokenizer *t) { return t->eos; }
int moe_tokenizer_eot(const moe_tokenizer *t) { return t->eos >= 0 ? t->eos : t->bos; }
const char *moe_tokenizer_hash(const moe_tokenizer *t) { return t->hash; }
const char *moe_tokenizer_token(const moe_tokenizer *t, int id) { return id >= 0 && id < t->n_ids && t->tok[id] ? t->tok[id] : ""; }
int moe_tokenizer_id(const moe_tokenizer *t, const char *token) { return moe__tk_get(t, &t->all, token, (int)strlen(token)); }
int moe_tokenizer_token_bytes(const moe_tokenizer *t, int id) { return id >= 0 && id < t->n_ids ? t->token_bytes[id] : 0; }
