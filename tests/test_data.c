/*
 * test_data.c — the data reader (src/io/data.c) against tokens the test wrote itself: a text
 * file, a uint16 shard and a uint32 shard read by window across file boundaries, a split's two
 * parts, directories (shards only, else every file) and glob patterns, more files than are kept
 * open, and the errors: a token outside the vocabulary named by file, byte offset and index
 * (uint32 tokens above 2^31 too), a range outside the dataset, a file cut short after the load.
 * Then training: a run reading the files gives, step for step, the same bits as a run on the
 * same tokens held in memory (the loader before 0.2, which concatenated every file in memory),
 * with and without a validation split.
 */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "core/core.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static void put32(FILE *f, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    fwrite(b, 1, 4, f);
}

/* An llm.c shard of n tokens, 2 or 4 bytes each. */
static void write_shard(const char *path, const uint32_t *tok, int n, int width) {
    FILE *f = fopen(path, "wb");
    put32(f, width == 2 ? 20240520 : 20240801);
    put32(f, width == 2 ? 1 : 7);
    put32(f, (uint32_t)n);
    for (int i = 3; i < 256; i++) put32(f, 0);
    for (int i = 0; i < n; i++) {
        if (width == 2) {
            uint8_t b[2] = {(uint8_t)tok[i], (uint8_t)(tok[i] >> 8)};
            fwrite(b, 1, 2, f);
        } else {
            put32(f, tok[i]);
        }
    }
    fclose(f);
}

static void write_text(const char *path, const char *text, size_t n) {
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, n, f);
    fclose(f);
}

static char *in_dir(const char *name) {
    static char buf[8][256];
    static int k;
    char *p = buf[k++ % 8];
    snprintf(p, 256, "%s/%s", dir, name);
    return p;
}

static int open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d) return -1;
    while (readdir(d)) n++;
    closedir(d);
    return n;
}

/* ---------------------------------------------------------------- reading */

#define NA 1000 /* text bytes */
#define NB 3000 /* uint16 tokens */
#define NC 2000 /* uint32 tokens */
#define VOCAB 300
static int ref[NA + NB + NC];

static void make_files(void) {
    uint64_t s = 7;
    char text[NA];
    uint32_t b[NB], c[NC];
    for (int i = 0; i < NA; i++) text[i] = (char)(32 + (i * 7 + i / 13) % 95), ref[i] = (uint8_t)text[i];
    for (int i = 0; i < NB; i++) s = s * 6364136223846793005ULL + 1, b[i] = (uint32_t)(s >> 33) % VOCAB, ref[NA + i] = (int)b[i];
    for (int i = 0; i < NC; i++) s = s * 6364136223846793005ULL + 1, c[i] = (uint32_t)(s >> 33) % VOCAB, ref[NA + NB + i] = (int)c[i];
    write_text(in_dir("a.txt"), text, NA);
    write_shard(in_dir("b.bin"), b, NB, 2);
    write_shard(in_dir("c.bin"), c, NC, 4);
}

