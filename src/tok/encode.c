/*
 * encode.c — text to ids, step for step as Hugging Face's tokenizers does it: added tokens are
 * split out first (leftmost-longest; those with normalized=false on the raw text, the others
 * after normalization), each other segment is normalized, pre-tokenized into pieces and each
 * piece is BPE-encoded (merges by rank, leftmost first among equals; byte fallback or unk for
 * characters outside the vocabulary); the post-processor's special tokens go around.
 *
 * Invalid UTF-8: a byte-level tokenizer (a ByteLevel pre-tokenizer) takes the bytes as they are
 * (no pattern matches an invalid byte, so each run of them is a piece of its own, mapped to its
 * byte characters); any other reads each maximal invalid subsequence as U+FFFD.
 *
 * Each thread keeps a cache of the pieces it encoded (piece -> ids), keyed by the tokenizer's
 * serial number, so that a tokenizer stays read-only and shared.
 */
#define _GNU_SOURCE /* memmem */
#include "tok/tok.h"
#include "core/core.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- UTF-8 */

int moe__tk_utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int len;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else return 0;
    if ((size_t)len > n) return 0;
    if (s[1] < lo || s[1] > hi) return 0;
    for (int i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf) return 0;
    return len;
}

/* Bytes of the maximal subpart of an invalid sequence at s: its lead and the continuation
 * bytes that were still valid for it (at least 1). */
static int invalid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xbf;
    int len;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else return 1;
    int k = 1;
    if ((size_t)k < n && s[k] >= lo && s[k] <= hi) k++;
    else return 1;
    while (k < len && (size_t)k < n && s[k] >= 0x80 && s[k] <= 0xbf) k++;
    return k;
}

size_t moe__tk_lossy(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int l = moe__tk_utf8_len((const unsigned char *)s + i, n - i);
        if (l) {
            memcpy(out + o, s + i, (size_t)l);
            o += (size_t)l, i += (size_t)l;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, i += (size_t)invalid_len((const unsigned char *)s + i, n - i);
        }
    }
    return o;
}

uint32_t moe__tk_cp(const char *s, int l) {
    const unsigned char *u = (const unsigned char *)s;
    if (l == 1) return u[0];
    if (l == 2) return ((uint32_t)(u[0] & 0x1f) << 6) | (u[1] & 0x3f);
    if (l == 3) return ((uint32_t)(u[0] & 0x0f) << 12) | ((uint32_t)(u[1] & 0x3f) << 6) | (u[2] & 0x3f);
    return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3f) << 12) | ((uint32_t)(u[2] & 0x3f) << 6) | (u[3] & 0x3f);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for 256+n */
static char byte_utf8[256][3];
static int byte_utf8_len[256];
static int16_t cp_byte[512];

static void byte_table_init(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int keep = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        uint32_t cp = keep ? (uint32_t)b : 256u + (uint32_t)n++;
        cp_byte[cp] = (int16_t)b;
        if (cp < 0x80) byte_utf8[b][0] = (char)cp, byte_utf8_len[b] = 1;
        else byte_utf8[b][0] = (char)(0xc0 | (cp >> 6)), byte_utf8[b][1] = (char)(0x80 | (cp & 0x3f)), byte_utf8_len[b] = 2;
    }
}

