/*
 * config.c — the configuration keys: one table (CONFIG_KEYS) gives each key's type, default,
 * range, kind (model or training) and meaning; defaults, JSON parsing, `--set`, validation
 * ranges, serialisation into checkpoints and `--help` all read it.
 */
#define _POSIX_C_SOURCE 200809L
#include "model/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

typedef enum { K_INT, K_FLOAT, K_BOOL, K_U64, K_STR, K_ENUM } key_type;
typedef enum { KIND_MODEL, KIND_TRAIN } key_kind;

static const char *const drop_names[] = {"probability", "position", NULL};
static const char *const routing_names[] = {"topk", "noisy_topk", "expert_choice", "soft", NULL};
static const char *const score_names[] = {"softmax", "sigmoid", NULL};
static const char *const fault_names[] = {"stop", "skip", NULL};

/* X(name, type, default, min, max, kind, enum names, help) */
#define CONFIG_KEYS(X)                                                                                          \
    X(vocab_size, K_INT, 256, 2, 1 << 20, KIND_MODEL, NULL, "vocabulary size V (256 for byte-level text)")           \
    X(seq_len, K_INT, 128, 1, 1 << 16, KIND_MODEL, NULL, "context length T")                                         \
    X(n_embd, K_INT, 128, 2, 1 << 16, KIND_MODEL, NULL, "channels C")                                                \
    X(n_layer, K_INT, 4, 1, 1024, KIND_MODEL, NULL, "transformer blocks L")                                          \
    X(n_head, K_INT, 4, 1, 1024, KIND_MODEL, NULL, "attention heads H (must divide n_embd; even head size)")         \
    X(ffn_hidden, K_INT, 512, 1, 1 << 20, KIND_MODEL, NULL, "hidden size of dense SwiGLU FFN layers")                \
    X(n_experts, K_INT, 8, 1, 4096, KIND_MODEL, NULL, "routed experts E per MoE layer")                              \
    X(top_k, K_INT, 2, 1, 4096, KIND_MODEL, NULL, "experts per token K (1 = Switch)")                                \
    X(expert_hidden, K_INT, 256, 1, 1 << 20, KIND_MODEL, NULL, "hidden size F of each expert (routed and shared)")   \
    X(n_shared, K_INT, 0, 0, 64, KIND_MODEL, NULL, "shared experts S, always active, added to the routed output")    \
    X(moe_layers, K_STR, 0, 0, 0, KIND_MODEL, NULL, "which layers are MoE: all, none, every:k, or a list like 0,2,3") \
    X(norm_topk, K_BOOL, 1, 0, 1, KIND_MODEL, NULL, "renormalise the K gate weights to sum to 1 (Mixtral)")          \
    X(tie_embeddings, K_BOOL, 0, 0, 1, KIND_MODEL, NULL, "lm_head shares the embedding matrix")                      \
    X(rope_theta, K_FLOAT, 10000.0, 1.0, 1e12, KIND_MODEL, NULL, "RoPE base")                                        \
    X(norm_eps, K_FLOAT, 1e-5, 1e-12, 1.0, KIND_MODEL, NULL, "RMSNorm epsilon")                                      \
    X(init_std, K_FLOAT, 0.02, 0.0, 10.0, KIND_MODEL, NULL, "std of weight initialisation")                          \
    X(router_init_std, K_FLOAT, 0.02, 0.0, 100.0, KIND_MODEL, NULL, "std of router weight initialisation")           \
    X(capacity_factor, K_FLOAT, 1.25, 0.0, 1e6, KIND_MODEL, NULL, "training capacity factor; 0 = dropless")          \
    X(eval_capacity_factor, K_FLOAT, 0.0, 0.0, 1e6, KIND_MODEL, NULL,                                                 \
      "capacity factor for eval and sampling; 0 = dropless")                                                    \
    X(min_capacity, K_INT, 4, 0, INT_MAX, KIND_MODEL, NULL, "lower bound of the per-expert capacity")                 \
    X(drop_policy, K_ENUM, 0, 0, 1, KIND_MODEL, drop_names,                                                                 \
      "which assignments an expert over capacity drops: probability (lowest first) or position (latest)")       \
    X(expert_counts, K_STR, 0, 0, 0, KIND_MODEL, NULL,                                                          \
      "experts per MoE layer, one count per MoE layer (PR-MoE pyramid, e.g. 8,8,16,16); empty = n_experts")    \
    X(routing, K_ENUM, 0, 0, 3, KIND_MODEL, routing_names,                                                      \
      "topk (token choice), noisy_topk (Shazeer 2017), expert_choice (Zhou 2022; not causal: token choice "    \
      "at eval and sampling), soft (every expert, softmax weights)")                                            \
    X(router_score, K_ENUM, 0, 0, 1, KIND_MODEL, score_names, "router scores: softmax or sigmoid (DeepSeek-V3)") \
    X(route_scale, K_FLOAT, 1.0, 1e-6, 1e6, KIND_MODEL, NULL, "multiplier of routed gate weights (DeepSeek-V3)") \
    X(jitter_eps, K_FLOAT, 0.0, 0.0, 1.0, KIND_MODEL, NULL, "Switch router input jitter U(1-eps,1+eps); 0 = off") \
    X(random_routing, K_BOOL, 0, 0, 1, KIND_MODEL, NULL, "GShard: keep the 2nd expert with probability 2*g2 (top_k=2)") \
    X(bias_update_rate, K_FLOAT, 0.0, 0.0, 1.0, KIND_MODEL, NULL,                                               \
      "DeepSeek-V3 aux-loss-free balancing: per-expert selection bias, b += rate*sign(mean-load); 0 = off")     \
    X(aux_loss_coef, K_FLOAT, 0.01, 0.0, 1e6, KIND_MODEL, NULL, "Switch load-balancing loss coefficient")           \
    X(z_loss_coef, K_FLOAT, 0.001, 0.0, 1e6, KIND_MODEL, NULL, "router z-loss coefficient")                          \
    X(seq_aux_loss_coef, K_FLOAT, 0.0, 0.0, 1e6, KIND_MODEL, NULL, "DeepSeek-V3 sequence-wise balance loss coefficient") \
    X(importance_loss_coef, K_FLOAT, 0.0, 0.0, 1e6, KIND_MODEL, NULL, "Shazeer importance loss CV(importance)^2 (noisy_topk)") \
    X(load_loss_coef, K_FLOAT, 0.0, 0.0, 1e6, KIND_MODEL, NULL, "Shazeer smooth load loss CV(load)^2 (noisy_topk)") \
    X(batch_size, K_INT, 16, 1, 1 << 20, KIND_TRAIN, NULL, "sequences per micro-batch B")                            \
    X(grad_accum, K_INT, 1, 1, 1 << 20, KIND_TRAIN, NULL, "micro-batches per optimizer step")                        \
    X(steps, K_INT, 300, 0, INT_MAX, KIND_TRAIN, NULL, "optimizer steps to train (total, counting resumed ones)")    \
    X(warmup_steps, K_INT, 30, 0, INT_MAX, KIND_TRAIN, NULL, "linear warmup steps")                                   \
    X(lr, K_FLOAT, 3e-3, 0.0, 10.0, KIND_TRAIN, NULL, "peak learning rate")                                          \
    X(min_lr_frac, K_FLOAT, 0.1, 0.0, 1.0, KIND_TRAIN, NULL, "cosine decay floor as a fraction of lr")               \
    X(weight_decay, K_FLOAT, 0.1, 0.0, 10.0, KIND_TRAIN, NULL, "AdamW decoupled weight decay (not on norms)")        \
    X(beta1, K_FLOAT, 0.9, 0.0, 0.999999, KIND_TRAIN, NULL, "AdamW beta1")                                           \
    X(beta2, K_FLOAT, 0.95, 0.0, 0.999999, KIND_TRAIN, NULL, "AdamW beta2")                                          \
    X(adam_eps, K_FLOAT, 1e-8, 0.0, 1.0, KIND_TRAIN, NULL, "AdamW epsilon")                                          \
    X(grad_clip, K_FLOAT, 1.0, 0.0, 1e6, KIND_TRAIN, NULL, "global gradient-norm clip; 0 = off")                     \
    X(expert_lr_mult, K_FLOAT, 1.0, 0.0, 1e3, KIND_TRAIN, NULL, "learning-rate multiplier of routed experts")       \
    X(router_lr_mult, K_FLOAT, 1.0, 0.0, 1e3, KIND_TRAIN, NULL, "learning-rate multiplier of routers")              \
    X(eval_every, K_INT, 100, 0, INT_MAX, KIND_TRAIN, NULL, "steps between evaluations; 0 = only at the end")       \
    X(eval_batches, K_INT, 8, 1, INT_MAX, KIND_TRAIN, NULL, "validation batches per evaluation")                    \
    X(ckpt_every, K_INT, 0, 0, INT_MAX, KIND_TRAIN, NULL, "steps between checkpoints; 0 = only at the end")         \
    X(log_every, K_INT, 10, 1, INT_MAX, KIND_TRAIN, NULL, "steps between progress lines")                            \
    X(nonfinite_policy, K_ENUM, 0, 0, 1, KIND_TRAIN, fault_names,                                                \
      "a step whose loss or gradients are NaN/Inf (or a loss spike): stop (save the last good checkpoint, exit) " \
      "or skip (drop its update, go on)")                                                                       \
    X(max_skipped_steps, K_INT, 10, 1, INT_MAX, KIND_TRAIN, NULL,                                               \
      "with nonfinite_policy=skip: stop (after saving) when this many steps in a row were skipped")           \
    X(loss_spike_factor, K_FLOAT, 0.0, 0.0, 1e6, KIND_TRAIN, NULL,                                              \
      "loss spike guard: a step whose loss exceeds this times the running mean (EMA 0.99, after 20 steps) "      \
      "is handled like a NaN; 0 = off")                                                                          \
    X(keep_checkpoints, K_INT, 0, 0, 100000, KIND_TRAIN, NULL,                                                      \
      "also keep the last N checkpoints as DIR/checkpoints/step-SSSSSSSS (hard links); 0 = only the latest")    \
    X(val_frac, K_FLOAT, 0.1, 0.0, 0.9, KIND_TRAIN, NULL, "held-out fraction when no validation file is given")     \
    X(seed, K_U64, 1337, 0, 0, KIND_TRAIN, NULL, "random seed (initialisation, data order)")                         \
    X(threads, K_INT, 0, 0, 4096, KIND_TRAIN, NULL, "OpenMP threads; 0 = the OpenMP default")                      \
    X(recompute, K_BOOL, 0, 0, 1, KIND_TRAIN, NULL,                                                                  \
      "activation recompute: keep each block's input only, redo its forward in backward (less memory, ~1/3 more compute)") \
    X(tensorboard, K_BOOL, 1, 0, 1, KIND_TRAIN, NULL,                                                                  \
      "write TensorBoard event files (losses, lr, grad norm, per-layer MaxVio, drops and per-expert loads) to the run directory")

