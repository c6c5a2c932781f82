/*
 * main.c — the `moe` command line: the table of commands (tools/cmd_*.c), `moe --help` and the
 * dispatch to a command, whose options its flag table parses (tools/cli.c). Everything else is
 * the library (include/moe.h).
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const cli_command *const commands[] = {MOE_COMMANDS(MOE_CMD_REF)};
enum { N_COMMANDS = (int)(sizeof commands / sizeof commands[0]) };

static void print_help(FILE *f) {
    fputs("moe — train sparse Mixture-of-Experts language models\n\nusage: moe <command> [options]\n\ncommands:\n", f);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %-8s %s (moe %s --help)\n", commands[i]->name, commands[i]->summary, commands[i]->name);
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
    check(moe_dist_init(&argc, &argv));
    atexit(moe_dist_finalize);
    if (argc >= 2 && !strcmp(argv[1], "--version")) {
        printf("moe %s\n", moe_build_info());
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
