/*
 * cli.h — what the commands of `moe` share (tools/cli.c): errors that end the process, the flag
 * table each command declares (one row per flag drives its parsing, its range check and its
 * line in --help), the values the command line takes, and the list of commands.
 *
 * Errors go to stderr as "moe: <message>" with exit 1 (bad data, files, configs) or 2 (bad
 * command-line usage). Only tools/ exits; the library returns statuses.
 */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include "moe.h"

#include <stddef.h>
#include <stdio.h>

/* Prints "moe: <message>" (naming the rank under MPI) and ends every rank with `code`. */
_Noreturn void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Dies with exit 1 and the library's message unless st is MOE_STATUS_OK. */
void check(moe_status st);

/* ---------------------------------------------------------------- flags */

typedef enum {
    CLI_NONE,   /* a switch: int, set to 1 */
    CLI_STRING, /* const char *: the argument itself (argv outlives the command) */
    CLI_INT,    /* long, within [lo, hi] */
    CLI_REAL,   /* double, within [lo, hi] */
    CLI_LIST,   /* cli_list: repeatable, each value appended in command-line order */
} cli_kind;

/* The values of a repeatable flag; cli_parse allocates them, cli_free frees them. */
typedef struct {
    int n;
    char **v;
} cli_list;

/* One row of a command's flag table. */
typedef struct {
    const char *name; /* "--steps" */
    cli_kind kind;
    const char *arg;     /* the value's name in --help ("N", "FILES"); NULL for CLI_NONE */
    size_t dest;         /* offsetof the destination in the command's options struct */
    const char *help;    /* one line per '\n'; later lines are indented under the first */
    double lo, hi;       /* CLI_INT, CLI_REAL: the accepted range, inclusive */
    int required;        /* CLI_STRING only: the command refuses to run while it is NULL */
    const char *set_key; /* CLI_INT only: short for --set KEY=VALUE; dest is the --set cli_list */
    int many;            /* CLI_LIST only: the words after the value are values too, up to the
                            next that starts with '-' (--data a.txt b.txt) */
} cli_flag;

/* A command: its flag table, --help text, options struct and what it runs. */
typedef struct {
    const char *name;    /* "train" */
    const char *summary; /* its line in `moe --help` */
    const char *usage;   /* after "usage: moe " */
    const char *about;   /* paragraphs between the usage line and the options */
    const cli_flag *flags;
    int n_flags;
    void (*help_tail)(FILE *f); /* more help after the options; may be NULL */
    size_t opts_size;           /* the options struct: its size, and its values before parsing */
    const void *defaults;
    int (*run)(void *opts); /* the parsed options; returns the exit status */
} cli_command;

/* flags, n_flags of a cli_command from a static array. */
#define CLI_FLAGS(table) (table), (int)(sizeof(table) / sizeof((table)[0]))

/* Parses argv (the words after the command's name) into opts, which holds the defaults. Prints
 * --help (-h) and exits 0; exits 2 on an unknown flag, a missing or refused value, or a
 * required flag left out. */
void cli_parse(const cli_command *cmd, int argc, char **argv, void *opts);
/* The command's --help: usage, about, one line per flag, help_tail. */
void cli_help(const cli_command *cmd, FILE *f);
/* Frees what cli_parse allocated in opts (the values of CLI_LIST flags). */
void cli_free(const cli_command *cmd, void *opts);

/* ---------------------------------------------------------------- values
 * Parsed apart from cli_parse so that fuzz/fuzz_cli.c runs the same code. None of them exits:
 * each returns 0, or -1 with a message in err that names the flag and the value. */

/* Parses v as the value of the numeric (CLI_INT or CLI_REAL) flag f, within its range. */
int moe_arg_number(const cli_flag *f, const char *v, double *out, char *err, size_t n);
/* Applies "KEY=VALUE" (--set) to c; the message of a refused value is moe_config_set's. */
int moe_arg_set(moe_config *c, const char *kv, char *err, size_t n);
/* Parses whitespace-separated token ids in text (from `origin`, for messages) into tok (room
 * for max); *n_tok gets the count. Each id must lie in [0, vocab). */
