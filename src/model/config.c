/*
 * config.c — the configuration keys. Their one list, MOE_CONFIG_KEYS in moe.h, gives each key's
 * field, type, default, range, kind (model or training) and meaning; from it this file builds a
 * table of key descriptors (field offsets, spellings of enum values), which JSON parsing, `--set`,
 * validation ranges, serialisation into checkpoints and `--help` read, and the defaults.
 */
#define _POSIX_C_SOURCE 200809L
#include "model/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

typedef enum { K_INT, K_FLOAT, K_BOOL, K_U64, K_STR, K_ENUM } key_type;
typedef enum { KIND_MODEL, KIND_TRAINING } key_kind;

typedef struct {
    const char *name;
    key_type type;
    const char *const *names; // K_ENUM: the spellings of its values, NULL-terminated; else NULL
    double min, max;
    key_kind kind;
    const char *help;
    size_t offset, size; // of the field in moe_config
} key_desc;

/* The type column of MOE_CONFIG_KEYS as a key_desc's type and names. */
#define TYPE_INT K_INT, NULL
#define TYPE_FLOAT K_FLOAT, NULL
#define TYPE_BOOL K_BOOL, NULL
#define TYPE_U64 K_U64, NULL
#define TYPE_STR K_STR, NULL
#define TYPE_ENUM(ctype, values) K_ENUM, (const char *const[]){values(SPELLING) NULL}
#define SPELLING(constant, spelling) spelling,

static const key_desc keys[] = {
#define X(name, type, def, min, max, kind, help) \
    {#name, TYPE_##type, min, max, KIND_##kind, help, offsetof(moe_config, name), sizeof(((moe_config *)0)->name)},
    MOE_CONFIG_KEYS(X)
#undef X
};
#define N_KEYS ((int)(sizeof keys / sizeof keys[0]))

static const key_desc *find_key(const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* Edit distance (insertions, deletions, substitutions) of two short names. */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b), row[64];
    if (la > 63 || lb > 63) return 1 << 20;
    for (int j = 0; j <= lb; j++) row[j] = j;
    for (int i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = i;
        for (int j = 1; j <= lb; j++) {
            int up = row[j], best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            diag = up;
            row[j] = best;
        }
    }
    return row[lb];
}

/* " (did you mean 'K'?)" for the key closest to an unknown name, when close enough to be a slip
 * or a synonym (at most half the longer name changed); else "". */
static const char *did_you_mean(const char *name, char *buf, size_t n) {
    int best = -1, bd = 1 << 20;
    for (int i = 0; i < N_KEYS; i++) {
        int d = edit_distance(name, keys[i].name);
        if (d < bd) bd = d, best = i;
    }
    size_t la = strlen(name), lb = best >= 0 ? strlen(keys[best].name) : 0;
    if (best < 0 || 2 * (size_t)bd > (la > lb ? la : lb)) return "";
    snprintf(buf, n, " (did you mean '%s'?)", keys[best].name);
    return buf;
}

moe_config moe_config_default(void) {
    static const moe_config defaults = {
#define X(name, type, def, min, max, kind, help) .name = def,
        MOE_CONFIG_KEYS(X)
#undef X
    };
    return defaults;
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
        if (strlen(v) >= k->size)
            return moe__err(MOE_STATUS_CONFIG, "%s: key '%s' is too long", origin, k->name);
        strcpy((char *)p, v);
        break;
    }
    return MOE_STATUS_OK;
}

