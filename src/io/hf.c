/*
 * hf.c — Hugging Face export: a model that maps exactly onto a transformers family becomes
 * HFDIR/config.json + HFDIR/model.safetensors (HF key names, experts split per expert, F32 or
 * BF16). "Exactly" means transformers' logits equal ours at inference (eval routing: dropless,
 * no noise).
 *   MixtralForCausalLM: every layer MoE, softmax top-K renormalised, no shared experts, no
 *     biases, no QK-norm.
 *   Qwen2MoeForCausalLM: softmax top-K, renormalised or not (norm_topk_prob), dense layers
 *     (mlp_only_layers), shared experts, q/k/v biases, the shared-expert gate. What Qwen2-MoE
 *     always has and a model may lack is set to what makes it ours: zero q/k/v biases; a zero
 *     shared_expert_gate, so sigmoid gives 1/2 and down_proj is doubled (exact in binary); with
 *     no shared experts a width-1 shared expert of zeros.
 *   OlmoeForCausalLM: QK-norm, every layer MoE, softmax top-K renormalised or not, no shared
 *     experts, no biases.
 * All need one expert count, no gate scale and no selection bias. A model that maps onto no
 * family gets an error naming the reason for each.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"
#include "model/backend.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Why c does not map onto both families (the routing they share), or NULL. */
static const char *not_topk_softmax(const moe_model *m, const moe_config *c, char *why, size_t n) {
    for (int l = 0; l < c->n_layer; l++)
        if (moe_config_layer_experts(c, l) != c->n_experts)
            return snprintf(why, n, "its layers have different expert counts (%s)", c->expert_counts), why;
    if (c->routing != MOE_ROUTING_TOPK && c->routing != MOE_ROUTING_NOISY_TOPK)
        return snprintf(why, n, "its routing is not token-choice top-K"), why;
    if (c->router_score != MOE_SCORE_SOFTMAX) return snprintf(why, n, "its router scores are sigmoid, not softmax"), why;
    if (c->route_scale != 1.0f) return snprintf(why, n, "its gate weights are scaled by %g", c->route_scale), why;
    if (c->n_group > 1)
        return snprintf(why, n, "it routes within %d of %d expert groups (group-limited routing)", c->topk_group,
                        c->n_group), why;
    if (c->eval_capacity_factor > 0.0f)
        return snprintf(why, n, "it drops tokens at inference (eval_capacity_factor %g; transformers is dropless)",
                        c->eval_capacity_factor), why;
    for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
        const moe_layer_stats *s = moe_model_layer_stats(m, i);
        for (int e = 0; s->bias && e < s->n_experts; e++)
            if (s->bias[e] != 0.0f)
                return snprintf(why, n, "layer %d has an expert-selection bias (aux-loss-free balancing)", s->layer), why;
    }
    return NULL;
}

/* Why c does not map onto Mixtral, or NULL when it does. */
static const char *not_mixtral(const moe_model *m, const moe_config *c, char *why, size_t n) {
    if (moe_model_n_moe_layers(m) != c->n_layer)
        return snprintf(why, n, "only %d of %d layers are MoE (Mixtral has no dense layers)", moe_model_n_moe_layers(m),
                        c->n_layer), why;
    if (c->n_shared > 0) return snprintf(why, n, "it has %d shared experts (Mixtral has none)", c->n_shared), why;
    if (!c->norm_topk) return snprintf(why, n, "its top-K weights are not renormalised (Mixtral renormalises)"), why;
    if (c->qkv_bias) return snprintf(why, n, "its q/k/v projections have biases (Mixtral's have none)"), why;
    if (c->qk_norm) return snprintf(why, n, "its attention normalises q and k (QK-norm; Mixtral's does not)"), why;
    return not_topk_softmax(m, c, why, n);
}

static const char *not_qwen2_moe(const moe_model *m, const moe_config *c, char *why, size_t n) {
    if (moe_model_n_moe_layers(m) == 0) return snprintf(why, n, "it has no MoE layer"), why;
    if (c->qk_norm) return snprintf(why, n, "its attention normalises q and k (QK-norm; Qwen2-MoE's does not)"), why;
    return not_topk_softmax(m, c, why, n);
}

