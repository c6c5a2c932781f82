/*
 * test_api.c — the library's contract with its callers: error messages (a caller wrapping the
 * error it got in its own context, three deep, keeps every part once; a message too long for
 * the buffer keeps its start and its cause at the end), statuses and their names, statuses
 * instead of sentinels (moe_model_routing), the size guard counting the routing's slots per
 * token, paths too long refused with a status that says so, never a crash or another file, and a
 * checkpoint loaded for inference (mapped or read) giving its training model's bits.
 */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "core/core.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_error_chain(void) {
    // each level passes moe_last_error() back into moe__err: the buffer is source and target
    moe__err(MOE_STATUS_CONFIG, "config: 'n_embd' = %d is out of range [2, 65536]", 40960000);
    moe__err(MOE_STATUS_CONFIG, "'%s' gives a config moe cannot use: %s", "dir/config.json", moe_last_error());
    moe_status st = moe__err(MOE_STATUS_CONFIG, "import: %s", moe_last_error());
    CHECK(st == MOE_STATUS_CONFIG, "the status comes back");
    const char *want = "import: 'dir/config.json' gives a config moe cannot use: config: 'n_embd' = 40960000 is out of "
                       "range [2, 65536]";
    CHECK(!strcmp(moe_last_error(), want), "three chained errors: got \"%s\"", moe_last_error());
    // a message longer than the buffer is cut, never overrun, and stays a string
    char longer[3000];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    moe__err(MOE_STATUS_IO, "%s", longer);
    moe__err(MOE_STATUS_IO, "again: %s", moe_last_error());
    size_t n = strlen(moe_last_error());
    CHECK(n > 1000 && n < 1024 && !strncmp(moe_last_error(), "again: xxx", 10), "a long chain is cut at the buffer: %zu", n);
    // ... in its middle: the cause after a long path stays
    moe__err(MOE_STATUS_IO, "cannot open '%s': %s", longer, "File name too long");
    n = strlen(moe_last_error());
    const char *tail = "xxx': File name too long";
    CHECK(n < 1024 && !strncmp(moe_last_error(), "cannot open 'xxx", 16) && strstr(moe_last_error(), "x ... x") &&
              !strcmp(moe_last_error() + n - strlen(tail), tail),
          "a long message keeps its start and its end: \"%.40s...%s\"", moe_last_error(),
          moe_last_error() + (n > 40 ? n - 40 : 0));
}

/* A model of two MoE layers (four experts, top-2) small enough for any test. */
static moe_model *small_model(int recompute) {
    moe_config c = moe_config_default();
    const char *sets[][2] = {{"vocab_size", "32"}, {"seq_len", "8"}, {"n_embd", "16"}, {"n_layer", "2"},
                             {"n_head", "2"}, {"ffn_hidden", "16"}, {"n_experts", "4"}, {"top_k", "2"},
                             {"expert_hidden", "8"}, {"recompute", recompute ? "1" : "0"}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) CHECK_OK(moe_config_set(&c, sets[i][0], sets[i][1]));
    moe_model *m;
    CHECK_OK(moe_model_create(&c, 2, &m));
    moe_model_init(m, 7);
    return m;
}

/* moe_model_routing: a status, never -1 in place of a slot count. */
static void test_routing_status(void) {
    moe_model *m = small_model(0);
    int tok[2 * 8], routes[2 * 8 * 2], slots = -1;
    for (int i = 0; i < 16; i++) tok[i] = (i * 7) % 32;
    CHECK_OK(moe_model_forward(m, tok, NULL, 2, 8, 0, NULL));
    CHECK_OK(moe_model_routing(m, 1, NULL, &slots)); // the size first
    CHECK(slots == 2, "top-2: %d slots per token", slots);
    CHECK_OK(moe_model_routing(m, 1, routes, &slots));
    int bad = 0;
    for (int i = 0; i < 2 * 8 * 2; i++) bad += routes[i] < -1 || routes[i] >= 4;
    CHECK(bad == 0, "routing: %d entries are neither an expert nor -1", bad);
    int idx[] = {-1, 2, 1000};
    for (size_t k = 0; k < sizeof idx / sizeof idx[0]; k++) {
        slots = -1;
        moe_status st = moe_model_routing(m, idx[k], routes, &slots);
        char want[64];
        snprintf(want, sizeof want, "MoE layer %d does not exist", idx[k]);
        CHECK(st == MOE_STATUS_ARG && slots == 0 && strstr(moe_last_error(), want),
              "routing of MoE layer %d: %s (%s), slots %d", idx[k], moe_status_str(st), moe_last_error(), slots);
    }
    moe_model_free(m);
    m = small_model(1);
    CHECK_OK(moe_model_forward(m, tok, NULL, 2, 8, 0, NULL));
    moe_status st = moe_model_routing(m, 0, routes, &slots);
    CHECK(st == MOE_STATUS_CONFIG && slots == 0 && strstr(moe_last_error(), "recompute"),
          "routing of a recompute model: %s (%s)", moe_status_str(st), moe_last_error());
    moe_model_free(m);
}