typedef struct {
    const char *name;
    key_type type;
    double def, min, max;
    key_kind kind;
    const char *const *names;
    const char *help;
    size_t offset;
} key_desc;

static const key_desc keys[] = {
#define X(name, type, def, min, max, kind, names, help) {#name, type, def, min, max, kind, names, help, offsetof(moe_config, name)},
    CONFIG_KEYS(X)
#undef X
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

static const key_desc *find_key(const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

moe_config moe_config_default(void) {
    moe_config c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < N_KEYS; i++) {
        void *p = (char *)&c + keys[i].offset;
        switch (keys[i].type) {
        case K_INT:
        case K_BOOL: *(int *)p = (int)keys[i].def; break;
        case K_FLOAT: *(float *)p = (float)keys[i].def; break;
        case K_U64: *(uint64_t *)p = (uint64_t)keys[i].def; break;
        case K_ENUM: *(int *)p = (int)keys[i].def; break;
        case K_STR: break;
        }
    }
    strcpy(c.moe_layers, "all");
    return c;
}

static moe_status set_value(moe_config *c, const key_desc *k, const char *v, const char *origin) {
    void *p = (char *)c + k->offset;
    char *end = NULL;
    errno = 0;
    switch (k->type) {
    case K_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' needs an integer, got '%s'", origin, k->name, v);
        if (x < (long)k->min || x > (long)k->max)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' = %ld is out of range [%ld, %ld]", origin, k->name, x,
                            (long)k->min, (long)k->max);
        *(int *)p = (int)x;
        break;
    }
    case K_BOOL:
        if (!strcmp(v, "1") || !strcmp(v, "true")) *(int *)p = 1;
        else if (!strcmp(v, "0") || !strcmp(v, "false")) *(int *)p = 0;
        else return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' needs true/false, got '%s'", origin, k->name, v);
        break;
    case K_FLOAT: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' needs a number, got '%s'", origin, k->name, v);
        if (x < k->min || x > k->max)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' = %g is out of range [%g, %g]", origin, k->name, x,
                            k->min, k->max);
        *(float *)p = (float)x;
        break;
    }
    case K_U64: {
        if (*v == '-') return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' must not be negative, got '%s'", origin, k->name, v);
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || errno)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' needs an unsigned integer, got '%s'", origin, k->name, v);
        *(uint64_t *)p = (uint64_t)x;
        break;
    }
    case K_ENUM: {
        char allowed[160] = "";
        for (int i = 0; k->names[i]; i++) {
            if (!strcmp(v, k->names[i])) {
                *(int *)p = i;
                return MOE_STATUS_OK;
            }
            size_t used = strlen(allowed);
            snprintf(allowed + used, sizeof allowed - used, "%s'%s'", i ? ", " : "", k->names[i]);
        }
        return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' must be one of %s, got '%s'", origin, k->name, allowed, v);
    }
    case K_STR:
        if (strlen(v) >= sizeof c->moe_layers)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' is too long", origin, k->name);
        strcpy((char *)p, v);
        break;
    }
    return MOE_STATUS_OK;
}