static void test_read(void) {
    const char *paths[] = {in_dir("a.txt"), in_dir("b.bin"), in_dir("c.bin")};
    moe_dataset *d;
    CHECK_OK(moe_dataset_load(paths, 3, VOCAB, &d));
    int64_t n = NA + NB + NC;
    CHECK(moe_dataset_len(d) == n, "length %lld, want %lld", (long long)moe_dataset_len(d), (long long)n);
    CHECK(moe_dataset_n_files(d) == 3, "%d files", moe_dataset_n_files(d));
    int widths[3] = {1, 2, 4}, counts[3] = {NA, NB, NC};
    for (int i = 0; i < 3 && moe_dataset_n_files(d) == 3; i++) {
        moe_data_file f = moe_dataset_file(d, i);
        CHECK(!strcmp(f.path, paths[i]) && f.tokens == counts[i] && f.token_bytes == widths[i], "file %d: %s %lld %d", i,
              f.path, (long long)f.tokens, f.token_bytes);
    }
    // windows of every length around the two boundaries, and the whole
    static int got[NA + NB + NC];
    int starts[] = {0, NA - 5, NA - 1, NA, NA + NB - 3, NA + NB, (int)n - 7, 0};
    int lens[] = {17, 10, 1, 64, 9, 100, 7, (int)n};
    for (int k = 0; k < 8; k++) {
        memset(got, 0xff, sizeof got);
        CHECK_OK(moe_dataset_read(d, starts[k], lens[k], got));
        CHECK(!memcmp(got, ref + starts[k], (size_t)lens[k] * sizeof(int)), "read [%d, +%d)", starts[k], lens[k]);
        CHECK(lens[k] == n || got[lens[k]] == -1, "read [%d, +%d) wrote past its end", starts[k], lens[k]);
    }
    CHECK_OK(moe_dataset_read(d, 5, 0, got));
    CHECK_OK(moe_dataset_check(d));
    CHECK(strstr(moe_dataset_source(d), "a.txt,") && !strstr(moe_dataset_source(d), "files)"),
          "source '%s'", moe_dataset_source(d));
    moe_status st = moe_dataset_read(d, n - 3, 4, got);
    CHECK(st == MOE_STATUS_ARG && strstr(moe_last_error(), "outside the dataset's"), "read past the end: %s (%s)",
          moe_status_str(st), moe_last_error());
    // a split: two views of the same files
    moe_dataset *v;
    CHECK_OK(moe_dataset_split(d, 0.25f, &v));
    int64_t nv = (int64_t)((double)n * 0.25f);
    CHECK(moe_dataset_len(v) == nv && moe_dataset_len(d) == n - nv, "split %lld + %lld", (long long)moe_dataset_len(d),
          (long long)moe_dataset_len(v));
    CHECK_OK(moe_dataset_read(v, 0, nv, got));
    CHECK(!memcmp(got, ref + n - nv, (size_t)nv * sizeof(int)), "the split-off part's tokens");
    CHECK_OK(moe_dataset_read(d, n - nv - 10, 10, got));
    CHECK(!memcmp(got, ref + n - nv - 10, 10 * sizeof(int)), "the kept part's last tokens");
    CHECK(moe_dataset_n_files(v) == 1 && moe_dataset_file(v, 0).token_bytes == 4, "the split-off part lies in c.bin");
    st = moe_dataset_read(d, n - nv - 1, 2, got);
    CHECK(st == MOE_STATUS_ARG, "the kept part ends at the split: %s", moe_status_str(st));
    CHECK(strstr(moe_dataset_source(v), "the last 25%") != NULL, "split source '%s'", moe_dataset_source(v));
    moe_dataset_free(d); // the part split off still reads the shared files
    CHECK_OK(moe_dataset_read(v, nv - 5, 5, got));
    CHECK(!memcmp(got, ref + n - 5, 5 * sizeof(int)), "the split-off part after its parent was freed");
    moe_dataset_free(v);
    // in memory: the same tokens, the same reads
    CHECK_OK(moe_dataset_from_tokens(ref, n, VOCAB, &d));
    CHECK_OK(moe_dataset_read(d, NA - 2, 4, got));
    CHECK(!memcmp(got, ref + NA - 2, 4 * sizeof(int)) && moe_dataset_file(d, 0).path[0] == 0, "in memory");
    moe_dataset_free(d);
    int bad[3] = {1, VOCAB, 2};
    st = moe_dataset_from_tokens(bad, 3, VOCAB, &d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), "token 300 at index 1"), "in memory, out of range: %s",
          moe_last_error());
}