static const char *not_olmoe(const moe_model *m, const moe_config *c, char *why, size_t n) {
    if (!c->qk_norm) return snprintf(why, n, "its attention does not normalise q and k (OLMoE's has QK-norm)"), why;
    if (moe_model_n_moe_layers(m) != c->n_layer)
        return snprintf(why, n, "only %d of %d layers are MoE (OLMoE has no dense layers)", moe_model_n_moe_layers(m),
                        c->n_layer), why;
    if (c->n_shared > 0) return snprintf(why, n, "it has %d shared experts (OLMoE has none)", c->n_shared), why;
    if (c->qkv_bias) return snprintf(why, n, "its q/k/v projections have biases (OLMoE's have none)"), why;
    return not_topk_softmax(m, c, why, n);
}

typedef enum { FAM_MIXTRAL, FAM_QWEN2_MOE, FAM_OLMOE, FAM_COUNT } hf_family;
static const char *const fam_name[] = {"mixtral", "qwen2_moe", "olmoe"};
static const char *const fam_arch[] = {"MixtralForCausalLM", "Qwen2MoeForCausalLM", "OlmoeForCausalLM"};
static const char *const fam_title[] = {"Mixtral", "Qwen2-MoE", "OLMoE"};

/* One tensor of the export: HF name, shape, and where its floats come from: the model's (src,
 * times scale), or zeros (src NULL). Made one at a time as it is written. */
typedef struct {
    char *name;
    int ndim;
    int64_t shape[2];
    const float *src;
    float scale;
} out_tensor;

typedef struct {
    out_tensor *t;
    int n, cap;
} out_list;

static out_tensor *add(out_list *o, const char *name, int ndim, int64_t d0, int64_t d1, const float *src, float scale) {
    if (o->n == o->cap) {
        int cap = o->cap ? 2 * o->cap : 64;
        out_tensor *t = realloc(o->t, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        o->t = t;
        o->cap = cap;
    }
    out_tensor *t = &o->t[o->n];
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->name = strdup(name);
    if (!t->name) return NULL;
    t->src = src;
    t->scale = scale;
    o->n++;
    return t;
}

static int64_t numel(const out_tensor *t) { return t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1); }

/* The model's tensors under the family's names, and the family's extra tensors. */
static moe_status collect(const moe_model *m, hf_family fam, out_list *o) {
    const moe_config *c = moe_model_config(m);
    moe_status sync = m->be->to_host((moe_model *)m, MOE_BUF_PARAMS);
    if (sync != MOE_STATUS_OK) return sync;
    const float *params = m->params;
    static const char *const hf_proj[] = {"gate_proj", "down_proj", "up_proj"}; // w1 w2 w3
    char name[512];
    int64_t C = c->n_embd, KC = (int64_t)moe__kv_heads(c) * (C / c->n_head);
    int qwen = fam == FAM_QWEN2_MOE;
    for (int i = 0; i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        if (t->group == MOE_GROUP_BUFFER) continue; // the selection bias, zero (checked)
        const float *src = params + t->offset;
        if (t->group == MOE_GROUP_EXPERT) { // stacked [E, a, b] -> one [a, b] per expert
            const char *w = strstr(t->name, "experts.w") + strlen("experts.w"); // "1.weight"
            int64_t per = t->numel / t->shape[0];
            for (int64_t x = 0; x < t->shape[0]; x++) {
                if (fam != FAM_MIXTRAL)
                    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%lld.%s.weight", t->layer, (long long)x,
                             hf_proj[w[0] - '1']);
                else
                    snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%lld.w%c.weight", t->layer,
                             (long long)x, w[0]);
                if (!add(o, name, 2, t->shape[1], t->shape[2], src + x * per, 1.0f)) return MOE_STATUS_NOMEM;
            }
            continue;
        }
        const char *hf = fam == FAM_MIXTRAL ? t->name : moe__hf_rename(name, sizeof name, t->name, 1);
        // without a gate of its own, Qwen2's zero gate gives sigmoid(0) = 1/2: down_proj doubled
        int dbl = qwen && !c->shared_gate && strstr(hf, "mlp.shared_expert.down_proj") != NULL;
        if (!add(o, hf, t->ndim, t->shape[0], t->ndim > 1 ? t->shape[1] : 1, src, dbl ? 2.0f : 1.0f))
            return MOE_STATUS_NOMEM;
    }
    if (!qwen) return MOE_STATUS_OK;
    for (int l = 0; l < c->n_layer; l++) { // what Qwen2-MoE always has and this model may not: zeros
        const char *qkv[] = {"q_proj", "k_proj", "v_proj"};
        for (int k = 0; k < 3 && !c->qkv_bias; k++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.bias", l, qkv[k]);
            if (!add(o, name, 1, k ? KC : C, 1, NULL, 0.0f)) return MOE_STATUS_NOMEM;
        }
        if (!moe_config_layer_is_moe(c, l)) continue;
        snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert_gate.weight", l);
        if (!c->shared_gate && !add(o, name, 2, 1, C, NULL, 0.0f)) return MOE_STATUS_NOMEM;
        for (int k = 0; k < 3 && c->n_shared == 0; k++) { // no shared experts: one of width 1, all zeros, adds 0
            snprintf(name, sizeof name, "model.layers.%d.mlp.shared_expert.%s.weight", l, hf_proj[k]);
            if (!add(o, name, 2, k == 1 ? C : 1, k == 1 ? 1 : C, NULL, 0.0f)) return MOE_STATUS_NOMEM;
        }
    }
    return MOE_STATUS_OK;
}

