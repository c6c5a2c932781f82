/*
 * test_ref.c — the whole model against PyTorch (tests/ref/make_ref.py): logits, losses, routing
 * statistics and every parameter gradient at initialisation, then the losses and parameters
 * after several clipped AdamW steps with warmup and per-group learning rates.
 *
 *   test_ref DIR                 compare with DIR/<case>_ref.safetensors (the test)
 *   test_ref --write-init DIR    write DIR/<case>_init.safetensors and <case>_batch.safetensors,
 *                                the inputs of make_ref.py
 */
#include "check.h"
#include "io/io.h"
#include "train/train.h"
#include "cpu/cpu.h"

#include <string.h>

#define NSTEPS 4
#ifndef CASE_F_SEED
#define CASE_F_SEED 2
#endif

typedef struct {
    const char *name;
    int need_zero_expert, need_drops; /* coverage the seed search must find */
    uint64_t seed0;                   /* where the search starts */
    const char *sets[40];
} ref_case;

/* Case a: MoE and dense layers, shared expert, renormalised top-2, dropping by probability.
 * Case b: Switch top-1 without renormalisation, dropping by position, tied embeddings, every
 * layer MoE, grouped-query attention (4 heads on 2 key/value heads). In both, --write-init searches initialisation seeds until batch 0 routes no token
 * to some expert and drops some assignments, so that those paths are compared too. */