/* The size guard of moe_model_create counts the slots per token of the routing: E for expert
 * choice (and the soft mixture), not top_k. */
static void test_rows_guard(void) {
    moe_config c = moe_config_default();
    const char *sets[][2] = {{"vocab_size", "32"}, {"seq_len", "64"}, {"n_embd", "16"}, {"n_layer", "1"},
                             {"n_head", "2"}, {"ffn_hidden", "16"}, {"n_experts", "4096"}, {"top_k", "2"},
                             {"expert_hidden", "8"}, {"routing", "expert_choice"}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) CHECK_OK(moe_config_set(&c, sets[i][0], sets[i][1]));
    moe_model *m = NULL;
    moe_status st = moe_model_create(&c, 4097, &m); // 4097 * 64 tokens * 4096 slots > 2^30 rows
    CHECK(st == MOE_STATUS_CONFIG && m == NULL && strstr(moe_last_error(), "4096 slots per token"),
          "expert choice over 2^30 rows: %s (%s)", moe_status_str(st), moe_last_error());
    moe_model_free(m);
}

/* A status whose message says "too long", and nothing written. */
#define CHECK_TOO_LONG(expr, what)                                                                           \
    do {                                                                                                   \
        moe_status s_ = (expr);                                                                            \
        CHECK((s_ == MOE_STATUS_ARG || s_ == MOE_STATUS_IO) && strstr(moe_last_error(), "too long"),        \
              "%s: %s (%.80s...%s)", what, moe_status_str(s_), moe_last_error(),                            \
              moe_last_error() + (strlen(moe_last_error()) > 60 ? strlen(moe_last_error()) - 60 : 0));      \
    } while (0)

/* Paths longer than the library's buffers or the system's limit: refused with a status that
 * says "too long", never cut into the name of another file. */
static void test_long_paths(void) {
    char buf[16];
    moe_status st = moe__pathf(buf, sizeof buf, "%s/%s", "run", "model.safetensors");
    CHECK(st == MOE_STATUS_ARG && !strncmp(moe_last_error(), "path too long: 'run/model.safe", 30) && buf[0] == 0,
          "moe__pathf of 21 bytes into 16: %s (%s), buf '%s'", moe_status_str(st), moe_last_error(), buf);
    CHECK_OK(moe__pathf(buf, sizeof buf, "%s/%s", "run", "state.bin")); // 13 bytes fit
    CHECK(!strcmp(buf, "run/state.bin"), "moe__pathf that fits: '%s'", buf);
    // a directory name of 5000 characters (a component may have 255, a path 4096)
    char dir[5001], path[5100];
    memset(dir, 'd', sizeof dir - 1);
    dir[sizeof dir - 1] = '\0';
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    moe_model *m = small_model(0), *loaded = NULL;
    CHECK_TOO_LONG(moe_model_save(m, path, 1), "moe_model_save");
    CHECK_TOO_LONG(moe_model_load(dir, 1, &loaded), "moe_model_load");
    CHECK(loaded == NULL, "moe_model_load of a long path gives no model");
    moe_config c;
    CHECK_TOO_LONG(moe_checkpoint_config(dir, &c, NULL), "moe_checkpoint_config");
    CHECK_TOO_LONG(moe_run_config(dir, &c), "moe_run_config");
    // the export's own buffers: a path that the system would take is still refused, by name
    char near[4190] = "/tmp/moe_test_api/";
    size_t at = strlen(near);
    memset(near + at, 'e', sizeof near - 1 - at);
    for (size_t i = at + 200; i < sizeof near - 1; i += 200) near[i] = '/';
    near[sizeof near - 1] = '\0';
    st = moe_export_hf(m, near, "auto", 0, 0, NULL);
    CHECK(st == MOE_STATUS_ARG && !strncmp(moe_last_error(), "path too long: '/tmp/moe_test_api/eee", 37),
          "export to a directory of %zu bytes: %s (%.60s)", strlen(near), moe_status_str(st), moe_last_error());
    moe_model_free(m);
}

