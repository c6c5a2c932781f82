/*
 * test_generate.c — generation with the KV cache against the full forward pass:
 *   - teacher-forced: for every routing method's inference path (top-K softmax and sigmoid with
 *     a selection bias, Switch top-1, noisy top-K, expert choice, the soft mixture), shared
 *     experts, dense and MoE layers mixed, grouped-query attention, the logits of every position up
 *     to seq_len, fed as a prefill and then one token at a time, equal a forward over the
 *     positions before them within atol + rtol |ref| (rtol 1e-5);
 *   - a batch: sequences of different lengths stepped together equal each alone;
 *   - past seq_len: moe_model_generate's greedy tokens equal a direct computation of the
 *     documented window (a forward over the window's tokens at positions 0 .., argmax), and
 *     every logit it saw equals that forward's;
 *   - EOS ends a sequence, on_token stops, bad input is refused by name.
 */
#include "check.h"
#include "core/core.h"

#include <math.h>
#include <string.h>

#define RTOL 1e-5
#define ATOL 2e-5

static moe_model *make(const char *extra, int T, uint64_t seed) {
    moe_config c = moe_config_default();
    char sets[512];
    snprintf(sets, sizeof sets,
             "vocab_size=61 n_embd=24 n_layer=3 n_head=3 ffn_hidden=20 n_experts=4 top_k=2 expert_hidden=12 "
             "moe_layers=all init_std=0.2 router_init_std=0.5 %s",
             extra);
    char *save = NULL;
    for (char *kv = strtok_r(sets, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
        char *eq = strchr(kv, '=');
        *eq = 0;
        CHECK_OK(moe_config_set(&c, kv, eq + 1));
    }
    c.seq_len = T;
    moe_model *m;
    CHECK_OK(moe_model_create(&c, 4, &m));
    moe_model_init(m, seed);
    // biases start at zero and norms at one: move every tensor off its start, so each one counts
    float *p = moe_model_params(m);
    moe__rng r;
    moe__rng_seed(&r, seed);
    for (int64_t i = 0; i < moe_model_n_params(m); i++) p[i] += 0.05f * moe__rng_normal(&r);
    return m;
}

/* |got - want| <= ATOL + RTOL |want| over n; the worst excess into *worst. */
static int close_all(const float *got, const float *want, int64_t n, double *worst) {
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]), lim = ATOL + RTOL * fabs(want[i]);
        if (!(d <= lim)) ok = 0;
        if (d - lim > *worst) *worst = d - lim;
    }
    return ok;
}

/* Teacher-forced: every position through the cache (a prefill of `pre` tokens, then one at a
 * time) against a forward over the whole sequence. */
static void teacher_forced(const char *name, const char *extra) {
    enum { T = 40, PRE = 7 };
    moe_model *m = make(extra, T, 11);
    int V = moe_model_config(m)->vocab_size, tok[T];
    for (int i = 0; i < T; i++) tok[i] = (i * 17 + 5 + i * i) % V;
    CHECK_OK(moe_model_forward(m, tok, NULL, 1, T, 0, NULL));
    float *ref = malloc((size_t)T * V * sizeof(float)), *got = malloc((size_t)T * V * sizeof(float));
    memcpy(ref, moe_model_logits(m), (size_t)T * V * sizeof(float));
    moe_generator *g;
    CHECK_OK(moe_generator_create(m, 2, &g));
    CHECK_OK(moe_generator_feed(g, 1, tok, PRE, got, 1));
    for (int i = PRE; i < T; i++) CHECK_OK(moe_generator_feed(g, 1, tok + i, 1, got + (int64_t)i * V, 0));
    double worst = 0;
    CHECK(close_all(got, ref, (int64_t)T * V, &worst), "%s: cached logits differ from the forward (worst excess %.3g)",
          name, worst);
    CHECK(moe_generator_len(g, 1) == T && moe_generator_len(g, 0) == 0, "%s: lengths %d %d", name,
          moe_generator_len(g, 1), moe_generator_len(g, 0));
    moe_status st = moe_generator_feed(g, 1, tok, 1, got, 0);
    CHECK(st == MOE_STATUS_ARG && strstr(moe_last_error(), "pass seq_len"), "%s: a full sequence: %s", name,
          moe_last_error());
    moe_generator_free(g);
    free(ref);
    free(got);
    moe_model_free(m);
}