static char *config_json(const moe_model *m, hf_family fam, int bf16) {
    const moe_config *c = moe_model_config(m);
    cJSON *j = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString(fam_arch[fam]));
    cJSON_AddStringToObject(j, "model_type", fam_name[fam]);
    const struct {
        const char *key;
        double value;
    } nums[] = {{"vocab_size", c->vocab_size},        {"hidden_size", c->n_embd},
                {"num_hidden_layers", c->n_layer},     {"num_attention_heads", c->n_head},
                {"num_key_value_heads", moe__kv_heads(c)},    {"max_position_embeddings", c->seq_len},
                {"rms_norm_eps", c->norm_eps},         {"rope_theta", c->rope_theta},
                {"num_experts_per_tok", c->top_k},     {"attention_dropout", 0.0},
                {"router_aux_loss_coef", c->aux_loss_coef}, {"initializer_range", c->init_std}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) cJSON_AddNumberToObject(j, nums[i].key, nums[i].value);
    if (fam == FAM_QWEN2_MOE) {
        cJSON_AddNumberToObject(j, "intermediate_size", c->ffn_hidden);
        cJSON_AddNumberToObject(j, "moe_intermediate_size", c->expert_hidden);
        cJSON_AddNumberToObject(j, "shared_expert_intermediate_size",
                                c->n_shared > 0 ? (double)moe__shared_width(c) : 1.0);
        cJSON_AddNumberToObject(j, "num_experts", c->n_experts);
        cJSON_AddNumberToObject(j, "decoder_sparse_step", 1);
        cJSON_AddBoolToObject(j, "norm_topk_prob", c->norm_topk);
        cJSON_AddBoolToObject(j, "use_sliding_window", 0);
        cJSON_AddNumberToObject(j, "sliding_window", c->seq_len);
        cJSON_AddNumberToObject(j, "max_window_layers", c->n_layer);
        cJSON *dense = cJSON_AddArrayToObject(j, "mlp_only_layers");
        for (int l = 0; l < c->n_layer; l++)
            if (!moe_config_layer_is_moe(c, l)) cJSON_AddItemToArray(dense, cJSON_CreateNumber(l));
    } else if (fam == FAM_OLMOE) {
        cJSON_AddNumberToObject(j, "intermediate_size", c->expert_hidden);
        cJSON_AddNumberToObject(j, "num_experts", c->n_experts);
        cJSON_AddBoolToObject(j, "norm_topk_prob", c->norm_topk);
        cJSON_AddNullToObject(j, "clip_qkv");
        cJSON_AddBoolToObject(j, "attention_bias", 0);
        cJSON_AddNullToObject(j, "pad_token_id"); // its default (1) would make a row of the embedding a padding row
    } else {
        cJSON_AddNumberToObject(j, "intermediate_size", c->expert_hidden);
        cJSON_AddNumberToObject(j, "num_local_experts", c->n_experts);
        cJSON_AddNullToObject(j, "sliding_window");
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddStringToObject(j, "torch_dtype", bf16 ? "bfloat16" : "float32");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    return txt;
}

