/*
 * main.c — the `moe` command line: the table of commands (tools/cmd_*.c), `moe --help` and the
 * dispatch to a command, whose options its flag table parses (tools/cli.c). Everything else is
 * the library (include/moe.h). Before anything else, the process makes sure OpenBLAS runs a
 * kernel for this CPU (tune_blas).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const cli_command *const commands[] = {MOE_COMMANDS(MOE_CMD_REF)};
enum { N_COMMANDS = (int)(sizeof commands / sizeof commands[0]) };

static void print_help(FILE *f) {
    fputs("moe — train sparse Mixture-of-Experts language models\n\nusage: moe <command> [options]\n\ncommands:\n", f);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-8s %s (moe %s --help)\n", commands[i]->name, commands[i]->summary, commands[i]->name);
}

/* OpenBLAS kernels older than AVX2: on a CPU with AVX2 (or AVX-512) these leave most of its speed
 * unused. Debian's OpenBLAS 0.3.21 falls back to "Prescott" on CPUs newer than it knows. */
static int generic_core(const char *core) {
    static const char *const old[] = {"Prescott", "Core2",  "Penryn",  "Dunnington", "Nehalem", "Atom",
                                      "Katmai",   "Barcelona", "Opteron", "Bobcat",     "Sandybridge", "Generic"};
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++)
        if (!strncmp(core, old[i], strlen(old[i]))) return 1;
    return 0;
}

/* OpenBLAS chose its kernel when it loaded, before main, from the CPU or OPENBLAS_CORETYPE. A
 * generic kernel on a CPU with AVX2 or AVX-512 is corrected by running this program again with
 * OPENBLAS_CORETYPE set (before MPI_Init, so it works under mpirun: each rank does it alike);
 * a user's own OPENBLAS_CORETYPE is kept, with a warning. MOE_TEST_BLAS_CORE plays the kernel
 * OpenBLAS would report (tests create the misdetection this way). */
static void tune_blas(char **argv) {
    const char *core = getenv("MOE_TEST_BLAS_CORE") && !getenv("MOE_BLAS_RETUNED") ? getenv("MOE_TEST_BLAS_CORE")
                                                                                   : moe_blas_core();
    const char *want = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : NULL;
    if (!want || !generic_core(core)) return;
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user) {
        fprintf(stderr, "moe: warning: OPENBLAS_CORETYPE=%s selects OpenBLAS's generic kernel (%s) on a CPU with %s; "
                        "unset it to let moe pick %s\n", user, core, want[0] == 'S' ? "AVX-512" : "AVX2", want);
        return;
    }
    if (getenv("MOE_BLAS_RETUNED")) return; // once: the kernel asked for did not take
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("MOE_BLAS_RETUNED", core, 1);
    execv("/proc/self/exe", argv);
    // exec failed: go on with the generic kernel
}

/* Parses the command's options from its defaults, runs it, frees what parsing allocated. */
static int run(const cli_command *cmd, int argc, char **argv) {
    void *opts = malloc(cmd->opts_size);
    if (!opts) die(1, "out of memory");
    memcpy(opts, cmd->defaults, cmd->opts_size);
    cli_parse(cmd, argc, argv, opts);
    int rc = cmd->run(opts);
    cli_free(cmd, opts);
    free(opts);
    return rc;
}

int main(int argc, char **argv) {
    tune_blas(argv);
    check(moe_dist_init(&argc, &argv));
    atexit(moe_dist_finalize);
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("moe %s\nBLAS: %s", moe_build_info(), moe_blas_info());
        if (getenv("MOE_BLAS_RETUNED"))
            printf(" (OpenBLAS had chosen %s for this CPU; moe set OPENBLAS_CORETYPE)", getenv("MOE_BLAS_RETUNED"));
        printf("\n");
        return 0;
    }
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        print_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    char names[256] = "";
    for (int i = 0; i < N_COMMANDS; i++) {
        if (!strcmp(argv[1], commands[i]->name)) return run(commands[i], argc - 2, argv + 2);
        if (strlen(names) + strlen(commands[i]->name) + 3 < sizeof names)
            strcat(strcat(names, i ? ", " : ""), commands[i]->name);
    }
    die(2, "unknown command '%s' (commands: %s)", argv[1], names);
}