/* Three sequences of different lengths stepped together: each equals its forward alone. */
static void batch_steps(void) {
    enum { T = 24, B = 3, STEPS = 9 };
    moe_model *m = make("n_shared=1", T, 5);
    int V = moe_model_config(m)->vocab_size, len[B] = {3, 8, 1}, seq[B][T];
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T; i++) seq[b][i] = (b * 31 + i * 7 + i * i * 3) % V;
    moe_generator *g;
    CHECK_OK(moe_generator_create(m, B, &g));
    float *l = malloc((size_t)B * V * sizeof(float)), *ref = malloc((size_t)T * V * sizeof(float));
    for (int b = 0; b < B; b++) CHECK_OK(moe_generator_feed(g, b, seq[b], len[b], l, 0));
    double worst = 0;
    int ok = 1;
    for (int s = 0; s < STEPS; s++) {
        int next[B];
        for (int b = 0; b < B; b++) next[b] = seq[b][len[b] + s];
        CHECK_OK(moe_generator_step(g, next, l));
        for (int b = 0; b < B; b++) {
            int n = len[b] + s + 1;
            CHECK_OK(moe_model_forward(m, seq[b], NULL, 1, n, 0, NULL));
            ok &= close_all(l + (int64_t)b * V, moe_model_logits(m) + (int64_t)(n - 1) * V, V, &worst);
        }
    }
    CHECK(ok, "a batch of 3 stepped together equals each alone (worst excess %.3g)", worst);
    int bad[B] = {1, V, 2};
    moe_status st = moe_generator_step(g, bad, l);
    CHECK(st == MOE_STATUS_DATA && strstr(moe_last_error(), "outside the vocabulary"), "a bad token: %s",
          moe_last_error());
    moe_generator_free(g);
    free(l);
    free(ref);
    moe_model_free(m);
}

/* ---------------------------------------------------------------- past seq_len */

typedef struct {
    int count, stop_at;
} counter;

static int count_tokens(void *user, int seq, int token) {
    (void)seq;
    (void)token;
    counter *c = user;
    return ++c->count == c->stop_at;
}

static int argmax(const float *l, int V) {
    int k = 0;
    for (int i = 1; i < V; i++)
        if (l[i] > l[k]) k = i;
    return k;
}

static void past_seq_len(int T) {
    moe_model *m = make("n_shared=1", T, 3);
    int V = moe_model_config(m)->vocab_size, half = T / 2 > 0 ? T / 2 : 1, NP = 5, NEW = 3 * T + 4;
    int prompt[5] = {3, 1, 4, 1, 5}, *out = malloc((size_t)NEW * sizeof(int)), n_out;
    const int *pp = prompt;
    moe_sampling o = moe_sampling_default();
    o.temperature = 0.0f;
    CHECK_OK(moe_model_generate(m, 1, &pp, &NP, NEW, &o, out, &n_out));
    CHECK(n_out == NEW, "T %d: %d tokens made", T, n_out);
    // the documented window, computed directly: forward over the window, argmax
    int *hist = malloc((size_t)(NP + NEW) * sizeof(int)), n = NP, w = NP < T ? NP : T, same = 1, first_bad = -1;
    memcpy(hist, prompt, sizeof prompt);
    double worst = 0;
    moe_generator *g;
    CHECK_OK(moe_generator_create(m, 1, &g));
    float *l = malloc((size_t)V * sizeof(float));
    CHECK_OK(moe_generator_feed(g, 0, hist + n - w, w, l, 0));
    for (int i = 0; i < NEW; i++) {
        CHECK_OK(moe_model_forward(m, hist + n - w, NULL, 1, w, 0, NULL));
        const float *ref = moe_model_logits(m) + (int64_t)(w - 1) * V;
        close_all(l, ref, V, &worst);
        int next = argmax(ref, V);
        if (next != out[i] && first_bad < 0) first_bad = i, same = 0;
        hist[n++] = out[i]; // follow the generated sequence, so one near-tie cannot derail the rest
        if (w == T) {
            w = half;
            moe_generator_reset(g, 0);
            CHECK_OK(moe_generator_feed(g, 0, hist + n - w, w, l, 0));
        } else {
            w++;
            CHECK_OK(moe_generator_feed(g, 0, hist + n - 1, 1, l, 0));
        }
    }
    CHECK(same, "T %d: the generated tokens are the window's argmax (first difference at token %d)", T, first_bad);
    CHECK(worst <= 0, "T %d: the window's logits through the cache equal its forward (worst excess %.3g)", T, worst);
    // eos ends the sequence (kept), on_token stops
    o.eos = out[2];
    int k = 0;
    while (out[k] != o.eos) k++;
    CHECK_OK(moe_model_generate(m, 1, &pp, &NP, NEW, &o, out, &n_out));
    CHECK(n_out == k + 1 && out[k] == o.eos, "T %d: eos at %d: %d tokens", T, k, n_out);
    counter cnt = {0, 4};
    o.eos = -1;
    o.on_token = count_tokens;
    o.user = &cnt;
    CHECK_OK(moe_model_generate(m, 1, &pp, &NP, NEW, &o, out, &n_out));
    CHECK(n_out == 4 && cnt.count == 4, "T %d: on_token stopped after %d (%d)", T, n_out, cnt.count);
    moe_generator_free(g);
    free(l);
    free(hist);
    free(out);
    moe_model_free(m);
}

