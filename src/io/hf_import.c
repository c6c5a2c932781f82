/*
 * hf_import.c — reads Hugging Face checkpoints: DIR/config.json with DIR/model.safetensors, or
 * with the shards that DIR/model.safetensors.index.json lists; tensors in F32, BF16 or F16.
 * MixtralForCausalLM maps onto an all-MoE model; LlamaForCausalLM and MistralForCausalLM onto a
 * dense one (the start of sparse upcycling). The HF tensors are turned into this model's table
 * in memory (per-expert tensors stacked, grouped-query K/V heads repeated to one per query head,
 * which is what transformers' repeat_kv computes) and loaded through the checkpoint loader, so
 * names, shapes and expert-parallel slicing are checked in one place.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"
#include "model/model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#define HF_MAX_SEQ 4096 /* default context planned for an imported model (--set seq_len to change) */

typedef struct {
    moe_config c;
    int kv_heads;
    int moe;        /* Mixtral */
} hf_info;

static int file_exists(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

/* A number field of config.json: required (def NAN) or with a default; integer when integral. */
static moe_status num_field(const cJSON *j, const char *path, const char *key, double def, int integral, double *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    if (!it || cJSON_IsNull(it)) {
        if (isnan(def)) return moe__err(MOE_STATUS_FORMAT, "'%s': field '%s' is missing", path, key);
        *out = def;
        return MOE_STATUS_OK;
    }
    if (!cJSON_IsNumber(it) || (integral && (it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
                                             it->valuedouble > 1e9)))
        return moe__err(MOE_STATUS_FORMAT, "'%s': field '%s' must be %s", path, key,
                        integral ? "a non-negative integer" : "a number");
    *out = it->valuedouble;
    return MOE_STATUS_OK;
}

/* Fields of config.json that the model cannot represent: each an error naming it. */
static moe_status check_unsupported(const cJSON *j, const char *path) {
    const char *must_false[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, must_false[i])))
            return moe__err(MOE_STATUS_FORMAT, "'%s': %s is true; moe's layers have no biases", path, must_false[i]);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return moe__err(MOE_STATUS_FORMAT, "'%s': rope_scaling is set; moe has plain RoPE only", path);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "silu") && strcmp(act->valuestring, "swish"))))
        return moe__err(MOE_STATUS_FORMAT, "'%s': hidden_act '%s' is not silu; moe's FFNs are SwiGLU", path,
                        cJSON_IsString(act) ? act->valuestring : "?");
    return MOE_STATUS_OK;
}