/* Tokens outside the vocabulary, named where they are; a file cut after the load. */
static void test_errors(void) {
    uint32_t t[100];
    for (int i = 0; i < 100; i++) t[i] = (uint32_t)i;
    t[60] = 4294967295u;
    write_shard(in_dir("big32.bin"), t, 100, 4);
    t[60] = 60;
    t[70] = 65535;
    write_shard(in_dir("big16.bin"), t, 100, 2);
    const char *p32 = in_dir("big32.bin"), *p16 = in_dir("big16.bin");
    moe_dataset *d;
    int got[100];
    CHECK_OK(moe_dataset_load(&p32, 1, VOCAB, &d)); // the load reads headers only
    CHECK_OK(moe_dataset_read(d, 0, 60, got));
    moe_status st = moe_dataset_read(d, 50, 20, got);
    char want[512];
    snprintf(want, sizeof want, "'%s': token 4294967295 at byte offset %d (token 60 of the file) is outside", p32,
             1024 + 4 * 60);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), want), "uint32 out of range: %s", moe_last_error());
    st = moe_dataset_check(d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), want), "check: %s", moe_last_error());
    moe_dataset_free(d);
    const char *both[] = {p16, in_dir("a.txt")};
    CHECK_OK(moe_dataset_load(both, 2, VOCAB, &d));
    snprintf(want, sizeof want, "'%s': token 65535 at byte offset %d (token 70 of the file)", p16, 1024 + 2 * 70);
    st = moe_dataset_check(d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), want), "uint16 check: %s", moe_last_error());
    moe_dataset_free(d);
    // a file that shrinks after the load is an error when read, not a short window
    uint32_t u[50] = {0};
    write_shard(in_dir("shrink.bin"), u, 50, 2);
    const char *ps = in_dir("shrink.bin");
    CHECK_OK(moe_dataset_load(&ps, 1, VOCAB, &d));
    CHECK(truncate(ps, 1024 + 40) == 0, "truncate");
    st = moe_dataset_read(d, 10, 20, got);
    CHECK(st == MOE_STATUS_IO && strstr(moe_last_error(), "ended at byte 1064"), "cut short: %s (%s)", moe_status_str(st),
          moe_last_error());
    moe_dataset_free(d);
    // the header is checked at the load: a uint32 shard whose size does not match its count
    write_shard(in_dir("odd.bin"), u, 50, 4);
    CHECK(truncate(in_dir("odd.bin"), 1024 + 4 * 50 - 2) == 0, "truncate");
    const char *po = in_dir("odd.bin");
    st = moe_dataset_load(&po, 1, VOCAB, &d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), "header says 50 tokens but the file holds 198 bytes"),
          "odd uint32 shard: %s", moe_last_error());
    unlink(po);
    unlink(ps);
    unlink(p32);
    unlink(p16);
}

/* Directories (shards only when there are any; else every file not starting with '.') and
 * patterns, sorted by name; more files than are kept open. */
static void test_expand(void) {
    char sub[128], p[256];
    snprintf(sub, sizeof sub, "%s/shards", dir);
    mkdir(sub, 0755);
    uint32_t t[40];
    int want[100 * 40];
    for (int s = 0; s < 100; s++) {
        for (int i = 0; i < 40; i++) t[i] = (uint32_t)((s * 40 + i) % VOCAB), want[s * 40 + i] = (int)t[i];
        snprintf(p, sizeof p, "%s/x_%06d.bin", sub, 99 - s); // written in reverse: the order is the names'
        write_shard(p, t, 40, s % 2 ? 2 : 4);
    }
    snprintf(p, sizeof p, "%s/x.json", sub);
    write_text(p, "{}", 2); // a sidecar beside them is not data
    snprintf(p, sizeof p, "%s/.hidden.bin", sub);
    write_text(p, "x", 1);
    const char *entry = sub;
    moe_dataset *d;
    static int got[100 * 40];
    int fds = open_fds();
    CHECK_OK(moe_dataset_load(&entry, 1, VOCAB, &d));
    CHECK(moe_dataset_n_files(d) == 100 && moe_dataset_len(d) == 4000, "a directory of 100 shards: %d files, %lld tokens",
          moe_dataset_n_files(d), (long long)moe_dataset_len(d));
    CHECK(strstr(moe_dataset_file(d, 0).path, "x_000000.bin") && strstr(moe_dataset_source(d), "(100 files)"),
          "sorted by name: %s; source '%s'", moe_dataset_file(d, 0).path, moe_dataset_source(d));
    CHECK_OK(moe_dataset_read(d, 0, 4000, got));
    int same = 1;
    for (int s = 0; s < 100; s++) same &= !memcmp(got + s * 40, want + (99 - s) * 40, 40 * sizeof(int));
    CHECK(same, "a directory's tokens, file after file");
    CHECK(open_fds() - fds <= 64, "%d files open after reading 100 (at most 64 are kept)", open_fds() - fds);
    moe_dataset_free(d);
    CHECK(open_fds() == fds, "every file closed with the dataset (%d open, %d before)", open_fds(), fds);
    // a pattern: its matches, sorted
    snprintf(p, sizeof p, "%s/x_00001?.bin", sub);
    entry = p;
    CHECK_OK(moe_dataset_load(&entry, 1, VOCAB, &d));
    CHECK(moe_dataset_n_files(d) == 10 && strstr(moe_dataset_file(d, 9).path, "x_000019.bin"), "a pattern: %d files",
          moe_dataset_n_files(d));
    CHECK_OK(moe_dataset_read(d, 0, 400, got));
    CHECK(!memcmp(got, want + (99 - 10) * 40, 40 * sizeof(int)), "a pattern's first file is x_000010.bin");
    moe_dataset_free(d);
    snprintf(p, sizeof p, "%s/y_*.bin", sub);
    moe_status st = moe_dataset_load(&entry, 1, VOCAB, &d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), "no file matches"), "no match: %s", moe_last_error());
    // a directory of text: every file that does not start with '.'
    snprintf(sub, sizeof sub, "%s/texts", dir);
    mkdir(sub, 0755);
    snprintf(p, sizeof p, "%s/b.txt", sub);
    write_text(p, "BBBB", 4);
    snprintf(p, sizeof p, "%s/a.md", sub);
    write_text(p, "AA", 2);
    snprintf(p, sizeof p, "%s/.c", sub);
    write_text(p, "C", 1);
    entry = sub;
    CHECK_OK(moe_dataset_load(&entry, 1, VOCAB, &d));
    CHECK_OK(moe_dataset_read(d, 0, moe_dataset_len(d) < 6 ? moe_dataset_len(d) : 6, got));
    CHECK(moe_dataset_len(d) == 6 && got[0] == 'A' && got[2] == 'B', "a directory of text: %lld tokens",
          (long long)moe_dataset_len(d));
    moe_dataset_free(d);
    snprintf(sub, sizeof sub, "%s/empty", dir);
    mkdir(sub, 0755);
    st = moe_dataset_load(&entry, 1, VOCAB, &d);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), "holds no data files"), "an empty directory: %s",
          moe_last_error());
}