moe_status moe_config_set(moe_config *c, const char *key, const char *value) {
    const key_desc *k = find_key(key);
    if (!k) return moe__err(MOE_STATUS_CONFIG, "--set: unknown config key '%s' (see moe train --help)", key);
    return set_value(c, k, value, "--set");
}

moe_status moe_config_apply_json(moe_config *c, const char *json, const char *origin) {
    return moe__config_apply_json(c, json, origin, 1);
}

moe_status moe_config_apply_file(moe_config *c, const char *path) {
    moe_status st;
    char *txt = moe__read_text(path, "config", &st);
    if (!txt) return st;
    st = moe_config_apply_json(c, txt, path);
    free(txt);
    return st;
}

moe_status moe__config_apply_json(moe_config *c, const char *json, const char *origin, int exact_u64) {
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        return moe__err(MOE_STATUS_CONFIG, "%s: malformed JSON near '%.20s'", origin, at ? at : "?");
    }
    moe_status st = MOE_STATUS_OK;
    if (!cJSON_IsObject(root)) {
        st = moe__err(MOE_STATUS_CONFIG, "%s: a config must be a JSON object", origin);
        goto done;
    }
    for (cJSON *it = root->child; it && st == MOE_STATUS_OK; it = it->next) {
        const key_desc *k = find_key(it->string);
        if (!k) {
            st = moe__err(MOE_STATUS_CONFIG, "%s: unknown config key '%s'", origin, it->string);
            break;
        }
        char buf[160];
        if (cJSON_IsString(it)) {
            if (strlen(it->valuestring) >= sizeof buf) {
                st = moe__err(MOE_STATUS_CONFIG, "%s: key '%s' has a value of %zu characters (at most %zu)", origin,
                              k->name, strlen(it->valuestring), sizeof buf - 1);
                break;
            }
            snprintf(buf, sizeof buf, "%s", it->valuestring);
        } else if (cJSON_IsBool(it)) {
            snprintf(buf, sizeof buf, "%s", cJSON_IsTrue(it) ? "true" : "false");
        } else if (cJSON_IsNumber(it)) {
            if (k->type == K_INT || k->type == K_U64) {
                if (it->valuedouble != floor(it->valuedouble)) {
                    st = moe__err(MOE_STATUS_CONFIG, "%s: key '%s' needs an integer, got %g", origin, k->name,
                                  it->valuedouble);
                    break;
                }
                if (k->type == K_U64 && exact_u64 && fabs(it->valuedouble) >= 9007199254740992.0) {
                    // a JSON number is a double here: above 2^53 it may not be the one written
                    st = moe__err(MOE_STATUS_CONFIG, "%s: key '%s' = %.0f is beyond 2^53, where a JSON number is not exact; write it as a string",
                                  origin, k->name, it->valuedouble);
                    break;
                }
                snprintf(buf, sizeof buf, "%.0f", it->valuedouble);
            } else {
                snprintf(buf, sizeof buf, "%.17g", it->valuedouble);
            }
        } else {
            st = moe__err(MOE_STATUS_CONFIG, "%s: key '%s' has a value of the wrong type", origin, it->string);
            break;
        }
        st = set_value(c, k, buf, origin);
    }