static moe_status parse_config(const char *dir, hf_info *h) {
    char path[4200];
    moe_status st = moe__pathf(path, sizeof path, "%s/config.json", dir);
    if (st != MOE_STATUS_OK) return st;
    size_t len;
    char *txt = moe__read_file(path, &len);
    if (!txt) return MOE_STATUS_IO;
    cJSON *j = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return moe__err(MOE_STATUS_FORMAT, "'%s' is not a JSON object", path);
    }
    moe_config *c = &h->c;
    *c = moe_config_default();
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(j, "model_type");
    const char *type = cJSON_IsString(mt) ? mt->valuestring : "";
    if (!strcmp(type, "mixtral")) h->moe = 1;
    else if (!strcmp(type, "llama") || !strcmp(type, "mistral")) h->moe = 0;
    else {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': model_type '%s' is not one moe reads (mixtral; llama or mistral to upcycle)",
                      path, type);
        goto done;
    }
    if ((st = check_unsupported(j, path)) != MOE_STATUS_OK) goto done;
    double V, C, F, L, H, kvh, mpe, eps, theta, tie, E, K, hd, sw, jitter, std, aux;
    if ((st = num_field(j, path, "vocab_size", NAN, 1, &V)) || (st = num_field(j, path, "hidden_size", NAN, 1, &C)) ||
        (st = num_field(j, path, "intermediate_size", NAN, 1, &F)) ||
        (st = num_field(j, path, "num_hidden_layers", NAN, 1, &L)) ||
        (st = num_field(j, path, "num_attention_heads", NAN, 1, &H)) ||
        (st = num_field(j, path, "num_key_value_heads", H, 1, &kvh)) ||
        (st = num_field(j, path, "max_position_embeddings", 2048, 1, &mpe)) ||
        (st = num_field(j, path, "rms_norm_eps", h->moe ? 1e-5 : 1e-6, 0, &eps)) ||
        (st = num_field(j, path, "rope_theta", h->moe ? 1e6 : 1e4, 0, &theta)) ||
        (st = num_field(j, path, "num_local_experts", 8, 1, &E)) ||
        (st = num_field(j, path, "num_experts_per_tok", 2, 1, &K)) ||
        (st = num_field(j, path, "head_dim", H > 0 ? C / H : 0, 0, &hd)) ||
        (st = num_field(j, path, "sliding_window", 0, 1, &sw)) ||
        (st = num_field(j, path, "router_jitter_noise", 0, 0, &jitter)) ||
        (st = num_field(j, path, "initializer_range", 0.02, 0, &std)) ||
        (st = num_field(j, path, "router_aux_loss_coef", 0.01, 0, &aux)))
        goto done;
    tie = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings"));
    if (H < 1 || kvh < 1 || fmod(H, kvh) != 0) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': num_key_value_heads %g does not divide num_attention_heads %g", path, kvh, H);
        goto done;
    }
    if (hd != C / H) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': head_dim %g is not hidden_size / num_attention_heads = %g", path, hd, C / H);
        goto done;
    }
    h->kv_heads = (int)kvh;
    c->vocab_size = (int)V;
    c->n_embd = (int)C;
    c->n_layer = (int)L;
    c->n_head = (int)H;
    c->seq_len = (int)(mpe < HF_MAX_SEQ ? mpe : HF_MAX_SEQ);
    if (sw > 0 && sw < c->seq_len) c->seq_len = (int)sw; // within the window, sliding attention is full attention
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    c->tie_embeddings = (int)tie;
    c->init_std = (float)std;
    c->ffn_hidden = (int)F;
    c->expert_hidden = (int)F;
    if (h->moe) {
        snprintf(c->moe_layers, sizeof c->moe_layers, "all");
        c->n_experts = (int)E;
        c->top_k = (int)K;
        c->norm_topk = 1;
        c->routing = MOE_ROUTING_TOPK;
        c->router_score = MOE_SCORE_SOFTMAX;
        c->capacity_factor = 0.0f; // Mixtral is dropless, in training too
        c->jitter_eps = (float)jitter;
        c->aux_loss_coef = (float)aux;
        c->z_loss_coef = 0.0f;
    } else {
        snprintf(c->moe_layers, sizeof c->moe_layers, "none");
    }
    st = moe_config_validate(c);
    if (st != MOE_STATUS_OK) st = moe__err(st, "'%s' gives a config moe cannot use: %s", path, moe_last_error());
done:
    cJSON_Delete(j);
    return st;
}

moe_status moe_hf_config(const char *dir, moe_config *out) {
    hf_info h;
    moe_status st = parse_config(dir, &h);
    if (st == MOE_STATUS_OK) *out = h.c;
    return st;
}