/* ---------------------------------------------------------------- training */

/* The losses of `steps` steps of a small run on train (val: NULL, split off) into out. */
static void train(moe_dataset *train, moe_dataset *val, const char *name, float *loss, float *val_loss, int steps) {
    moe_config c = moe_config_default();
    const char *keys[][2] = {{"vocab_size", "300"}, {"seq_len", "16"},    {"n_embd", "16"},        {"n_layer", "2"},
                             {"n_head", "2"},       {"n_experts", "4"},   {"top_k", "2"},          {"expert_hidden", "16"},
                             {"ffn_hidden", "16"},  {"batch_size", "3"},  {"grad_accum", "2"},     {"eval_every", "2"},
                             {"eval_batches", "2"}, {"threads", "1"},     {"ckpt_every", "0"}, {"val_frac", "0.1"}};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) CHECK_OK(moe_config_set(&c, keys[i][0], keys[i][1]));
    c.steps = steps;
    moe_trainer *t;
    CHECK_OK(moe_trainer_create(&c, train, val, in_dir(name), MOE_RUN_OVERWRITE, &t));
    for (int s = 0; s < steps; s++) {
        moe_step_info info;
        CHECK_OK(moe_trainer_step(t, &info));
        loss[s] = info.loss.total;
        val_loss[s] = info.has_val ? info.val_loss : -1.0f;
    }
    moe_trainer_free(t);
}

static void test_training(void) {
    const char *paths[] = {in_dir("a.txt"), in_dir("b.bin"), in_dir("c.bin")};
    enum { STEPS = 6 };
    for (int given_val = 0; given_val < 2; given_val++) {
        float lf[STEPS], vf[STEPS], lm[STEPS], vm[STEPS];
        moe_dataset *df, *dm, *vf_d = NULL, *vm_d = NULL;
        CHECK_OK(moe_dataset_load(paths, given_val ? 2 : 3, VOCAB, &df));
        CHECK_OK(moe_dataset_from_tokens(ref, given_val ? NA + NB : NA + NB + NC, VOCAB, &dm));
        if (given_val) {
            CHECK_OK(moe_dataset_load(paths + 2, 1, VOCAB, &vf_d));
            CHECK_OK(moe_dataset_from_tokens(ref + NA + NB, NC, VOCAB, &vm_d));
        }
        train(df, vf_d, "run_files", lf, vf, STEPS);
        train(dm, vm_d, "run_memory", lm, vm, STEPS);
        CHECK(!memcmp(lf, lm, sizeof lf) && !memcmp(vf, vm, sizeof vf),
              "%s: files and memory give the same bits (step 6 loss %.9g / %.9g, val %.9g / %.9g)",
              given_val ? "--val-data" : "split", lf[STEPS - 1], lm[STEPS - 1], vf[STEPS - 1], vm[STEPS - 1]);
        CHECK(vf[1] > 0 && vf[STEPS - 1] > 0, "validation ran");
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/moe_test_data.XXXXXX");
    if (!mkdtemp(dir)) return 1;
    make_files();
    test_read();
    test_errors();
    test_expand();
    test_training();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (check_failures == 0 && system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    CHECK_SUMMARY("test_data");
}