done:
    cJSON_Delete(root);
    return st;
}

char *moe_config_to_json(const moe_config *c) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (int i = 0; i < N_KEYS; i++) {
        const void *p = (const char *)c + keys[i].offset;
        char buf[64];
        switch (keys[i].type) {
        case K_INT: cJSON_AddNumberToObject(o, keys[i].name, *(const int *)p); break;
        case K_BOOL: cJSON_AddBoolToObject(o, keys[i].name, *(const int *)p); break;
        case K_FLOAT:
            // shortest text that reads back as the same float
            snprintf(buf, sizeof buf, "%.9g", (double)*(const float *)p);
            cJSON_AddRawToObject(o, keys[i].name, buf);
            break;
        case K_U64:
            // as a number while a double holds it exactly, else as a string (read back exactly)
            snprintf(buf, sizeof buf, "%llu", (unsigned long long)*(const uint64_t *)p);
            if (*(const uint64_t *)p < (1ull << 53)) cJSON_AddRawToObject(o, keys[i].name, buf);
            else cJSON_AddStringToObject(o, keys[i].name, buf);
            break;
        case K_ENUM: cJSON_AddStringToObject(o, keys[i].name, keys[i].names[*(const int *)p]); break;
        case K_STR: cJSON_AddStringToObject(o, keys[i].name, (const char *)p); break;
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void moe_config_help(FILE *f) {
    moe_config d = moe_config_default();
    fprintf(f, "Config keys (JSON file via --config, or --set key=value):\n");
    for (int i = 0; i < N_KEYS; i++) {
        const void *p = (const char *)&d + keys[i].offset;
        char def[64];
        switch (keys[i].type) {
        case K_INT: snprintf(def, sizeof def, "%d", *(const int *)p); break;
        case K_BOOL: snprintf(def, sizeof def, "%s", *(const int *)p ? "true" : "false"); break;
        case K_FLOAT: snprintf(def, sizeof def, "%g", (double)*(const float *)p); break;
        case K_U64: snprintf(def, sizeof def, "%llu", (unsigned long long)*(const uint64_t *)p); break;
        case K_ENUM: snprintf(def, sizeof def, "%s", keys[i].names[*(const int *)p]); break;
        case K_STR: snprintf(def, sizeof def, "%s", (const char *)p); break;
        }
        fprintf(f, "  %-22s %-12s %s%s\n", keys[i].name, def, keys[i].help,
                keys[i].kind == KIND_MODEL ? "" : " [training]");
    }
}

/* Parses moe_layers into mask[0..L); returns 0 on a malformed spec. */
static int parse_layers(const char *spec, int L, unsigned char *mask) {
    memset(mask, 0, (size_t)L);
    if (!strcmp(spec, "all")) {
        memset(mask, 1, (size_t)L);
        return 1;
    }
    if (!strcmp(spec, "none")) return 1;
    if (!strncmp(spec, "every:", 6)) {
        char *end;
        long k = strtol(spec + 6, &end, 10);
        if (*end || k < 1) return 0;
        for (int l = 0; l < L; l++) mask[l] = (l + 1) % k == 0;
        return 1;
    }
    const char *s = spec;
    while (*s) {
        char *end;
        long l = strtol(s, &end, 10);
        if (end == s || l < 0 || l >= L) return 0;
        mask[l] = 1;
        s = end;
        if (*s == ',') s++;
        else if (*s) return 0;
    }
    return 1;
}

int moe_config_layer_experts(const moe_config *c, int l) {
    if (!c->expert_counts[0]) return c->n_experts;
    int idx = 0; // index of layer l among the MoE layers
    for (int j = 0; j < l; j++) idx += moe_config_layer_is_moe(c, j);
    const char *p = c->expert_counts;
    for (int i = 0; i < idx && p; i++) {
        p = strchr(p, ',');
        if (p) p++;
    }
    return p ? atoi(p) : c->n_experts;
}

int moe_config_layer_is_moe(const moe_config *c, int l) {
    unsigned char mask[1024];
    if (c->n_layer > 1024 || !parse_layers(c->moe_layers, c->n_layer, mask)) return 0;
    return mask[l];
}

moe_status moe_config_validate(const moe_config *c) {
    for (int i = 0; i < N_KEYS; i++) {
        const void *p = (const char *)c + keys[i].offset;
        double v;
        switch (keys[i].type) {
        case K_INT:
        case K_BOOL: v = *(const int *)p; break;
        case K_FLOAT: v = *(const float *)p; break;
        case K_ENUM: v = *(const int *)p; break;
        default: continue;
        }
        if (!(v >= keys[i].min && v <= keys[i].max))
            return moe__err(MOE_STATUS_CONFIG, "config: '%s' = %g is out of range [%g, %g]", keys[i].name, v,
                            keys[i].min, keys[i].max);
    }
    if (c->n_embd % c->n_head != 0)
        return moe__err(MOE_STATUS_CONFIG, "config: n_head = %d does not divide n_embd = %d", c->n_head, c->n_embd);
    if ((c->n_embd / c->n_head) % 2 != 0)
        return moe__err(MOE_STATUS_CONFIG, "config: head size n_embd/n_head = %d must be even for RoPE",
                        c->n_embd / c->n_head);
    if (c->top_k > c->n_experts)
        return moe__err(MOE_STATUS_CONFIG, "config: top_k = %d exceeds n_experts = %d", c->top_k, c->n_experts);
    unsigned char mask[1024];
    if (!parse_layers(c->moe_layers, c->n_layer, mask))
        return moe__err(MOE_STATUS_CONFIG,
                        "config: moe_layers = '%s' is not 'all', 'none', 'every:k' or a list of layers in [0, %d)",
                        c->moe_layers, c->n_layer);
    int n_moe = 0;
    for (int l = 0; l < c->n_layer; l++) n_moe += mask[l];
    if (c->expert_counts[0]) {
        const char *p = c->expert_counts;
        int i = 0;
        while (*p) {
            char *end;
            long e = strtol(p, &end, 10);
            if (end == p || e < 1 || e > 4096 || (*end && *end != ','))
                return moe__err(MOE_STATUS_CONFIG, "config: expert_counts = '%s' is not a list of counts in [1, 4096]",
                                c->expert_counts);
            if (e < c->top_k)
                return moe__err(MOE_STATUS_CONFIG, "config: expert_counts entry %d = %ld is below top_k = %d", i, e,
                                c->top_k);
            i++;
            p = *end ? end + 1 : end;
        }
        if (i != n_moe)
            return moe__err(MOE_STATUS_CONFIG, "config: expert_counts = '%s' has %d entries but there are %d MoE layers",
                            c->expert_counts, i, n_moe);
    }
    for (int l = 0; l < c->n_layer; l++) {
        if (!mask[l]) continue;
        int E = moe_config_layer_experts(c, l);
        if (c->routing == MOE_ROUTING_NOISY_TOPK && c->top_k >= E)
            return moe__err(MOE_STATUS_CONFIG, "config: noisy_topk needs top_k < n_experts (layer %d has %d experts)", l, E);
    }
    if (c->random_routing && (c->top_k != 2 || c->routing != MOE_ROUTING_TOPK))
        return moe__err(MOE_STATUS_CONFIG, "config: random_routing needs routing = topk and top_k = 2");
    if (c->bias_update_rate > 0.0f && c->routing != MOE_ROUTING_TOPK)
        return moe__err(MOE_STATUS_CONFIG, "config: bias_update_rate (aux-loss-free balancing) needs routing = topk");
    if (c->router_score == MOE_SCORE_SIGMOID && c->routing == MOE_ROUTING_NOISY_TOPK)
        return moe__err(MOE_STATUS_CONFIG, "config: noisy_topk gates are a softmax over the selected; router_score must be softmax");
    if ((c->importance_loss_coef > 0.0f || c->load_loss_coef > 0.0f) && c->routing != MOE_ROUTING_NOISY_TOPK)
        return moe__err(MOE_STATUS_CONFIG, "config: importance_loss_coef and load_loss_coef need routing = noisy_topk");
    if (c->warmup_steps > 0 && c->lr <= 0)
        return moe__err(MOE_STATUS_CONFIG, "config: lr must be positive");
    return MOE_STATUS_OK;
}

void moe_config_take_training(moe_config *dst, const moe_config *src) {
    for (int i = 0; i < N_KEYS; i++) {
        if (keys[i].kind != KIND_TRAIN) continue;
        size_t sz = keys[i].type == K_U64     ? sizeof(uint64_t)
                    : keys[i].type == K_FLOAT ? sizeof(float)
                    : keys[i].type == K_STR   ? sizeof dst->moe_layers
                                              : sizeof(int);
        memcpy((char *)dst + keys[i].offset, (const char *)src + keys[i].offset, sz);
    }
}
