/* fuzz_cli.c — the command line's values, through the code `moe` runs (tools/cli.c): every
 * numeric flag of every command's flag table with its range, --set KEY=VALUE into a config, and
 * the token ids `moe logits` reads. The input is lines "FLAG VALUE" (fuzz/cli.dict names the flags
 * and keys); a refused value must get a message naming it, an accepted one must be in range and
 * read back the same, and a config the sets leave valid must survive a JSON round trip unchanged. */
#include "cli.h"
#include "fuzz_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cli_command *const commands[] = {MOE_COMMANDS(MOE_CMD_REF)};

/* v as the value of the numeric flag s: refused with a message naming the flag, or accepted in
 * range and read back the same. */
static void number(const cli_flag *s, const char *v) {
    char err[1200] = "", txt[64], err2[256];
    double x, y;
    if (moe_arg_number(s, v, &x, err, sizeof err) != 0) {
        if (!strstr(err, s->name)) abort(); // the message names the flag
        return;
    }
    int is_int = s->kind == CLI_INT;
    if (!(x >= s->lo && x <= s->hi) || (is_int && x != floor(x))) abort();
    snprintf(txt, sizeof txt, is_int ? "%.0f" : "%.17g", x);
    if (moe_arg_number(s, txt, &y, err2, sizeof err2) != 0 || y != x) abort(); // reads back the same
}

/* Whether flag names a numeric flag of some command; each such flag (a name may have a range
 * per command) checks v. */
static int numeric_flag(const char *flag, const char *v) {
    int found = 0;
    for (size_t c = 0; c < sizeof commands / sizeof commands[0]; c++)
        for (int i = 0; i < commands[c]->n_flags; i++) {
            const cli_flag *s = &commands[c]->flags[i];
            if ((s->kind == CLI_INT || s->kind == CLI_REAL) && !strcmp(s->name, flag)) {
                number(s, v);
                found = 1;
            }
        }
    return found;
}

static void one(moe_config *c, const char *flag, const char *v) {
    if (numeric_flag(flag, v)) return;
    char err[1200] = "";
    if (!strcmp(flag, "--set")) {
        if (moe_arg_set(c, v, err, sizeof err) != 0) {
            const char *eq = strchr(v, '=');
            if (!err[0]) abort();
            if (eq && eq - v < 100 && eq > v) { // the message names the key (or the value)
                char key[100];
                memcpy(key, v, (size_t)(eq - v));
                key[eq - v] = 0;
                if (!strstr(err, key) && !strstr(err, eq + 1)) abort();
            }
        }
    } else if (!strcmp(flag, "--logits-tokens")) {
        int vocab = c->vocab_size > 0 && c->vocab_size <= 1 << 20 ? c->vocab_size : 256;
        int max = c->seq_len > 0 && c->seq_len <= 4096 ? c->seq_len : 64, T = -1;
        int *tok = malloc((size_t)max * sizeof(int));
        if (!tok) return;
        if (moe_arg_tokens(v, "fuzz", vocab, max, tok, &T, err, sizeof err) == 0) {
            if (T < 1 || T > max) abort();
            for (int i = 0; i < T; i++)
                if (tok[i] < 0 || tok[i] >= vocab) abort();
        } else if (!err[0]) abort();
        free(tok);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *txt = fuzz_text(data, size);
    if (!txt) return 0;
    moe_config c = moe_config_default();
    for (char *line = txt, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        *sp = 0;
        one(&c, line, sp + 1);
    }
    if (moe_config_validate(&c) == MOE_STATUS_OK) fuzz_config_round_trip(&c);
    free(txt);
    return 0;
}