static int byte_table_ready(void) {
    static int done; // idempotent: racing threads write the same values
    if (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) {
        byte_table_init();
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    return 1;
}

const char *moe__tk_byte_char(int b, int *len) {
    byte_table_ready();
    *len = byte_utf8_len[b];
    return byte_utf8[b];
}

int moe__tk_char_byte(uint32_t cp) {
    byte_table_ready();
    return cp < 512 ? cp_byte[cp] : -1;
}

/* Unicode White_Space (Rust's char::is_whitespace) */
static int is_ws(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

static int is_numeric(uint32_t c) {
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

static int is_alnum(uint32_t c) {
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || is_numeric(c);
}

/* The character at s[i] (n bytes): its length (an invalid byte counts as one) and code point. */
static int char_at(const char *s, size_t n, size_t i, uint32_t *cp) {
    int l = moe__tk_utf8_len((const unsigned char *)s + i, n - i);
    if (!l) {
        *cp = 0xfffd;
        return 1;
    }
    *cp = moe__tk_cp(s + i, l);
    return l;
}

/* The start of the character before s[i] (i > 0), and its code point. */
static size_t prev_char(const char *s, size_t n, size_t i, uint32_t *cp) {
    size_t j = i - 1;
    while (j > 0 && i - j < 4 && ((unsigned char)s[j] & 0xc0) == 0x80) j--;
    if (moe__tk_utf8_len((const unsigned char *)s + j, n - j) != (int)(i - j)) j = i - 1; // invalid: one byte
    char_at(s, n, j, cp);
    return j;
}

/* ---------------------------------------------------------------- buffers */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static int sb_reserve(sbuf *b, size_t more) {
    if (b->n + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + more) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p, b->cap = cap;
    return 0;
}

static int sb_add(sbuf *b, const char *s, size_t n) {
    if (n == 0) return 0;
    if (sb_reserve(b, n)) return -1;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* pieces: (offset, length, first) into one text buffer */
typedef struct {
    sbuf text;
    size_t *off, *len;
    unsigned char *first;
    int n, cap;
} plist;

static int pl_add(plist *l, const char *a, size_t na, const char *b, size_t nb, int first) {
    if (na + nb == 0) return 0;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        size_t *o = realloc(l->off, (size_t)cap * sizeof *o), *n = o ? realloc(l->len, (size_t)cap * sizeof *n) : NULL;
        if (o) l->off = o;
        if (n) l->len = n;
        unsigned char *f = n ? realloc(l->first, (size_t)cap) : NULL;
        if (!f) return -1;
        l->first = f, l->cap = cap;
    }
    size_t at = l->text.n;
    if (sb_add(&l->text, a, na) || sb_add(&l->text, b, nb)) return -1;
    l->off[l->n] = at, l->len[l->n] = na + nb, l->first[l->n] = (unsigned char)first;
    l->n++;
    return 0;
}

static void pl_clear(plist *l) { l->n = 0, l->text.n = 0; }

/* ---------------------------------------------------------------- per-thread state */

typedef struct {
    uint64_t owner;            /* serial of the tokenizer the cache holds pieces of */
    uint32_t *slot;            /* entry offset + 1 into arena, 0 = empty */
    uint32_t mask, used;
    sbuf arena;                /* entries: [u32 key len][u32 n ids][key, padded to 4][ids] */
    pcre2_match_data *md;
    plist a, b;                /* pre-tokenizer ping-pong */
    sbuf norm, tmp;
    int *sym, *nxt, *prv;      /* BPE symbols */
    int sym_cap;
    uint64_t *heap;
    int heap_cap;
} tk_thread;

static _Thread_local tk_thread th;

enum { CACHE_SLOTS = 1 << 16, CACHE_ARENA = 16 << 20, CACHE_MAX_PIECE = 256 };

static uint32_t *cache_find(const char *s, size_t n, uint32_t h) {
    for (uint32_t i = h & th.mask;; i = (i + 1) & th.mask) {
        uint32_t e = th.slot[i];
        if (!e) return &th.slot[i];
        const uint32_t *ent = (const uint32_t *)(th.arena.p + e - 1);
        if (ent[0] == n && !memcmp(ent + 2, s, n)) return &th.slot[i];
    }
}

static void cache_reset(uint64_t owner) {
    if (!th.slot) {
        th.slot = calloc(CACHE_SLOTS, sizeof *th.slot);
        th.mask = CACHE_SLOTS - 1;
    } else
        memset(th.slot, 0, CACHE_SLOTS * sizeof *th.slot);
    th.used = 0, th.arena.n = 0, th.owner = owner;
}

/* ---------------------------------------------------------------- output ids */

typedef struct {
    int **ids;
    size_t *n, *cap;
    int oom;
} out_ids;

static void emit(out_ids *o, int id) {
    if (*o->n == *o->cap) {
        size_t cap = *o->cap ? 2 * *o->cap : 64;
        int *p = realloc(*o->ids, cap * sizeof *p);
        if (!p) {
            o->oom = 1;
            return;
        }
        *o->ids = p, *o->cap = cap;
    }
    (*o->ids)[(*o->n)++] = id;
}

/* ---------------------------------------------------------------- BPE */

static int grow_sym(int n) {
    if (n <= th.sym_cap) return 0;
    int cap = th.sym_cap ? th.sym_cap : 64;
    while (cap < n) cap *= 2;
    int *a = realloc(th.sym, (size_t)cap * sizeof *a), *b = a ? realloc(th.nxt, (size_t)cap * sizeof *b) : NULL;
    if (a) th.sym = a;
    if (b) th.nxt = b;
    int *c = b ? realloc(th.prv, (size_t)cap * sizeof *c) : NULL;
    uint64_t *h = c ? realloc(th.heap, (size_t)cap * 2 * sizeof *h) : NULL;
    if (c) th.prv = c;
    if (!h) return -1;
    th.heap = h, th.sym_cap = cap, th.heap_cap = 2 * cap;
    return 0;
}

/* heap of (rank << 32 | position): the lowest rank first, then the leftmost */
static void heap_push(int *hn, uint64_t v) {
    int i = (*hn)++;
    th.heap[i] = v;
    while (i > 0 && th.heap[(i - 1) / 2] > th.heap[i]) {
        uint64_t x = th.heap[i];
        th.heap[i] = th.heap[(i - 1) / 2], th.heap[(i - 1) / 2] = x;
        i = (i - 1) / 2;
    }
}

static uint64_t heap_pop(int *hn) {
    uint64_t top = th.heap[0];
    th.heap[0] = th.heap[--*hn];
    for (int i = 0;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *hn && th.heap[l] < th.heap[m]) m = l;
        if (r < *hn && th.heap[r] < th.heap[m]) m = r;
        if (m == i) break;
        uint64_t x = th.heap[i];
        th.heap[i] = th.heap[m], th.heap[m] = x;
        i = m;
    }
    return top;
}

static void push_pair(const moe_tokenizer *t, int *hn, int i) {
    int j = th.nxt[i], id;
    if (j < 0) return;
    int r = moe__tk_merge(t, th.sym[i], th.sym[j], &id);
    if (r >= 0 && *hn < th.heap_cap) heap_push(hn, ((uint64_t)(uint32_t)r << 32) | (uint32_t)i);
}

/* One piece to ids, appended to o. */
static void bpe(const moe_tokenizer *t, const char *s, size_t n, out_ids *o) {
    if (t->ignore_merges) {
        int id = moe__tk_get(t, &t->vocab, s, (int)n);
        if (id >= 0) {
            emit(o, id);
            return;
        }
    }
    if (grow_sym((int)n * 4 + 4)) {
        o->oom = 1;
        return;
    }
    int ns = 0, last_unk = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = char_at(s, n, i, &cp);
        int id = moe__tk_get(t, &t->vocab, s + i, l);
        if (id >= 0) {
            th.sym[ns++] = id, last_unk = 0;
        } else {
            int all = t->byte_fallback;
            for (int k = 0; all && k < l; k++) all = t->byte_id[(unsigned char)s[i + k]] >= 0;
            if (all) {
                for (int k = 0; k < l; k++) th.sym[ns++] = t->byte_id[(unsigned char)s[i + k]];
                last_unk = 0;
            } else if (t->unk_id >= 0) {
                if (!(t->fuse_unk && last_unk)) th.sym[ns++] = t->unk_id;
                last_unk = 1;
            }
        }
        i += (size_t)l;
    }
    for (int i = 0; i < ns; i++) th.nxt[i] = i + 1 < ns ? i + 1 : -1, th.prv[i] = i - 1;
    int hn = 0;
    for (int i = 0; i + 1 < ns; i++) push_pair(t, &hn, i);
    while (hn > 0) {
        uint64_t top = heap_pop(&hn);
        int i = (int)(uint32_t)top, r = (int)(top >> 32), j = th.nxt[i], id;
        if (th.sym[i] < 0 || j < 0 || moe__tk_merge(t, th.sym[i], th.sym[j], &id) != r) continue; // stale
        th.sym[i] = id;
        th.sym[j] = -1;
        th.nxt[i] = th.nxt[j];
        if (th.nxt[j] >= 0) th.prv[th.nxt[j]] = i;
        if (th.prv[i] >= 0) push_pair(t, &hn, th.prv[i]);
        push_pair(t, &hn, i);
    }
    for (int i = ns ? 0 : -1; i >= 0; i = th.nxt[i]) emit(o, th.sym[i]);
}

/* bpe through the thread's cache */
static void bpe_cached(const moe_tokenizer *t, const char *s, size_t n, out_ids *o) {
    if (n > CACHE_MAX_PIECE) {
        bpe(t, s, n, o);
        return;
    }
    if (th.owner != t->serial || !th.slot) cache_reset(t->serial);
    if (!th.slot) {
        bpe(t, s, n, o);
        return;
    }
    uint32_t h = (uint32_t)moe__fnv1a(MOE_FNV_INIT, s, n);
    uint32_t *slot = cache_find(s, n, h);
    if (*slot) {
        const uint32_t *ent = (const uint32_t *)(th.arena.p + *slot - 1);
        const int *ids = (const int *)(ent + 2 + (ent[0] + 3) / 4);
        for (uint32_t k = 0; k < ent[1]; k++) emit(o, ids[k]);
        return;
    }
    size_t before = *o->n;
    bpe(t, s, n, o);
    if (o->oom) return;
    size_t nid = *o->n - before, need = 8 + (n + 3) / 4 * 4 + nid * 4;
    if (th.used * 2 >= CACHE_SLOTS || th.arena.n + need > CACHE_ARENA) {
        cache_reset(t->serial);
        slot = cache_find(s, n, h);
    }
    if (sb_reserve(&th.arena, need)) return;
    uint32_t at = (uint32_t)th.arena.n;
    uint32_t *ent = (uint32_t *)(th.arena.p + at);
    ent[0] = (uint32_t)n, ent[1] = (uint32_t)nid;
    memcpy(ent + 2, s, n);
    memcpy(ent + 2 + (n + 3) / 4, *o->ids + before, nid * sizeof(int));
    th.arena.n += need;
    *slot = at + 1;
    th.used++;
}

/* ---------------------------------------------------------------- splitting */

/* (start, end, is_match) parts covering s[0..n) */
typedef struct {
    size_t *a, *b;
    unsigned char *m;
    int n, cap;
} parts;

static _Thread_local parts pt;

static int part_add(size_t a, size_t b, int m) {
    if (pt.n == pt.cap) {
        int cap = pt.cap ? 2 * pt.cap : 64;
        size_t *x = realloc(pt.a, (size_t)cap * sizeof *x), *y = x ? realloc(pt.b, (size_t)cap * sizeof *y) : NULL;
        if (x) pt.a = x;
        if (y) pt.b = y;
        unsigned char *z = y ? realloc(pt.m, (size_t)cap) : NULL;
        if (!z) return -1;
        pt.m = z, pt.cap = cap;
    }
    pt.a[pt.n] = a, pt.b[pt.n] = b, pt.m[pt.n] = (unsigned char)m;
    pt.n++;
    return 0;
}

/* Matches of a regex, a literal or the numeric characters (digits: 1 individual, 2 runs). */
static int find_parts(const char *s, size_t n, pcre2_code *re, const char *lit, int digits) {
    pt.n = 0;
    size_t prev = 0;
    if (re) {
        if (!th.md && !(th.md = pcre2_match_data_create(1, NULL))) return -1;
        for (size_t at = 0; at <= n;) {
            int rc = pcre2_match(re, (PCRE2_SPTR)s, n, at, 0, th.md, NULL);
            if (rc < 0) break;
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(th.md);
            size_t a = ov[0], b = ov[1];
            if (a > prev && part_add(prev, a, 0)) return -1;
            if (b > a && part_add(a, b, 1)) return -1;
            prev = b > prev ? b : prev;
            if (b == a) { // an empty match: step over one character
                uint32_t cp;
                if (b >= n) break;
                at = b + (size_t)char_at(s, n, b, &cp);
            } else
                at = b;
        }
    } else if (lit) {
        size_t ll = strlen(lit);
        for (size_t at = 0; ll && at + ll <= n;) {
            const char *f = memmem(s + at, n - at, lit, ll);
            if (!f) break;
            size_t a = (size_t)(f - s);
            if (a > prev && part_add(prev, a, 0)) return -1;
            if (part_add(a, a + ll, 1)) return -1;
            prev = at = a + ll;
        }
    } else {
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            int l = char_at(s, n, i, &cp);
            if (is_numeric(cp)) {
                size_t j = i + (size_t)l;
                while (digits == 2 && j < n) {
                    int l2 = char_at(s, n, j, &cp);
                    if (!is_numeric(cp)) break;
                    j += (size_t)l2;
                }
                if (i > prev && part_add(prev, i, 0)) return -1;
                if (part_add(i, j, 1)) return -1;
                prev = i = j;
            } else
                i += (size_t)l;
        }
    }
    if (prev < n && part_add(prev, n, 0)) return -1;
    return 0;
}

