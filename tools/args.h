/* args.h — the values the command line takes, parsed apart from main so that fuzz/fuzz_cli.c
 * runs the same code: numeric flags (one table of their ranges), --set KEY=VALUE, the token ids
 * of `moe logits --tokens`. None of them exits: each returns 0, or -1
 * with a message in err that names the flag and the value. */
#ifndef MOE_ARGS_H
#define MOE_ARGS_H

#include "moe.h"

#include <stddef.h>

typedef struct {
    const char *flag; /* "--steps" */
    int is_int;       /* 1: an integer; 0: a real number */
    double lo, hi;    /* the accepted range, inclusive */
} moe_arg_spec;

extern const moe_arg_spec moe_arg_specs[];
extern const int moe_arg_n_specs;

/* The spec of a numeric flag, or NULL. */
const moe_arg_spec *moe_arg_find(const char *flag);
/* Parses v as the value of the numeric flag s. */
int moe_arg_number(const moe_arg_spec *s, const char *v, double *out, char *err, size_t n);
/* Applies "KEY=VALUE" (--set) to c; the message of a refused value is moe_config_set's. */
int moe_arg_set(moe_config *c, const char *kv, char *err, size_t n);
/* Parses whitespace-separated token ids in text (from `origin`, for messages) into tok (room
 * for max); *n_tok gets the count. Each id must lie in [0, vocab). */
int moe_arg_tokens(const char *text, const char *origin, int vocab, int max, int *tok, int *n_tok, char *err, size_t n);

#endif