/* Shard k of n's file name: model.safetensors alone, else HF's model-0000k-of-0000n.safetensors. */
static void shard_name(char *buf, size_t size, int k, int n) {
    if (n == 1) snprintf(buf, size, "model.safetensors");
    else snprintf(buf, size, "model-%05d-of-%05d.safetensors", k + 1, n);
}

/* Writes tensors [a, b) of o as one safetensors file, each made in buf (the largest tensor's
 * floats, or bf16) as it is written; the model's pages it read leave resident memory after. */
static moe_status write_shard(const moe_model *m, const out_list *o, int a, int b, int bf16, const char *path,
                              void *buf) {
    moe__st_entry *e = calloc((size_t)(b - a), sizeof *e);
    if (!e) return moe__err(MOE_STATUS_NOMEM, "out of memory exporting");
    for (int i = a; i < b; i++) {
        e[i - a] = (moe__st_entry){o->t[i].name, bf16 ? "BF16" : "F32", o->t[i].ndim, {o->t[i].shape[0], o->t[i].shape[1]}, NULL};
    }
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    moe__st_out w;
    moe_status st = moe__st_out_open(&w, path, e, b - a, mk, mv, 1, NULL);
    for (int i = a; i < b && st == MOE_STATUS_OK; i++) {
        const out_tensor *t = &o->t[i];
        int64_t n = numel(t);
        float *f = buf;
        uint16_t *h = buf;
        const void *data = t->src; // an f32 tensor as it is, written straight from the model
        if (bf16 || !t->src || t->scale != 1.0f) {
            for (int64_t k = 0; k < n; k++) {
                float v = t->src ? t->scale * t->src[k] : 0.0f;
                if (bf16) h[k] = moe__bf16(v);
                else f[k] = v;
            }
            data = buf;
        }
        st = moe__st_out_write(&w, data, (size_t)n * (bf16 ? 2 : 4));
        if (t->src) moe__model_release(m, t->src, n);
    }
    if (st == MOE_STATUS_OK) st = moe__st_out_close(&w);
    else moe__st_out_abort(&w);
    free(e);
    return st;
}

/* model.safetensors.index.json of n shards: the total size, and each tensor's shard. */
static moe_status write_index(const out_list *o, const int *first, int n, int bf16, const char *dir) {
    cJSON *j = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(j, "metadata"), *map = cJSON_AddObjectToObject(j, "weight_map");
    double total = 0;
    char name[64];
    for (int k = 0; k < n; k++) {
        shard_name(name, sizeof name, k, n);
        for (int i = first[k]; i < first[k + 1]; i++) {
            cJSON_AddStringToObject(map, o->t[i].name, name);
            total += (double)numel(&o->t[i]) * (bf16 ? 2 : 4);
        }
    }
    cJSON_AddNumberToObject(meta, "total_size", total);
    char *txt = cJSON_Print(j), path[4200];
    cJSON_Delete(j);
    if (!txt) return moe__err(MOE_STATUS_NOMEM, "out of memory exporting");
    moe_status st = moe__pathf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    const void *parts[] = {txt};
    size_t lens[] = {strlen(txt)};
    if (st == MOE_STATUS_OK) st = moe__write_atomic(path, parts, lens, 1);
    free(txt);
    return st;
}