/* tokenizers' split(pattern, behavior) of the parts into pieces of out. MergedWithNext, which
 * tokenizers computes from the end, is the same read forwards: a match joins the part after it
 * unless that part is a match too. */
static int apply_behavior(plist *out, const char *s, int behavior, int invert, int first) {
    if (invert)
        for (int i = 0; i < pt.n; i++) pt.m[i] ^= 1;
    int k = 0, prevm = 0; // the parts are rewritten in place into the pieces
    for (int i = 0; i < pt.n; i++) {
        int m = pt.m[i];
        if (behavior == SPLIT_REMOVED && m) {
        } else if ((behavior == SPLIT_MERGED_PREV && m && !prevm && k > 0) || (behavior == SPLIT_CONTIGUOUS && m == prevm && k > 0)) {
            pt.b[k - 1] = pt.b[i];
        } else if (behavior == SPLIT_MERGED_NEXT && m && i + 1 < pt.n && !pt.m[i + 1]) {
            pt.a[i + 1] = pt.a[i];
        } else {
            pt.a[k] = pt.a[i], pt.b[k] = pt.b[i], k++;
        }
        prevm = m;
    }
    for (int i = 0; i < k; i++)
        if (pl_add(out, s + pt.a[i], pt.b[i] - pt.a[i], NULL, 0, first && pt.a[i] == 0)) return -1;
    return 0;
}