/* A sampled batch: sequence 0 of a batch is the sample of its prompt alone (its seed). */
static void sampled_batch(void) {
    moe_model *m = make("", 16, 9);
    int p0[3] = {1, 2, 3}, p1[6] = {9, 8, 7, 6, 5, 4}, n[2] = {3, 6}, out[2 * 40], n_out[2], alone[40];
    const int *pr[2] = {p0, p1};
    moe_sampling o = moe_sampling_default();
    o.temperature = 1.0f;
    o.seed = 77;
    CHECK_OK(moe_model_generate(m, 2, pr, n, 40, &o, out, n_out));
    CHECK_OK(moe_model_sample(m, p0, 3, alone, 40, 1.0f, 0, 0.95f, 77));
    CHECK(n_out[0] == 40 && n_out[1] == 40 && !memcmp(out, alone, sizeof alone),
          "sequence 0 of a sampled batch is its sample alone");
    moe_status st = moe_model_generate(m, 2, pr, (int[]){3, 0}, 5, &o, out, n_out);
    CHECK(st == MOE_STATUS_ARG && strstr(moe_last_error(), "prompt 1 is empty"), "empty prompt: %s", moe_last_error());
    moe_model_free(m);
}

int main(void) {
    static const struct {
        const char *name, *sets;
    } v[] = {
        {"top-K softmax", "routing=topk"},
        {"top-K, unnormalised", "routing=topk norm_topk=false"},
        {"sigmoid with bias, shared expert", "router_score=sigmoid route_scale=2.5 n_shared=1 bias_update_rate=0.01"},
        {"Switch top-1", "routing=topk top_k=1"},
        {"noisy top-K", "routing=noisy_topk"},
        {"expert choice (token choice at inference)", "routing=expert_choice"},
        {"soft mixture", "routing=soft"},
        {"dense and MoE layers mixed", "moe_layers=every:2 n_shared=2"},
        {"dense only", "moe_layers=none"},
        {"grouped-query attention (3 heads on 1)", "n_kv_head=1"},
        {"Qwen2-MoE: q/k/v biases, gated shared expert of its own width, dense layer, unnormalised",
         "qkv_bias=true n_shared=1 shared_gate=true shared_hidden=20 moe_layers=1-2 norm_topk=false"},
        {"OLMoE: QK-norm with grouped-query attention", "qk_norm=true n_kv_head=1 norm_topk=false"},
        {"group-limited routing (DeepSeek-V3: 2 groups, 1 kept, sigmoid + bias)",
         "router_score=sigmoid n_group=2 topk_group=1 bias_update_rate=0.01"},
        {"group-limited routing (DeepSeek-V2: group max)", "n_group=4 topk_group=2 group_score=max"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) teacher_forced(v[i].name, v[i].sets);
    batch_steps();
    past_seq_len(16);
    past_seq_len(7);
    sampled_batch();
    CHECK_SUMMARY("test_generate");
}