moe_status moe_export_hf(const moe_model *m, const char *dir, const char *family, int bf16, int64_t max_shard_bytes,
                         const char **written) {
    const moe_config *c = moe_model_config(m);
    char why[FAM_COUNT][256];
    const char *no[FAM_COUNT] = {not_mixtral(m, c, why[0], sizeof why[0]), not_qwen2_moe(m, c, why[1], sizeof why[1]),
                                 not_olmoe(m, c, why[2], sizeof why[2])};
    hf_family fam = FAM_COUNT;
    if (!family || !strcmp(family, "auto")) {
        for (int f = FAM_COUNT - 1; f >= 0; f--) // the first that maps: Mixtral, then Qwen2-MoE, then OLMoE
            if (!no[f]) fam = (hf_family)f;
        if (fam == FAM_COUNT)
            return moe__err(MOE_STATUS_CONFIG, "export: the model maps onto no Hugging Face family exactly: not Mixtral, "
                            "as %s; not Qwen2-MoE, as %s; not OLMoE, as %s", no[0], no[1], no[2]);
    } else {
        for (int f = 0; f < FAM_COUNT; f++)
            if (!strcmp(family, fam_name[f])) fam = (hf_family)f;
        if (fam == FAM_COUNT)
            return moe__err(MOE_STATUS_ARG, "export: family '%s' is not one of auto, mixtral, qwen2_moe, olmoe", family);
        if (no[fam])
            return moe__err(MOE_STATUS_CONFIG, "export: the model does not map onto %s exactly: %s", fam_title[fam], no[fam]);
    }
    int ep, ep_rank;
    moe__model_ep(m, &ep, &ep_rank);
    if (ep != 1) // the expert tensors of this rank are E/ep of them: load the checkpoint on one process
        return moe__err(MOE_STATUS_ARG, "export: the model holds 1/%d of its experts (expert parallelism); export a "
                        "checkpoint loaded on one process (moe_model_load)", ep);
    char path[4200];
    moe_status st = moe__pathf(path, sizeof path, "%s/model.safetensors", dir); // the longer name, checked first
    if (st == MOE_STATUS_OK) st = moe__pathf(path, sizeof path, "%s/config.json", dir);
    if (st != MOE_STATUS_OK) return st;
    if (moe__mkdir_p(dir) != 0)
        return moe__err(MOE_STATUS_IO, "export: cannot create '%s': %s", dir, strerror(errno));
    char *txt = config_json(m, fam, bf16);
    if (!txt) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    const void *parts[] = {txt};
    size_t lens[] = {strlen(txt)};
    st = moe__write_atomic(path, parts, lens, 1);
    free(txt);
    if (st != MOE_STATUS_OK) return st;
    out_list o = {NULL, 0, 0};
    int *first = NULL, n_shards = 0;
    void *buf = NULL;
    if ((st = collect(m, fam, &o)) != MOE_STATUS_OK) goto done;
    // shards of at most max_shard_bytes each (a tensor larger than that alone), in order
    if (max_shard_bytes <= 0) max_shard_bytes = MOE_EXPORT_SHARD_BYTES;
    int64_t largest = 1, in_shard = 0;
    if (!(first = calloc((size_t)o.n + 2, sizeof *first))) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory exporting");
        goto done;
    }
    for (int i = 0; i < o.n; i++) {
        int64_t bytes = numel(&o.t[i]) * (bf16 ? 2 : 4);
        largest = numel(&o.t[i]) > largest ? numel(&o.t[i]) : largest;
        if (i == 0 || (in_shard > 0 && in_shard + bytes > max_shard_bytes)) first[n_shards++] = i, in_shard = 0;
        in_shard += bytes;
    }
    first[n_shards] = o.n;
    if (!(buf = malloc((size_t)largest * sizeof(float)))) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory exporting (a tensor of %lld floats)", (long long)largest);
        goto done;
    }
    for (int k = 0; k < n_shards && st == MOE_STATUS_OK; k++) {
        char name[64];
        shard_name(name, sizeof name, k, n_shards);
        st = moe__pathf(path, sizeof path, "%s/%s", dir, name);
        if (st == MOE_STATUS_OK) st = write_shard(m, &o, first[k], first[k + 1], bf16, path, buf);
    }
    if (st == MOE_STATUS_OK && n_shards > 1) st = write_index(&o, first, n_shards, bf16, dir);
    // a directory exported before holds the other layout: remove it, so that loaders see one
    if (st == MOE_STATUS_OK) {
        if (n_shards > 1) st = moe__pathf(path, sizeof path, "%s/model.safetensors", dir);
        else st = moe__pathf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        if (st == MOE_STATUS_OK && unlink(path) != 0 && errno != ENOENT)
            st = moe__err(MOE_STATUS_IO, "export: cannot remove '%s': %s", path, strerror(errno));
    }
    if (st == MOE_STATUS_OK && written) *written = fam_arch[fam];
done:
    for (int i = 0; i < o.n; i++) free(o.t[i].name);
    free(o.t);
    free(first);
    free(buf);
    return st;
}