/* ---------------------------------------------------------------- normalizers */

/* Applies utf8proc's normal form to the valid UTF-8 runs of s (invalid bytes pass). */
static int unicode_form(sbuf *out, const char *s, size_t n, int kind) {
    utf8proc_option_t opt = UTF8PROC_STABLE | (kind == NORM_NFC || kind == NORM_NFKC ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE);
    if (kind == NORM_NFKC || kind == NORM_NFKD) opt |= UTF8PROC_COMPAT;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && moe__tk_utf8_len((const unsigned char *)s + j, n - j)) j += (size_t)moe__tk_utf8_len((const unsigned char *)s + j, n - j);
        if (j > i) {
            utf8proc_uint8_t *r = NULL;
            utf8proc_ssize_t len = utf8proc_map((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(j - i), &r, opt);
            if (len < 0) return -1;
            int e = sb_add(out, (const char *)r, (size_t)len);
            free(r);
            if (e) return -1;
        }
        if (j < n && sb_add(out, s + j, 1)) return -1;
        i = j + (j < n);
    }
    return 0;
}

/* th.norm = the normalizers applied to s */
static int normalize(const moe_tokenizer *t, const char *s, size_t n) {
    th.norm.n = 0;
    if (sb_add(&th.norm, s, n)) return -1;
    for (int k = 0; k < t->n_norm; k++) {
        const tk_norm *z = &t->norm[k];
        th.tmp.n = 0;
        const char *x = th.norm.p;
        size_t xn = th.norm.n;
        switch (z->kind) {
        case NORM_PREPEND:
            if (xn && (sb_add(&th.tmp, z->a, strlen(z->a)) || sb_add(&th.tmp, x, xn))) return -1;
            break;
        case NORM_REPLACE:
            if (find_parts(x, xn, z->re, z->a, 0)) return -1;
            for (int i = 0; i < pt.n; i++) {
                const char *piece = pt.m[i] ? z->b : x + pt.a[i];
                if (sb_add(&th.tmp, piece, pt.m[i] ? strlen(z->b) : pt.b[i] - pt.a[i])) return -1;
            }
            break;
        default:
            if (unicode_form(&th.tmp, x, xn, z->kind)) return -1;
        }
        sbuf sw = th.norm;
        th.norm = th.tmp, th.tmp = sw;
    }
    return 0;
}