/* A checkpoint loaded for inference (no gradients, one set of activations for all layers, tiled
 * attention, weights mapped or read) gives the bits of the training model it was saved from:
 * logits and every MoE layer's routing, for every routing method; backward is refused. */
static void test_inference_load(void) {
    const char *routing[] = {"topk", "noisy_topk", "expert_choice", "soft"};
    char path[] = "/tmp/moe_test_api_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    for (size_t r = 0; r < sizeof routing / sizeof routing[0]; r++) {
        moe_config c = moe_config_default();
        const char *sets[][2] = {{"vocab_size", "40"}, {"seq_len", "70"}, {"n_embd", "16"}, {"n_layer", "3"},
                                 {"n_head", "2"},      {"ffn_hidden", "16"}, {"n_experts", "4"}, {"top_k", "2"},
                                 {"expert_hidden", "8"}, {"n_shared", "1"}, {"moe_layers", "0,2"},
                                 {"routing", routing[r]}, {"n_kv_head", r % 2 ? "1" : "2"}};
        for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) CHECK_OK(moe_config_set(&c, sets[i][0], sets[i][1]));
        moe_model *m;
        CHECK_OK(moe_model_create(&c, 3, &m));
        moe_model_init(m, 5 + r);
        CHECK_OK(moe_model_save(m, path, 0));
        enum { B = 3, T = 70 };
        int tok[B * T], slots_a, slots_b;
        for (int i = 0; i < B * T; i++) tok[i] = (i * 13 + i / 7) % 40;
        CHECK_OK(moe_model_forward(m, tok, NULL, B, T, 0, NULL));
        int64_t n = (int64_t)B * T * 40;
        float *want = malloc((size_t)n * sizeof(float));
        int *ra = malloc(B * T * 4 * sizeof(int) * 2), *rb = malloc(B * T * 4 * sizeof(int) * 2);
        memcpy(want, moe_model_logits(m), (size_t)n * sizeof(float));
        for (int mapped = 0; mapped < 2; mapped++) {
            setenv("MOE_NO_MMAP", mapped ? "0" : "1", 1);
            moe_model *l;
            CHECK_OK(moe_model_load(path, B, &l));
            CHECK_OK(moe_model_forward(l, tok, NULL, B, T, 0, NULL));
            CHECK(!memcmp(moe_model_logits(l), want, (size_t)n * sizeof(float)), "%s, %s: the loaded model's logits",
                  routing[r], mapped ? "mapped" : "read");
            for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
                CHECK_OK(moe_model_routing(m, i, ra, &slots_a));
                CHECK_OK(moe_model_routing(l, i, rb, &slots_b));
                CHECK(slots_a == slots_b && !memcmp(ra, rb, (size_t)B * T * slots_a * sizeof(int)),
                      "%s: MoE layer %d's routing", routing[r], i);
            }
            moe_status st = moe_model_backward(l, 1.0f);
            CHECK(st == MOE_STATUS_ARG && moe_model_grads(l) == NULL, "backward of a loaded model: %s",
                  moe_status_str(st));
            moe_model_free(l);
        }
        unsetenv("MOE_NO_MMAP");
        free(want);
        free(ra);
        free(rb);
        moe_model_free(m);
    }
    unlink(path);
}