moe_status moe_config_set(moe_config *c, const char *key, const char *value) {
    const key_desc *k = find_key(key);
    char hint[96];
    if (!k)
        return moe__err(MOE_STATUS_CONFIG, "--set: unknown config key '%s'%s (see moe train --help)", key,
                        did_you_mean(key, hint, sizeof hint));
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
            char hint[96];
            st = moe__err(MOE_STATUS_CONFIG, "%s: unknown config key '%s'%s", origin, it->string,
                          did_you_mean(it->string, hint, sizeof hint));
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
    if (!o) {
        moe__err(MOE_STATUS_NOMEM, "out of memory (config as JSON)");
        return NULL;
    }
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
    while (*s) { // a list of layers and ranges a-b
        char *end;
        long l = strtol(s, &end, 10), hi = l;
        if (end == s || l < 0 || l >= L) return 0;
        if (*end == '-') {
            const char *h = end + 1;
            hi = strtol(h, &end, 10);
            if (end == h || hi < l || hi >= L) return 0;
        }
        for (long i = l; i <= hi; i++) mask[i] = 1;
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
    if (c->n_kv_head && c->n_head % c->n_kv_head != 0)
        return moe__err(MOE_STATUS_CONFIG, "config: n_kv_head = %d does not divide n_head = %d", c->n_kv_head, c->n_head);
    if (c->shared_hidden && !c->n_shared)
        return moe__err(MOE_STATUS_CONFIG, "config: shared_hidden = %d needs shared experts (n_shared >= 1)", c->shared_hidden);
    if (c->shared_gate && !c->n_shared)
        return moe__err(MOE_STATUS_CONFIG, "config: shared_gate needs shared experts (n_shared >= 1)");
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
    if (c->n_group > 1) {
        if (c->routing != MOE_ROUTING_TOPK)
            return moe__err(MOE_STATUS_CONFIG, "config: n_group (group-limited routing) needs routing = topk");
        if (c->topk_group < 1 || c->topk_group > c->n_group)
            return moe__err(MOE_STATUS_CONFIG, "config: topk_group = %d must be in [1, n_group = %d]", c->topk_group,
                            c->n_group);
        for (int l = 0; l < c->n_layer; l++) {
            if (!mask[l]) continue;
            int E = moe_config_layer_experts(c, l);
            if (E % c->n_group)
                return moe__err(MOE_STATUS_CONFIG, "config: n_group = %d does not divide layer %d's %d experts", c->n_group,
                                l, E);
            if (c->top_k > c->topk_group * (E / c->n_group))
                return moe__err(MOE_STATUS_CONFIG, "config: top_k = %d exceeds the %d experts of topk_group = %d groups of "
                                "%d (layer %d)", c->top_k, c->topk_group * (E / c->n_group), c->topk_group,
                                E / c->n_group, l);
        }
    } else if (c->topk_group > 1) { // n_group 0 or 1 (DeepSeek-V2-Lite's 1 of 1): no groups
        return moe__err(MOE_STATUS_CONFIG, "config: topk_group = %d needs n_group >= %d", c->topk_group, c->topk_group);
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

/* A key's value as text (its config JSON spelling). */
static void format_value(const key_desc *k, const moe_config *c, char *buf, size_t n) {
    const void *p = (const char *)c + k->offset;
    switch (k->type) {
    case K_INT: snprintf(buf, n, "%d", *(const int *)p); break;
    case K_BOOL: snprintf(buf, n, "%s", *(const int *)p ? "true" : "false"); break;
    case K_FLOAT: snprintf(buf, n, "%.9g", (double)*(const float *)p); break;
    case K_U64: snprintf(buf, n, "%llu", (unsigned long long)*(const uint64_t *)p); break;
    case K_ENUM: snprintf(buf, n, "%s", k->names[*(const int *)p]); break;
    case K_STR: snprintf(buf, n, "'%s'", (const char *)p); break;
    }
}

moe_status moe_config_check_model(const moe_config *run, const moe_config *c) {
    for (int i = 0; i < N_KEYS; i++) {
        const key_desc *k = &keys[i];
        if (k->kind != KIND_MODEL) continue;
        const char *a = (const char *)run + k->offset, *b = (const char *)c + k->offset;
        if (k->type == K_STR ? !strcmp(a, b) : !memcmp(a, b, k->size)) continue;
        char va[300], vb[300];
        format_value(k, c, vb, sizeof vb);
        format_value(k, run, va, sizeof va);
        return moe__err(MOE_STATUS_MISMATCH, "model key '%s' = %s contradicts the run's %s (model keys are fixed once a run exists)",
                        k->name, vb, va);
    }
    return MOE_STATUS_OK;
}

void moe_config_take_training(moe_config *dst, const moe_config *src) {
    for (int i = 0; i < N_KEYS; i++) {
        if (keys[i].kind == KIND_TRAINING)
            memcpy((char *)dst + keys[i].offset, (const char *)src + keys[i].offset, keys[i].size);
    }
}