/* ---------------------------------------------------------------- pre-tokenizers */

static int pre_one(const tk_pre *p, plist *out, const char *s, size_t n, int first) {
    switch (p->kind) {
    case PRE_SPLIT:
        return find_parts(s, n, p->re, p->lit, 0) || apply_behavior(out, s, p->behavior, p->invert, first);
    case PRE_DIGITS:
        return find_parts(s, n, NULL, NULL, p->individual ? 1 : 2) || apply_behavior(out, s, SPLIT_ISOLATED, 0, first);
    case PRE_METASPACE: {
        th.tmp.n = 0;
        size_t rl = strlen(p->repl);
        int starts = n >= rl && !memcmp(s, p->repl, rl);
        if (!starts && ((p->prepend == PREPEND_ALWAYS && !(n > 0 && s[0] == ' ')) ||
                        (p->prepend == PREPEND_FIRST && first && !(n > 0 && s[0] == ' '))) &&
            sb_add(&th.tmp, p->repl, rl))
            return -1;
        for (size_t i = 0; i < n; i++)
            if (s[i] == ' ' ? sb_add(&th.tmp, p->repl, rl) : sb_add(&th.tmp, s + i, 1)) return -1;
        char *x = th.tmp.p; // find_parts and apply_behavior leave th.tmp alone
        size_t xn = th.tmp.n;
        if (!p->split) return pl_add(out, x, xn, NULL, 0, first);
        return find_parts(x, xn, NULL, p->repl, 0) || apply_behavior(out, x, SPLIT_MERGED_NEXT, 0, first);
    }
    case PRE_BYTELEVEL: {
        plist *tmp = out; // split (with the prefix space), then map each piece's bytes
        int base = tmp->n;
        th.tmp.n = 0;
        if (p->add_prefix_space && !(n > 0 && s[0] == ' ') && sb_add(&th.tmp, " ", 1)) return -1;
        if (sb_add(&th.tmp, s, n)) return -1;
        const char *x = th.tmp.p;
        size_t xn = th.tmp.n;
        if (p->re) {
            if (find_parts(x, xn, p->re, NULL, 0) || apply_behavior(tmp, x, SPLIT_ISOLATED, 0, first)) return -1;
        } else if (pl_add(tmp, x, xn, NULL, 0, first))
            return -1;
        // map in place: rebuild the new pieces with their bytes as characters
        int end = tmp->n;
        for (int i = base; i < end; i++) {
            size_t off = tmp->off[i], len = tmp->len[i];
            size_t at = tmp->text.n;
            for (size_t k = 0; k < len; k++) {
                int l;
                const char *c = moe__tk_byte_char((unsigned char)tmp->text.p[off + k], &l);
                if (sb_add(&tmp->text, c, (size_t)l)) return -1;
            }
            tmp->off[i] = at, tmp->len[i] = tmp->text.n - at;
        }
        return 0;
    }
    }
    return 0;
}