static void test_status_names(void) {
    for (int s = 0; s < MOE_STATUS_COUNT; s++)
        CHECK(moe_status_str((moe_status)s)[0] && strcmp(moe_status_str((moe_status)s), "unknown status"),
              "status %d has a name", s);
    CHECK(!strcmp(moe_status_str(MOE_STATUS_COUNT), "unknown status"), "out of range");
    CHECK(!strcmp(moe_status_str(MOE_STATUS_DEVICE), "device error"), "the device status");
}

/* What the CUDA backend lacks is refused by name before any model exists, on any machine; the
 * CPU takes it all. */
static void test_device_supports(void) {
    const char *opts[][5] = {{"n_kv_head", "2", NULL, NULL, "grouped-query attention"},
                             {"qkv_bias", "true", NULL, NULL, "q/k/v biases (qkv_bias)"},
                             {"qk_norm", "true", NULL, NULL, "QK-norm (qk_norm)"},
                             {"n_shared", "1", "shared_gate", "true", "shared-expert gate (shared_gate)"},
                             {"n_shared", "1", "shared_hidden", "100", "width of its own (shared_hidden)"},
                             {"n_group", "2", "topk_group", "1", "group-limited routing (n_group)"}};
    moe_device cpu = moe_device_default(), gpu = cpu;
    gpu.kind = MOE_DEVICE_CUDA;
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        moe_config c = moe_config_default();
        CHECK_OK(moe_config_set(&c, opts[i][0], opts[i][1]));
        if (opts[i][2]) CHECK_OK(moe_config_set(&c, opts[i][2], opts[i][3]));
        CHECK_OK(moe_device_supports(&cpu, &c));
        moe_status st = moe_device_supports(&gpu, &c);
        CHECK(st == MOE_STATUS_ARG && strstr(moe_last_error(), opts[i][4]) && strstr(moe_last_error(), "--device cuda"),
              "CUDA refuses %s=%s: %s (%s)", opts[i][0], opts[i][1], moe_status_str(st), moe_last_error());
    }
    moe_config c = moe_config_default(); // the shared width S F written out is the default, taken
    CHECK_OK(moe_config_set(&c, "n_shared", "2"));
    CHECK_OK(moe_config_set(&c, "shared_hidden", "512"));
    CHECK_OK(moe_device_supports(&gpu, &c));
}

/* Group-limited routing's keys: what cannot work is named; one group of one is no grouping. */
static void test_group_config(void) {
    const char *bad[][7] = {
        {"n_group", "3", "topk_group", "1", NULL, NULL, "n_group = 3 does not divide layer 0's 8 experts"},
        {"n_group", "2", NULL, NULL, NULL, NULL, "topk_group = 0 must be in [1, n_group = 2]"},
        {"n_group", "4", "topk_group", "1", "top_k", "3", "top_k = 3 exceeds the 2 experts of topk_group = 1 groups of 2"},
        {"routing", "soft", "n_group", "2", "topk_group", "1", "n_group (group-limited routing) needs routing = topk"},
        {"topk_group", "2", NULL, NULL, NULL, NULL, "topk_group = 2 needs n_group >= 2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_config c = moe_config_default();
        for (int k = 0; k < 6 && bad[i][k]; k += 2) {
            char kv[64];
            snprintf(kv, sizeof kv, "%s", bad[i][k + 1]);
            if (!strcmp(bad[i][k], "routing")) CHECK_OK(moe_config_set(&c, bad[i][k], kv));
            else moe_config_set(&c, bad[i][k], kv); // the whole config is checked below
        }
        moe_status st = moe_config_validate(&c);
        CHECK(st == MOE_STATUS_CONFIG && strstr(moe_last_error(), bad[i][6]), "group config %zu: %s (%s)", i,
              moe_status_str(st), moe_last_error());
    }
    moe_config c = moe_config_default();
    CHECK_OK(moe_config_set(&c, "n_group", "1"));
    CHECK_OK(moe_config_set(&c, "topk_group", "1"));
    CHECK_OK(moe_config_validate(&c));
}

int main(void) {
    test_error_chain();
    test_status_names();
    test_routing_status();
    test_rows_guard();
    test_long_paths();
    test_inference_load();
    test_device_supports();
    test_group_config();
    CHECK_SUMMARY("test_api");
}