int moe_arg_tokens(const char *text, const char *origin, int vocab, int max, int *tok, int *n_tok, char *err, size_t n);

/* ---------------------------------------------------------------- helpers that exit */

/* Applies the JSON config file `config` (may be NULL), then each --set KEY=VALUE, to c. */
void apply_keys(moe_config *c, const char *config, const cli_list *sets);
/* Splits a comma-separated list in place into at most max pieces; returns how many. */
int split_list(char *s, char **out, int max);
/* strdup(s), and prefix followed by suffix: to free; exit 1 when out of memory. */
char *str_dup(const char *s);
char *concat(const char *prefix, const char *suffix);
/* "dir/" followed by fmt formatted like printf; to free. */
char *path_in(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The dataset's notices (binary data given as text, ...) as warnings on stderr. */
void print_notices(const moe_dataset *d);
/* s as a JSON string, quoted and escaped. */
void json_string(FILE *f, const char *s);
/* mkdir -p dir; and of the directory of a file path. 0, or -1 with errno. */
int make_dirs(const char *dir);
int make_parent(const char *path);
/* The whole text file (or pipe) at path, to free; exits 1 naming it as `what` when it cannot
 * be read or holds a NUL byte. */
char *read_text(const char *path, const char *what);
/* The whole file at path as bytes (NUL-terminated, *len without the NUL), to free; exits 1 naming
 * it as `what` when it cannot be read. */
char *read_bytes(const char *path, const char *what, size_t *len);
/* 1 when path is a directory. */
int is_dir(const char *path);
/* Monotonic seconds. */
double now_seconds(void);
/* 1 when something (a file, a directory) exists at path. */
int exists(const char *path);
/* A size: bytes, or a number with KB, MB, GB, TB (powers of 1000, as transformers counts) or
 * KiB, MiB, GiB, TiB; -1 when it is none. */
int64_t parse_size(const char *s);

/* A file written atomically: to PATH.tmp, then flushed, fsync'ed and renamed over PATH, and the
 * directory fsync'ed, so that a crash leaves the old file or the new one, never a torn one. Until
 * it is committed, a PATH.tmp is removed when the process exits (die included). */
typedef struct {
    FILE *f;
    char *path, *tmp;
} atomic_file;

/* Creates path.tmp (and the directories above it); exits 1 when it cannot. */
atomic_file atomic_open(const char *path);
/* Closes a.f and syncs path.tmp, which stays pending; exits 1 on a write error. */
void atomic_close(atomic_file *a);
/* Renames a closed path.tmp over path and syncs the directory; exits 1 when it cannot. */
void atomic_rename(atomic_file *a);
/* atomic_close, then atomic_rename. */
void atomic_commit(atomic_file *a);
/* Copies the file src to dst atomically; exits 1 naming the one at fault. */
void copy_file(const char *src, const char *dst);

/* --device and --dtype: every command that runs a model takes them (not config keys). */
#define CLI_DEVICE_FLAGS(opts)                                                                          \
    {"--device", CLI_STRING, "DEV", offsetof(opts, device),                                             \
     .help = "cpu (default), cuda or cuda:N; not a config key: any device loads any checkpoint"},       \
    {"--dtype", CLI_STRING, "T", offsetof(opts, dtype),                                                 \
     .help = "fp32 or bf16. CUDA: the products' precision (bf16 the default). CPU:\n"               \
             "bf16 keeps an inference model's weights in bf16 (half the memory; fp32\n"                \
             "arithmetic); training computes in fp32"},                                                \
    {"--max-memory", CLI_STRING, "SIZE", offsetof(opts, max_memory),                                    \
     .help = "memory a model may take (e.g. 16GB); default: MemAvailable, or the\n"                    \
             "cgroup's limit when lower. A model that needs more is refused up front"}
/* Selects --device/--dtype for the models this command creates, after checking that the device
 * takes config c: exits 2 on a bad value, 1 on an option the device refuses or a device that
 * cannot be used. */
void use_device(const char *device, const char *dtype, const moe_config *c);
/* --max-memory: the limit models are checked against (moe_memory_limit_set); NULL: none given. */
void use_max_memory(const char *size);
/* use_device for the model of a checkpoint (its config read first); nothing when both are NULL. */
void use_device_for(const char *device, const char *dtype, const char *ckpt);

/* ---------------------------------------------------------------- model sources (cmd_hf.c) */

/* A model to start from (moe import, moe train --init-from): where, which kind, its config. */
typedef struct {
    const char *path;
    int hf; /* a Hugging Face directory (it has config.json); else a moe checkpoint */
    moe_config cfg;
} model_source;

/* Reads the source's config once; *c = its model keys with default training keys. */
model_source source_open(const char *path, moe_config *c);
/* Loads the source model; its activations are planned for at most seq_len tokens. */
moe_model *source_load(const model_source *s, int seq_len);
/* "moe: initialised from SRC: ..." on stdout. */
void print_init_report(const char *src, const moe_init_report *r);

/* ---------------------------------------------------------------- tokenizers */

/* The tokenizer.json of --tokenizer PATH (the file itself, or PATH/tokenizer.json), and the
 * tokenizer_config.json beside it (NULL when there is none); both to free. */
char *tokenizer_json(const char *path);
char *tokenizer_config_beside(const char *json);
/* The directory of a checkpoint (a run directory, or the one holding a .safetensors file); to
 * free. */
char *ckpt_dir(const char *ckpt);
/* The tokenizer of a checkpoint (ckpt_dir's tokenizer.json; for a kept checkpoint
 * RUN/checkpoints/step-N, RUN's); NULL when it has none; exits 1 when it has one the library
 * cannot load. */
moe_tokenizer *ckpt_tokenizer(const char *ckpt);

/* The sidecar that `moe tokenize` writes beside its shards: PREFIX.json for PREFIX_NNNNNN.bin. */
typedef struct {
    char *path;             /* PREFIX.json */
    char *tokenizer;        /* PREFIX.tokenizer.json; NULL when missing */
    char *tokenizer_config; /* PREFIX.tokenizer_config.json; NULL when missing */
    char hash[17];          /* tokenizer_hash */
    int vocab_size;
    int wide;               /* dtype uint32 */
} shard_sidecar;

/* Reads the sidecar of the data file path into *s when path is NAME_NNNNNN.bin and NAME.json
 * exists (returns 1), else returns 0; exits 1 naming the sidecar when it is malformed. */
int sidecar_read(const char *path, shard_sidecar *s);
void sidecar_free(shard_sidecar *s);
/* Copies what of a model's companion files (tokenizer.json, tokenizer_config.json,
 * generation_config.json) the directory from holds into the directory to, atomically; returns a
 * comma-separated list of what was copied ("" for none), static. */
const char *copy_companions(const char *from, const char *to);

/* ---------------------------------------------------------------- the commands */

/* Every command, in the order `moe --help` lists them: each is a cli_command moe_cmd_NAME in
 * tools/cmd_*.c. main.c's table and fuzz/fuzz_cli.c both expand this one list. */
#define MOE_COMMANDS(X)       X(train) X(sample) X(eval) X(export) X(import) X(tokenize) X(logits) X(route) X(plot)
#define MOE_CMD_DECLARE(name) extern const cli_command moe_cmd_##name;
MOE_COMMANDS(MOE_CMD_DECLARE)
#undef MOE_CMD_DECLARE
#define MOE_CMD_REF(name) &moe_cmd_##name,

#endif