/* float from F32, BF16 or F16 bytes (little-endian, maybe unaligned) */
static float half_to_f32(uint16_t x) {
    uint32_t sign = (uint32_t)(x >> 15) << 31, exp = (x >> 10) & 0x1f, man = x & 0x3ff, u;
    if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);
    else if (exp) u = sign | ((exp + 112) << 23) | (man << 13);
    else if (!man) u = sign;
    else { // subnormal: normalise
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static moe_status to_f32(const moe__st_tensor *s, const char *path, float *dst) {
    int64_t n = 1;
    for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
    if (!strcmp(s->dtype, "F32")) {
        memcpy(dst, s->data, (size_t)n * 4);
    } else if (!strcmp(s->dtype, "BF16") || !strcmp(s->dtype, "F16")) {
        int bf = s->dtype[0] == 'B';
        for (int64_t i = 0; i < n; i++) {
            uint16_t v = (uint16_t)(s->data[2 * i] | (s->data[2 * i + 1] << 8));
            if (bf) {
                uint32_t u = (uint32_t)v << 16;
                memcpy(&dst[i], &u, 4);
            } else {
                dst[i] = half_to_f32(v);
            }
        }
    } else {
        return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is %s; moe reads F32, BF16 and F16", path, s->name, s->dtype);
    }
    return MOE_STATUS_OK;
}

/* The converted tensors, in moe's table naming. */
typedef struct {
    moe__st_file f;
    int cap;
    uint8_t **filled; /* per tensor: which experts of a stacked tensor arrived (NULL if not stacked) */
} tensor_set;

static moe__st_tensor *set_add(tensor_set *s, const char *name, int ndim, const int64_t *shape) {
    if (s->f.n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        moe__st_tensor *t = realloc(s->f.t, (size_t)cap * sizeof *t);
        uint8_t **fl = t ? realloc(s->filled, (size_t)cap * sizeof *fl) : NULL;
        if (t) s->f.t = t;
        if (!fl) return NULL;
        s->filled = fl;
        s->cap = cap;
    }
    moe__st_tensor *t = &s->f.t[s->f.n];
    memset(t, 0, sizeof *t);
    s->filled[s->f.n] = NULL;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (t->shape[d] = shape[d]);
    t->ndim = ndim;
    snprintf(t->dtype, sizeof t->dtype, "F32");
    t->nbytes = n * 4;
    t->name = strdup(name);
    t->own = malloc((size_t)(n ? n : 1) * 4);
    if (!t->name || !t->own) {
        free(t->name);
        free(t->own);
        return NULL;
    }
    t->data = t->own;
    s->f.n++;
    return t;
}

static void set_free(tensor_set *s) {
    for (int i = 0; i < s->f.n; i++) free(s->filled[i]);
    free(s->filled);
    moe__st_free(&s->f);
}

/* Converts the tensors of one HF file into the set. */
static moe_status convert_file(const hf_info *h, const char *path, tensor_set *set) {
    moe__st_file f;
    moe_status st = moe__st_read(path, &f);
    if (st != MOE_STATUS_OK) return st;
    const moe_config *c = &h->c;
    int64_t hs = c->n_embd / c->n_head;
    for (int i = 0; i < f.n && st == MOE_STATUS_OK; i++) {
        const moe__st_tensor *s = &f.t[i];
        size_t nl = strlen(s->name);
        if (nl >= 19 && !strcmp(s->name + nl - 19, "rotary_emb.inv_freq")) continue; // a buffer, recomputed
        if (c->tie_embeddings && !strcmp(s->name, "lm_head.weight")) continue;        // the embedding, tied
        char stacked[512], tail[8] = "";
        int l, x, w, end = 0;
        if (sscanf(s->name, "model.layers.%d.block_sparse_moe.experts.%d.w%d.weig%7s%n", &l, &x, &w, tail, &end) == 4 &&
            !strcmp(tail, "ht") && s->name[end] == 0) {
            // one expert's matrix: into the stacked [E, rows, cols] tensor of its layer
            int E = l >= 0 && l < c->n_layer ? moe_config_layer_experts(c, l) : 0;
            if (x < 0 || x >= E || w < 1 || w > 3 || s->ndim != 2) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' names no expert of this %d-layer, %d-expert config",
                              path, s->name, c->n_layer, c->n_experts);
                break;
            }
            snprintf(stacked, sizeof stacked, "model.layers.%d.block_sparse_moe.experts.w%d.weight", l, w);
            int k = -1;
            for (int j = 0; j < set->f.n && k < 0; j++)
                if (!strcmp(set->f.t[j].name, stacked)) k = j;
            if (k < 0) {
                int64_t shape[3] = {E, s->shape[0], s->shape[1]};
                if (!set_add(set, stacked, 3, shape) || !(set->filled[set->f.n - 1] = calloc((size_t)E, 1))) {
                    st = moe__err(MOE_STATUS_NOMEM, "out of memory importing '%s'", path);
                    break;
                }
                k = set->f.n - 1;
            }
            moe__st_tensor *t = &set->f.t[k];
            if (t->shape[1] != s->shape[0] || t->shape[2] != s->shape[1]) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is [%lld, %lld], unlike the layer's other experts [%lld, %lld]",
                              path, s->name, (long long)s->shape[0], (long long)s->shape[1], (long long)t->shape[1],
                              (long long)t->shape[2]);
                break;
            }
            if (set->filled[k][x]) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' appears twice", path, s->name);
                break;
            }
            set->filled[k][x] = 1;
            st = to_f32(s, path, (float *)t->own + (size_t)x * (size_t)(t->shape[1] * t->shape[2]));
            continue;
        }
        for (int j = 0; j < set->f.n; j++)
            if (!strcmp(set->f.t[j].name, s->name)) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' appears twice", path, s->name);
                break;
            }
        if (st != MOE_STATUS_OK) break;
        int kv = (strstr(s->name, "self_attn.k_proj.weight") || strstr(s->name, "self_attn.v_proj.weight")) &&
                 h->kv_heads < c->n_head;
        if (kv && (s->ndim != 2 || s->shape[0] != h->kv_heads * hs)) {
            st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has %lld rows; %d key/value heads of size %lld need %lld",
                          path, s->name, (long long)(s->ndim ? s->shape[0] : 0), h->kv_heads, (long long)hs,
                          (long long)(h->kv_heads * hs));
            break;
        }
        int64_t shape[8];
        for (int d = 0; d < s->ndim; d++) shape[d] = s->shape[d];
        if (kv) shape[0] = (int64_t)c->n_head * hs;
        moe__st_tensor *t = set_add(set, s->name, s->ndim, shape);
        if (!t) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory importing '%s'", path);
            break;
        }
        if (!kv) {
            st = to_f32(s, path, (float *)t->own);
            continue;
        }
        // grouped-query attention: query head q uses key/value head q / (H / kv_heads)
        float *src = malloc((size_t)(s->shape[0] * s->shape[1]) * 4);
        if (!src) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory importing '%s'", path);
            break;
        }
        st = to_f32(s, path, src);
        int64_t rows = hs * s->shape[1], group = c->n_head / h->kv_heads;
        for (int q = 0; q < c->n_head && st == MOE_STATUS_OK; q++)
            memcpy((float *)t->own + q * rows, src + (q / group) * rows, (size_t)rows * 4);
        free(src);
    }
    moe__st_free(&f);
    return st;
}

