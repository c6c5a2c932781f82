/*
 * tok.h — the tokenizer's parts (src/tok/): what tokenizer.json says, loaded (load.c), and the
 * pipeline that encodes and decodes with it (encode.c, decode.c). Not installed.
 *
 *   text -> added tokens split out -> normalizers -> pre-tokenizers -> BPE per piece ->
 *   post-processor (TemplateProcessing) -> ids;  ids -> tokens -> decoders -> text
 */
#ifndef MOE_TOK_H
#define MOE_TOK_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include "moe.h"

#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

/* string -> id, open addressing; keys point into the tokenizer's strings */
typedef struct {
    int32_t *slot; /* id + 1, 0 = empty */
    uint32_t mask;
} tk_map;

enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_PREPEND, NORM_REPLACE };
typedef struct {
    int kind;
    char *a, *b;      /* PREPEND: a; REPLACE: pattern a (string) or re, content b */
    pcre2_code *re;
} tk_norm;

enum { PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE, PRE_DIGITS };
enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS };
enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };
typedef struct {
    int kind;
    pcre2_code *re;   /* SPLIT, and BYTELEVEL with use_regex (GPT-2's pattern) */
    char *lit;        /* SPLIT on a string */
    int behavior, invert;
    int add_prefix_space;
    char repl[8];     /* METASPACE: the replacement character, UTF-8 */
    int prepend, split;
    int individual;   /* DIGITS */
} tk_pre;

enum { DEC_BYTELEVEL, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };
typedef struct {
    int kind;
    char *a, *b;      /* REPLACE: pattern, content */
    char strip[8];    /* STRIP: the character, UTF-8 */
    int start, stop;
    char repl[8];     /* METASPACE */
    int prepend;
} tk_dec;

typedef struct {
    char *content;
    int len, id;
    int special, lstrip, rstrip, single_word, normalized;
} tk_added;

struct moe_tokenizer {
    uint64_t serial;          /* unique per load: the per-thread caches key on it */
    char **tok;               /* (n_ids) id -> token string, NULL for an unused id */
    int *tok_len;
    int n_ids;
    tk_map vocab;             /* the model's vocabulary */
    tk_map all;               /* vocabulary and added tokens */
    /* merges: (left, right) -> rank and merged id */
    uint64_t *mkey;
    int32_t *mrank, *mid;
    uint32_t mmask;
    int byte_fallback, fuse_unk, unk_id, ignore_merges;
    int byte_id[256];         /* <0xXX> tokens for byte fallback, -1 when absent */
    tk_norm *norm;
    int n_norm;
    tk_pre *pre;
    int n_pre;
    tk_dec *dec;
    int n_dec, has_decoder;
    tk_added *added;
    int n_added, any_normalized_added;
    int *added_by_byte;       /* indices into added, by first byte, longest first ... */
    int added_at[257];        /* ... byte b's from added_at[b] to added_at[b + 1] */
    int *post_pre, n_post_pre;     /* the template's ids before and after $A */
    int *post_post, n_post_post;
    int bos, eos;
    int byte_level;           /* a ByteLevel pre-tokenizer: bytes pass as they are */
    int meta_split;           /* no pre-tokenizer, and no token holds a character followed by
                               * U+2581: a text cut before each U+2581 that follows another
                               * character encodes to the same ids piece by piece (SentencePiece
                               * vocabularies: Llama, Mistral), which the piece cache then serves */
    int *token_bytes;         /* (n_ids) text bytes a token stands for */
    unsigned char *special;   /* (n_ids) an added token marked special */
    char hash[17];
};

/* utf-8 helpers (encode.c) */
/* Length of the valid UTF-8 character at s (n bytes left), or 0 when it is invalid. */
int moe__tk_utf8_len(const unsigned char *s, size_t n);
/* The code point of the valid character of l bytes at s. */
uint32_t moe__tk_cp(const char *s, int l);
/* Appends s with each maximal invalid UTF-8 subsequence replaced by U+FFFD (as Rust's
 * from_utf8_lossy and Python's decode('utf-8', 'replace')). Returns the new length. */
size_t moe__tk_lossy(const char *s, size_t n, char *out);
/* The GPT-2 byte <-> unicode table: the UTF-8 of byte b's character; the byte of code point cp,
 * or -1. */
const char *moe__tk_byte_char(int b, int *len);
int moe__tk_char_byte(uint32_t cp);

/* map lookups (load.c) */
int moe__tk_get(const moe_tokenizer *t, const tk_map *m, const char *s, int len);
/* The merge of (a, b): its rank (-1 if none) and merged id in *id. */
int moe__tk_merge(const moe_tokenizer *t, int a, int b, int *id);

#endif