static const ref_case cases[] = {
    {"case_a", 1, 1, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=3", "n_head=2", "ffn_hidden=20", "n_experts=4",
      "top_k=2", "expert_hidden=12", "n_shared=1", "moe_layers=0,2", "norm_topk=true", 
      "capacity_factor=1.0", "min_capacity=1", "drop_policy=probability", "aux_loss_coef=0.05",
      "z_loss_coef=0.01", "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", "expert_lr_mult=0.5", NULL}},
    {"case_b", 1, 1, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=4", "n_kv_head=2", "ffn_hidden=20",
      "n_experts=4", "top_k=1", "expert_hidden=12", "n_shared=0", "moe_layers=all", "norm_topk=false", 
      "capacity_factor=1.0", "min_capacity=1", "drop_policy=position", "aux_loss_coef=0.1", "z_loss_coef=0.01",
      "tie_embeddings=true", "batch_size=2", "lr=0.02", "warmup_steps=1", "steps=4", "router_lr_mult=2.0", NULL}},
    /* DeepSeek-V3 style: sigmoid scores, aux-loss-free bias (random values), route scale,
     * sequence-wise aux loss, a pyramid of expert counts, a shared expert */
    {"case_c", 1, 1, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=4",
      "expert_counts=4,6", "top_k=2", "expert_hidden=12", "n_shared=1", "moe_layers=all", "norm_topk=true",
      "router_score=sigmoid", "route_scale=2.5", "bias_update_rate=0.001", "seq_aux_loss_coef=0.1",
      "capacity_factor=1.0", "min_capacity=1", "drop_policy=probability", "aux_loss_coef=0.01", "z_loss_coef=0.001",
      "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* Shazeer et al. 2017 noisy top-2 with importance and load losses (noise exported) */
    {"case_d", 0, 1, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=4",
      "top_k=2", "expert_hidden=12", "moe_layers=all", "routing=noisy_topk", "importance_loss_coef=0.1",
      "load_loss_coef=0.1", "capacity_factor=1.0", "min_capacity=1", "aux_loss_coef=0.0", "z_loss_coef=0.001",
      "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* expert choice (Zhou et al. 2022) */
    {"case_e", 0, 0, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=4",
      "top_k=2", "expert_hidden=12", "moe_layers=all", "routing=expert_choice", "capacity_factor=1.0",
      "aux_loss_coef=0.0", "z_loss_coef=0.001", "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* dense soft mixture (Jacobs et al. 1991) */
    {"case_f", 0, 0, CASE_F_SEED,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=3",
      "top_k=1", "expert_hidden=12", "moe_layers=1", "routing=soft", "aux_loss_coef=0.0", "z_loss_coef=0.001",
      "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* Qwen2-MoE: q/k/v biases, grouped-query attention, a gated shared expert of its own width, a
     * dense layer (then layers 1-2 MoE), top-K not renormalised, dropless */
    {"case_g", 0, 0, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=3", "n_head=4", "n_kv_head=2", "ffn_hidden=20",
      "n_experts=4", "top_k=2", "expert_hidden=12", "n_shared=1", "shared_hidden=18", "shared_gate=true",
      "qkv_bias=true", "moe_layers=1-2", "norm_topk=false", "capacity_factor=0", "aux_loss_coef=0.01",
      "z_loss_coef=0.001", "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* OLMoE: QK-norm over the whole q and k projections (k with 2 key/value heads of 4), top-K
     * not renormalised, dropless, router z-loss */
    {"case_h", 0, 0, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=4", "n_kv_head=2", "ffn_hidden=20",
      "n_experts=6", "top_k=2", "expert_hidden=12", "qk_norm=true", "moe_layers=all", "norm_topk=false",
      "capacity_factor=0", "aux_loss_coef=0.01", "z_loss_coef=0.001", "batch_size=2", "lr=0.01",
      "warmup_steps=2", "steps=4", NULL}},
    /* DeepSeek-V3 group-limited routing: 8 experts in 4 groups, each token's 2 best groups by
     * the sum of their top-2 (sigmoid + bias) scores, then top-3 within; a shared expert */
    {"case_i", 0, 0, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=8",
      "top_k=3", "expert_hidden=8", "n_shared=1", "moe_layers=all", "norm_topk=true", "router_score=sigmoid",
      "route_scale=2.5", "bias_update_rate=0.001", "n_group=4", "topk_group=2", "group_score=top2_sum",
      "seq_aux_loss_coef=0.1", "capacity_factor=0", "aux_loss_coef=0.0", "z_loss_coef=0.001", "batch_size=2",
      "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
    /* DeepSeek-V2 group-limited routing: 6 experts in 3 groups, the best group by its max
     * softmax score, top-2 within it, unnormalised, dropping by probability */
    {"case_j", 0, 1, 1,
     {"vocab_size=64", "seq_len=8", "n_embd=16", "n_layer=2", "n_head=2", "ffn_hidden=20", "n_experts=6",
      "top_k=2", "expert_hidden=8", "moe_layers=all", "norm_topk=false", "n_group=3", "topk_group=1",
      "group_score=max", "capacity_factor=1.0", "min_capacity=1", "drop_policy=probability", "aux_loss_coef=0.01",
      "z_loss_coef=0.001", "batch_size=2", "lr=0.01", "warmup_steps=2", "steps=4", NULL}},
};

/* The noise seed of the forward at step s (noisy top-K draws), the same in both modes. */
static uint64_t step_seed(int s) { return 1000 + (uint64_t)s; }

static moe_config case_config(const ref_case *rc) {
    moe_config c = moe_config_default();
    for (int i = 0; rc->sets[i]; i++) {
        char kv[64];
        snprintf(kv, sizeof kv, "%s", rc->sets[i]);
        char *eq = strchr(kv, '=');
        *eq = 0;
        CHECK_OK(moe_config_set(&c, kv, eq + 1));
    }
    c.weight_decay = 0.1f;
    c.grad_clip = 1.0f;
    return c;
}

static void write_init(const char *dir) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        moe_config c = case_config(&cases[ci]);
        moe_model *m;
        CHECK_OK(moe_model_create(&c, c.batch_size, &m));
        int n = NSTEPS * c.batch_size * c.seq_len;
        int *tok = malloc((size_t)n * sizeof(int)), *tgt = malloc((size_t)n * sizeof(int));
        moe__rng r;
        moe__rng_seed(&r, 99 + ci);
        for (int i = 0; i < n; i++) {
            tok[i] = (int)(moe__rng_u64(&r) % (uint64_t)c.vocab_size);
            tgt[i] = (int)(moe__rng_u64(&r) % (uint64_t)c.vocab_size);
        }
        uint64_t seed;
        for (seed = cases[ci].seed0; seed < 100000; seed++) {
            moe_model_init(m, seed);
            // aux-loss-free bias: random values so that the bias changes selections
            moe__rng br;
            moe__rng_seed(&br, seed);
            // q/k/v biases (zero at init) and QK-norm gains (one) random too, so that they count
            for (int i = 0; i < moe_model_n_tensors(m); i++) {
                const moe_tensor_info *t = moe_model_tensor(m, i);
                size_t nl = strlen(t->name);
                int bias = nl > 5 && !strcmp(t->name + nl - 5, ".bias");
                int qk = nl > 12 && !strcmp(t->name + nl - 12, "_norm.weight");
                float *p = moe_model_params(m) + t->offset;
                if (t->group == MOE_GROUP_BUFFER || bias || qk)
                    for (int64_t j = 0; j < t->numel; j++) p[j] = (qk ? 1.0f : 0.0f) + 0.1f * moe__rng_normal(&br);
            }
            moe__model_set_noise_seed(m, step_seed(0));
            CHECK_OK(moe_model_forward(m, tok, tgt, c.batch_size, c.seq_len, 1, NULL));
            int zero = 0, dropped = 0;
            for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
                const moe_layer_stats *s = moe_model_layer_stats(m, i);
                for (int e = 0; e < s->n_experts; e++) zero |= s->load[e] == 0;
                dropped |= s->dropped > 0;
            }
            if ((zero || !cases[ci].need_zero_expert) && (dropped || !cases[ci].need_drops)) break;
        }
        char path[512];
        snprintf(path, sizeof path, "%s/%s_init.safetensors", dir, cases[ci].name);
        CHECK_OK(moe_model_save(m, path, 0));
        // inputs: the batches, and for noisy gating the N(0,1) draws of every step and layer
        moe__st_entry e[2 + NSTEPS * 16];
        char names[NSTEPS * 16][64];
        float *noise[NSTEPS * 16];
        int ne = 0;
        e[ne++] = (moe__st_entry){"tokens", "I32", 3, {NSTEPS, c.batch_size, c.seq_len}, tok};
        e[ne++] = (moe__st_entry){"targets", "I32", 3, {NSTEPS, c.batch_size, c.seq_len}, tgt};
        int nn = 0;
        if (c.routing == MOE_ROUTING_NOISY_TOPK) {
            int64_t BT = (int64_t)c.batch_size * c.seq_len;
            for (int st = 0; st < NSTEPS; st++) {
                moe__model_set_noise_seed(m, step_seed(st));
                CHECK_OK(moe_model_forward(m, tok + st * BT, tgt + st * BT, c.batch_size, c.seq_len, 1, NULL));
                for (int l = 0; l < c.n_layer; l++) {
                    const moe__moe_cache *mc = moe__cpu_moe_cache(m, l);
                    if (!mc) continue;
                    int E = moe_config_layer_experts(&c, l);
                    noise[nn] = malloc((size_t)BT * E * sizeof(float));
                    memcpy(noise[nn], mc->noise_eps, (size_t)BT * E * sizeof(float));
                    snprintf(names[nn], sizeof names[nn], "noise_eps.%d.%d", st, l);
                    e[ne++] = (moe__st_entry){names[nn], "F32", 2, {BT, E}, noise[nn]};
                    nn++;
                }
            }
        }
        snprintf(path, sizeof path, "%s/%s_batch.safetensors", dir, cases[ci].name);
        CHECK_OK(moe__st_write(path, e, ne, NULL, NULL, 0));
        for (int i = 0; i < nn; i++) free(noise[i]);
        free(tok);
        free(tgt);
        moe_model_free(m);
        printf("wrote %s inputs (init seed %llu)\n", cases[ci].name, (unsigned long long)seed);
    }
}

static const moe__st_tensor *need(const moe__st_file *f, const char *name, const char *dtype, int64_t nbytes) {
    const moe__st_tensor *t = moe__st_find(f, name);
    if (!t || strcmp(t->dtype, dtype) != 0 || t->nbytes != nbytes) {
        fprintf(stderr, "FAIL: reference tensor '%s' missing or not %s of %lld bytes\n", name, dtype, (long long)nbytes);
        exit(1);
    }
    return t;
}

/* Compares every tensor of the model's table (in buf: gradients or parameters) with the
 * reference tensor named prefix + name; returns the largest absolute error. */
static double compare_tensors(const moe_model *m, const moe__st_file *ref, const char *prefix, const float *buf,
                              double atol, double rtol) {
    double worst = 0;
    for (int i = 0; i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, t->name);
        const float *want = (const float *)need(ref, name, "F32", t->numel * 4)->data;
        double e = CHECK_ARRAYS(buf + t->offset, want, t->numel, atol, rtol, name);
        worst = e > worst ? e : worst;
    }
    return worst;
}