/* th.a = the pieces of s after every pre-tokenizer */
static int pretokenize(const moe_tokenizer *t, const char *s, size_t n, int first) {
    pl_clear(&th.a);
    if (pl_add(&th.a, s, n, NULL, 0, first)) return -1;
    for (int k = 0; k < t->n_pre; k++) {
        pl_clear(&th.b);
        for (int i = 0; i < th.a.n; i++)
            if (pre_one(&t->pre[k], &th.b, th.a.text.p + th.a.off[i], th.a.len[i], th.a.first[i])) return -1;
        plist sw = th.a;
        th.a = th.b, th.b = sw;
    }
    return 0;
}

/* ---------------------------------------------------------------- added tokens */

/* The leftmost-longest added token (of the given normalization) in s from `from`: its index in
 * t->added, and its span after single_word, lstrip and rstrip in *a, *b; -1 if none. */
static int next_added(const moe_tokenizer *t, const char *s, size_t n, size_t from, size_t floor, int normalized,
                      size_t *a, size_t *b) {
    for (size_t i = from; i < n; i++) {
        int best = -1;
        unsigned char c0 = (unsigned char)s[i];
        for (int q = t->added_at[c0]; q < t->added_at[c0 + 1] && best < 0; q++) { // longest first
            const tk_added *x = &t->added[t->added_by_byte[q]];
            if (x->normalized == normalized && (size_t)x->len <= n - i && !memcmp(s + i, x->content, (size_t)x->len))
                best = t->added_by_byte[q];
        }
        if (best < 0) continue;
        const tk_added *x = &t->added[best];
        size_t start = i, stop = i + (size_t)x->len;
        uint32_t cp;
        if (x->single_word && ((start > 0 && (prev_char(s, n, start, &cp), is_alnum(cp))) ||
                               (stop < n && (char_at(s, n, stop, &cp), is_alnum(cp))))) {
            // not a word of its own: matching goes on after it, as tokenizers' find_iter
            i = stop - 1;
            continue;
        }
        if (x->lstrip) // take the white space before it, back to the previous match
            while (start > floor) {
                size_t j = prev_char(s, n, start, &cp);
                if (j < floor || !is_ws(cp)) break;
                start = j;
            }
        if (x->rstrip)
            while (stop < n) {
                int l = char_at(s, n, stop, &cp);
                if (!is_ws(cp)) break;
                stop += (size_t)l;
            }
        *a = start, *b = stop;
        return best;
    }
    return -1;
}

