/*
 * hf.c — Hugging Face export: a model that maps exactly onto MixtralForCausalLM becomes
 * HFDIR/config.json + HFDIR/model.safetensors (HF key names, experts split per expert, F32 or
 * BF16). "Exactly" means the logits of transformers' Mixtral equal ours at inference (eval
 * routing: dropless, no noise): every layer MoE, softmax top-K renormalised, no shared experts,
 * one expert count, no gate scale and no selection bias. A model that does not map gets an error
 * naming the first reason.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

/* Why c does not map onto Mixtral, or NULL when it does. */
static const char *not_mixtral(const moe_model *m, const moe_config *c, char *why, size_t n) {
    if (moe_model_n_moe_layers(m) != c->n_layer)
        return snprintf(why, n, "only %d of %d layers are MoE (Mixtral has no dense layers)", moe_model_n_moe_layers(m),
                        c->n_layer), why;
    if (c->n_shared > 0) return snprintf(why, n, "it has %d shared experts (Mixtral has none)", c->n_shared), why;
    for (int l = 0; l < c->n_layer; l++)
        if (moe_config_layer_experts(c, l) != c->n_experts)
            return snprintf(why, n, "its layers have different expert counts (%s)", c->expert_counts), why;
    if (c->routing != MOE_ROUTING_TOPK && c->routing != MOE_ROUTING_NOISY_TOPK)
        return snprintf(why, n, "its routing is not token-choice top-K"), why;
    if (c->router_score != MOE_SCORE_SOFTMAX) return snprintf(why, n, "its router scores are sigmoid, not softmax"), why;
    if (!c->norm_topk)
        return snprintf(why, n, "its top-K weights are not renormalised (that is OLMoE/Qwen-MoE style, not Mixtral)"), why;
    if (c->route_scale != 1.0f) return snprintf(why, n, "its gate weights are scaled by %g", c->route_scale), why;
    if (c->eval_capacity_factor > 0.0f)
        return snprintf(why, n, "it drops tokens at inference (eval_capacity_factor %g; Mixtral is dropless)",
                        c->eval_capacity_factor), why;
    for (int i = 0; i < moe_model_n_moe_layers(m); i++) {
        const moe_layer_stats *s = moe_model_layer_stats(m, i);
        for (int e = 0; s->bias && e < s->n_experts; e++)
            if (s->bias[e] != 0.0f)
                return snprintf(why, n, "layer %d has an expert-selection bias (aux-loss-free balancing)", s->layer), why;
    }
    return NULL;
}

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
    return (uint16_t)(u >> 16);
}

moe_status moe_export_hf(const moe_model *m, const char *dir, int bf16) {
    const moe_config *c = moe_model_config(m);
    char why[256];
    if (not_mixtral(m, c, why, sizeof why))
        return moe__err(MOE_STATUS_CONFIG, "export: the model maps onto no Hugging Face family exactly: %s", why);
    int ep, ep_rank;
    moe__model_ep(m, &ep, &ep_rank);
    MOE_ASSERT(ep == 1);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return moe__err(MOE_STATUS_IO, "export: cannot create '%s': %s", dir, strerror(errno));
    // config.json
    cJSON *j = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(arch, cJSON_CreateString("MixtralForCausalLM"));
    cJSON_AddStringToObject(j, "model_type", "mixtral");
    const struct {
        const char *key;
        double value;
    } nums[] = {{"vocab_size", c->vocab_size},          {"hidden_size", c->n_embd},
                {"intermediate_size", c->expert_hidden}, {"num_hidden_layers", c->n_layer},
                {"num_attention_heads", c->n_head},      {"num_key_value_heads", c->n_head},
                {"max_position_embeddings", c->seq_len}, {"rms_norm_eps", c->norm_eps},
                {"rope_theta", c->rope_theta},           {"num_local_experts", c->n_experts},
                {"num_experts_per_tok", c->top_k},       {"attention_dropout", 0.0},
                {"router_aux_loss_coef", c->aux_loss_coef}, {"initializer_range", c->init_std}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) cJSON_AddNumberToObject(j, nums[i].key, nums[i].value);
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tie_embeddings);
    cJSON_AddStringToObject(j, "hidden_act", "silu");
    cJSON_AddNullToObject(j, "sliding_window");
    cJSON_AddStringToObject(j, "torch_dtype", bf16 ? "bfloat16" : "float32");
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    const void *parts[] = {txt};
    size_t lens[] = {strlen(txt)};
    moe_status st = moe__write_atomic(path, parts, lens, 1);
    free(txt);
    if (st != MOE_STATUS_OK) return st;
    // tensors: stacked experts split per expert; the selection-bias buffer (zero) is dropped
    int n = moe_model_n_tensors(m), k = 0, cap = 0;
    for (int i = 0; i < n; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        cap += t->group == MOE_GROUP_EXPERT ? (int)t->shape[0] : 1;
    }
    moe__st_entry *e = calloc((size_t)cap, sizeof *e);
    char **names = calloc((size_t)cap, sizeof *names);
    int64_t total = moe_model_n_params(m);
    uint16_t *half = bf16 ? malloc((size_t)total * sizeof(uint16_t)) : NULL;
    if (!e || !names || (bf16 && !half)) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory exporting");
        goto done;
    }
    const float *params = moe_model_params((moe_model *)m);
    for (int64_t i = 0; bf16 && i < total; i++) half[i] = to_bf16(params[i]);
    for (int i = 0; i < n; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        if (t->group == MOE_GROUP_BUFFER) continue;
        int experts = t->group == MOE_GROUP_EXPERT ? (int)t->shape[0] : 0;
        for (int x = 0; x < (experts ? experts : 1); x++) {
            int64_t per = experts ? t->numel / experts : t->numel, off = t->offset + (int64_t)x * per;
            if (experts) { // model.layers.L.block_sparse_moe.experts.wN.weight -> ...experts.X.wN.weight
                const char *w = strstr(t->name, "experts.") + strlen("experts.");
                size_t len = strlen(t->name) + 16;
                names[k] = malloc(len);
                if (names[k])
                    snprintf(names[k], len, "%.*s%d.%s", (int)(w - t->name), t->name, x, w);
            } else {
                names[k] = strdup(t->name);
            }
            if (!names[k]) {
                st = moe__err(MOE_STATUS_NOMEM, "out of memory exporting");
                goto done;
            }
            e[k].name = names[k];
            e[k].dtype = bf16 ? "BF16" : "F32";
            e[k].ndim = experts ? t->ndim - 1 : t->ndim;
            for (int d = 0; d < e[k].ndim; d++) e[k].shape[d] = t->shape[d + (experts ? 1 : 0)];
            e[k].data = bf16 ? (const void *)(half + off) : (const void *)(params + off);
            k++;
        }
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    const char *mk[] = {"format"}, *mv[] = {"pt"};
    st = moe__st_write(path, e, k, mk, mv, 1);
done:
    for (int i = 0; names && i < k; i++) free(names[i]);
    free(names);
    free(e);
    free(half);
    return st;
}