static void compare_case(const char *dir, const ref_case *rc) {
    char path[512];
    moe__st_file batch, ref;
    snprintf(path, sizeof path, "%s/%s_batch.safetensors", dir, rc->name);
    CHECK_OK(moe__st_read(path, &batch));
    snprintf(path, sizeof path, "%s/%s_ref.safetensors", dir, rc->name);
    CHECK_OK(moe__st_read(path, &ref));
    snprintf(path, sizeof path, "%s/%s_init.safetensors", dir, rc->name);
    moe_model *m, *init;
    CHECK_OK(moe_model_load(path, 8, &init)); // for inference: trained, a model of its config takes its weights
    CHECK_OK(moe_model_create(moe_model_config(init), 8, &m));
    CHECK_OK(moe_model_init_from(m, init, NULL));
    moe_model_free(init);
    moe_config c = case_config(rc); // training keys are not stored in the model file
    const moe_config *mc = moe_model_config(m);
    int B = c.batch_size, T = c.seq_len, V = mc->vocab_size, nm = moe_model_n_moe_layers(m);
    int64_t total_e = moe_model_total_experts(m);
    int64_t BT = (int64_t)B * T;
    const int *tok = (const int *)need(&batch, "tokens", "I32", NSTEPS * BT * 4)->data;
    const int *tgt = (const int *)need(&batch, "targets", "I32", NSTEPS * BT * 4)->data;

    // forward and backward at initialisation
    moe_losses l;
    moe__model_set_noise_seed(m, step_seed(0));
    CHECK_OK(moe_model_forward(m, tok, tgt, B, T, 1, &l));
    const float *want_logits = (const float *)need(&ref, "logits", "F32", BT * V * 4)->data;
    double err = CHECK_ARRAYS(moe_model_logits(m), want_logits, BT * V, 1e-5, 1e-4, "logits");
    printf("%s: logits max abs err %.3g\n", rc->name, err);
    const float *want_loss = (const float *)need(&ref, "losses", "F32", 7 * 4)->data;
    CHECK_CLOSE(l.ce, want_loss[0], 1e-6, 1e-5, "ce loss");
    CHECK_CLOSE(l.aux, want_loss[1], 1e-6, 1e-5, "aux loss");
    CHECK_CLOSE(l.z, want_loss[2], 1e-6, 1e-5, "z loss");
    CHECK_CLOSE(l.seq_aux, want_loss[3], 1e-6, 1e-5, "sequence aux loss");
    CHECK_CLOSE(l.importance, want_loss[4], 1e-6, 1e-4, "importance loss");
    CHECK_CLOSE(l.load, want_loss[5], 1e-6, 1e-4, "load loss");
    CHECK_CLOSE(l.total, want_loss[6], 1e-6, 1e-5, "total loss");
    // routing: loads and drops per MoE layer, and the coverage this case exists for
    const float *want_load = (const float *)need(&ref, "load", "F32", total_e * 4)->data;
    const float *want_drop = (const float *)need(&ref, "dropped", "F32", (int64_t)nm * 4)->data;
    int64_t zero_experts = 0, dropped = 0;
    for (int i = 0, off = 0; i < nm; i++) {
        const moe_layer_stats *s = moe_model_layer_stats(m, i);
        for (int e = 0; e < s->n_experts; e++) {
            CHECK(s->load[e] == (int64_t)want_load[off + e], "layer %d expert %d load %lld want %g", s->layer, e,
                  (long long)s->load[e], want_load[off + e]);
            zero_experts += s->load[e] == 0;
        }
        off += s->n_experts;
        CHECK(s->dropped == (int64_t)want_drop[i], "layer %d dropped %lld want %g", s->layer, (long long)s->dropped,
              want_drop[i]);
        dropped += s->dropped;
    }
    CHECK(zero_experts > 0 || !rc->need_zero_expert, "%s: the reference case must route zero tokens to some expert",
          rc->name);
    CHECK(dropped > 0 || !rc->need_drops, "%s: the reference case must drop tokens", rc->name);
    moe_model_zero_grad(m);
    CHECK_OK(moe_model_backward(m, 1.0f));
    double worst = compare_tensors(m, &ref, "grad.", moe_model_grads(m), 1e-6, 1e-4);
    printf("%s: %d gradients, max abs err %.3g\n", rc->name, moe_model_n_tensors(m), worst);

    // NSTEPS AdamW steps, batch s at step s
    CHECK_OK(m->be->optimizer_create(m));
    const float *want_steps = (const float *)need(&ref, "step_losses", "F32", NSTEPS * 4)->data;
    for (int s = 0; s < NSTEPS; s++) {
        moe__model_set_noise_seed(m, step_seed(s));
        CHECK_OK(moe_model_forward(m, tok + s * BT, tgt + s * BT, B, T, 1, &l));
        CHECK_CLOSE(l.total, want_steps[s], 1e-5, 1e-4, "total loss at step");
        moe_model_zero_grad(m);
        CHECK_OK(moe_model_backward(m, 1.0f));
        float norm;
        CHECK_OK(moe__optimizer_step(m, s, moe__lr_at(&c, s), &c, &norm));
        printf("%s: step %d loss %.6f (torch %.6f) grad norm %.4f\n", rc->name, s, l.total, want_steps[s], norm);
    }
    worst = compare_tensors(m, &ref, "final.", moe_model_params(m), 2e-5, 1e-3);
    printf("%s: parameters after %d AdamW steps, max abs err %.3g\n", rc->name, NSTEPS, worst);
    moe_model_free(m);
    moe__st_free(&batch);
    moe__st_free(&ref);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--write-init")) {
        write_init(argv[2]);
        return check_failures ? 1 : 0;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: test_ref REFDIR | test_ref --write-init REFDIR\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) compare_case(argv[1], &cases[i]);
    CHECK_SUMMARY("test_ref");
}