/* pieces of one segment (between added tokens) */
static int encode_plain(const moe_tokenizer *t, const char *s, size_t n, int first, out_ids *o) {
    if (t->meta_split) { // cut before each U+2581 that follows another character (tok.h)
        size_t a = 0;
        for (size_t i = 1; i + 3 <= n; i++)
            if (!memcmp(s + i, "\xe2\x96\x81", 3) && (i < 3 || memcmp(s + i - 3, "\xe2\x96\x81", 3))) {
                bpe_cached(t, s + a, i - a, o);
                a = i;
            }
        bpe_cached(t, s + a, n - a, o);
        return 0;
    }
    if (pretokenize(t, s, n, first)) return -1;
    for (int i = 0; i < th.a.n && !o->oom; i++) bpe_cached(t, th.a.text.p + th.a.off[i], th.a.len[i], o);
    return 0;
}

/* One segment between raw added tokens: normalized (into th.norm, which the pieces' buffers
 * never share), then split at the normalized added tokens. */
static int encode_segment(const moe_tokenizer *t, const char *s, size_t n, int first, out_ids *o) {
    if (normalize(t, s, n)) return -1;
    const char *x = th.norm.p;
    size_t nn = th.norm.n, at = 0, a, b;
    int k, r = 0;
    while (!r && t->any_normalized_added && (k = next_added(t, x, nn, at, at, 1, &a, &b)) >= 0) {
        if (a > at) r = encode_plain(t, x + at, a - at, first && at == 0, o);
        emit(o, t->added[k].id);
        at = b;
    }
    if (!r && at < nn) r = encode_plain(t, x + at, nn - at, first && at == 0, o);
    return r;
}

moe_status moe_tokenizer_encode(const moe_tokenizer *t, const char *text, size_t len, int add_special, int **ids,
                                size_t *n, size_t *cap) {
    out_ids o = {ids, n, cap, 0};
    char *clean = NULL;
    if (!t->byte_level) { // anything but a byte-level model reads invalid UTF-8 as U+FFFD
        size_t i = 0;
        while (i < len && moe__tk_utf8_len((const unsigned char *)text + i, len - i)) i += (size_t)moe__tk_utf8_len((const unsigned char *)text + i, len - i);
        if (i < len) {
            if (!(clean = malloc(len * 3 + 1))) return moe__err(MOE_STATUS_NOMEM, "out of memory");
            len = moe__tk_lossy(text, len, clean);
            text = clean;
        }
    }
    if (add_special)
        for (int i = 0; i < t->n_post_pre; i++) emit(&o, t->post_pre[i]);
    size_t at = 0, a, b;
    int k, r = 0;
    while (!r && (k = next_added(t, text, len, at, at, 0, &a, &b)) >= 0) {
        if (a > at) r = encode_segment(t, text + at, a - at, at == 0, &o);
        emit(&o, t->added[k].id);
        at = b;
    }
    if (!r && at < len) r = encode_segment(t, text + at, len - at, at == 0, &o);
    if (add_special)
        for (int i = 0; i < t->n_post_post; i++) emit(&o, t->post_post[i]);
    free(clean);
    if (r || o.oom) return moe__err(MOE_STATUS_NOMEM, "out of memory while encoding %zu bytes", len);
    return MOE_STATUS_OK;
}
