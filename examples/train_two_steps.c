/*
 * train_two_steps.c — the smallest program on the installed library: builds against
 * find_package(moe) or pkg-config, trains a tiny MoE for two steps on a text file and prints the
 * losses. Usage: train_two_steps TEXT_FILE RUN_DIR
 */
#include <moe.h>

#include <stdio.h>

static int fail(moe_status st) {
    fprintf(stderr, "train_two_steps: %s: %s\n", moe_status_str(st), moe_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: train_two_steps TEXT_FILE RUN_DIR\n");
        return 2;
    }
    printf("moe %s (header %s)\n", moe_version(), MOE_VERSION_STRING);
    moe_config c = moe_config_default();
    const char *sets[][2] = {{"n_layer", "1"}, {"n_embd", "32"}, {"n_head", "2"}, {"seq_len", "32"},
                             {"batch_size", "2"}, {"steps", "2"}, {"tensorboard", "false"}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        moe_status st = moe_config_set(&c, sets[i][0], sets[i][1]);
        if (st != MOE_STATUS_OK) return fail(st);
    }
    moe_dataset *data;
    const char *paths[] = {argv[1]};
    moe_status st = moe_dataset_load(paths, 1, c.vocab_size, &data);
    if (st != MOE_STATUS_OK) return fail(st);
    moe_trainer *t;
    if ((st = moe_trainer_create(&c, data, NULL, argv[2], MOE_RUN_OVERWRITE, &t)) != MOE_STATUS_OK) return fail(st);
    for (int i = 0; i < 2; i++) {
        moe_step_info info;
        if ((st = moe_trainer_step(t, &info)) != MOE_STATUS_OK) return fail(st);
        printf("step %lld loss %.4f\n", (long long)info.step, info.loss.ce);
    }
    moe_trainer_free(t);
    return 0;
}