/* The files of the checkpoint: model.safetensors, or the shards the index names. */
static moe_status checkpoint_files(const char *dir, char ***files, int *n) {
    char path[4200];
    *files = NULL;
    *n = 0;
    moe_status st = moe__pathf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    if (st != MOE_STATUS_OK) return st;
    if (!file_exists(path)) {
        if ((st = moe__pathf(path, sizeof path, "%s/model.safetensors", dir)) != MOE_STATUS_OK) return st;
        if (!file_exists(path))
            return moe__err(MOE_STATUS_IO, "'%s' has neither model.safetensors nor model.safetensors.index.json", dir);
        *files = malloc(sizeof(char *));
        if (!*files || !((*files)[0] = strdup(path))) return moe__err(MOE_STATUS_NOMEM, "out of memory");
        *n = 1;
        return MOE_STATUS_OK;
    }
    size_t len;
    char *txt = moe__read_file(path, &len);
    if (!txt) return MOE_STATUS_IO;
    cJSON *j = cJSON_ParseWithLength(txt, len);
    free(txt);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(j, "weight_map");
    if (!cJSON_IsObject(map)) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': no weight_map object", path);
        goto done;
    }
    int cap = cJSON_GetArraySize(map);
    *files = calloc((size_t)(cap ? cap : 1), sizeof(char *));
    if (!*files) {
        st = moe__err(MOE_STATUS_NOMEM, "out of memory");
        goto done;
    }
    for (const cJSON *it = map->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !*it->valuestring || strchr(it->valuestring, '/') || !strcmp(it->valuestring, "..")) {
            st = moe__err(MOE_STATUS_FORMAT, "'%s': weight_map entry '%s' is not a file name in the directory", path,
                          it->string);
            goto done;
        }
        char file[4200];
        if ((st = moe__pathf(file, sizeof file, "%s/%s", dir, it->valuestring)) != MOE_STATUS_OK) goto done;
        int seen = 0;
        for (int i = 0; i < *n && !seen; i++) seen = !strcmp((*files)[i], file);
        if (seen) continue;
        if (!((*files)[*n] = strdup(file))) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory");
            goto done;
        }
        ++*n;
    }
    if (*n == 0) st = moe__err(MOE_STATUS_FORMAT, "'%s': weight_map is empty", path);
done:
    cJSON_Delete(j);
    return st;
}

moe_status moe_hf_load(const char *dir, const moe_config *c, int max_batch, moe_model **out) {
    *out = NULL;
    hf_info h;
    moe_status st = parse_config(dir, &h);
    if (st != MOE_STATUS_OK) return st;
    h.c = *c; // the caller's (seq_len, capacity, ... may differ); shapes are checked by the loader
    char **files = NULL;
    int n_files = 0;
    tensor_set set;
    memset(&set, 0, sizeof set);
    moe_model *m = NULL;
    st = checkpoint_files(dir, &files, &n_files);
    for (int i = 0; i < n_files && st == MOE_STATUS_OK; i++) st = convert_file(&h, files[i], &set);
    for (int k = 0; k < set.f.n && st == MOE_STATUS_OK; k++)
        for (int64_t x = 0; set.filled[k] && x < set.f.t[k].shape[0]; x++)
            if (!set.filled[k][x]) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': expert %lld of '%s' is missing", dir, (long long)x, set.f.t[k].name);
                break;
            }
    if (st == MOE_STATUS_OK) st = moe_model_create(c, max_batch, &m);
    if (st == MOE_STATUS_OK) st = moe__model_load_weights(m, &set.f, dir);
    set_free(&set);
    for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
    if (st != MOE_STATUS_OK) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_STATUS_OK;
}
