/*
 * hf_import.c — reads Hugging Face checkpoints: DIR/config.json with DIR/model.safetensors, or
 * with the shards that DIR/model.safetensors.index.json lists; tensors in F32, BF16 or F16.
 * MixtralForCausalLM maps onto an all-MoE model; LlamaForCausalLM and MistralForCausalLM onto a
 * dense one (the start of sparse upcycling). The HF tensors become a source (io.h, source.c)
 * under this model's names, read where they lie (per-expert tensors as pieces of a stacked one;
 * grouped-query K/V projections as they are: n_kv_head); names, shapes and dtypes are checked
 * from the headers before any data is read.
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
    c->n_kv_head = kvh < H ? (int)kvh : 0; // grouped-query attention, natively
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

/* The tensors of one HF file into the source s, under this model's names: per-expert matrices as
 * pieces of their layer's stacked tensor, grouped-query K/V heads as one piece per query head
 * (what transformers' repeat_kv computes). Headers only: nothing is read. */
static moe_status add_file(const hf_info *h, const char *path, const moe__st_file *f, moe__source *src) {
    const moe_config *c = &h->c;
    int64_t hs = c->n_embd / c->n_head;
    moe_status st = MOE_STATUS_OK;
    for (int i = 0; i < f->n && st == MOE_STATUS_OK; i++) {
        const moe__st_tensor *s = &f->t[i];
        size_t nl = strlen(s->name);
        if (nl >= 19 && !strcmp(s->name + nl - 19, "rotary_emb.inv_freq")) continue; // a buffer, recomputed
        if (c->tie_embeddings && !strcmp(s->name, "lm_head.weight")) continue;        // the embedding, tied
        char stacked[512], tail[8] = "";
        int l, x, w, end = 0;
        if (sscanf(s->name, "model.layers.%d.block_sparse_moe.experts.%d.w%d.weig%7s%n", &l, &x, &w, tail, &end) == 4 &&
            !strcmp(tail, "ht") && s->name[end] == 0) {
            // one expert's matrix: a piece of the stacked [E, rows, cols] tensor of its layer
            int E = l >= 0 && l < c->n_layer ? moe_config_layer_experts(c, l) : 0;
            if (x < 0 || x >= E || w < 1 || w > 3 || s->ndim != 2)
                return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' names no expert of this %d-layer, %d-expert config",
                                path, s->name, c->n_layer, c->n_experts);
            snprintf(stacked, sizeof stacked, "model.layers.%d.block_sparse_moe.experts.w%d.weight", l, w);
            moe__src_tensor *t = moe__source_find(src, stacked);
            int64_t shape[3] = {E, s->shape[0], s->shape[1]};
            if (!t && !(t = moe__source_add(src, stacked, 3, shape))) return moe__err(MOE_STATUS_NOMEM, "out of memory");
            if (t->info.shape[1] != s->shape[0] || t->info.shape[2] != s->shape[1])
                return moe__err(MOE_STATUS_FORMAT,
                                "'%s': tensor '%s' is [%lld, %lld], unlike the layer's other experts [%lld, %lld]", path,
                                s->name, (long long)s->shape[0], (long long)s->shape[1], (long long)t->info.shape[1],
                                (long long)t->info.shape[2]);
            if (x < t->np && t->p[x].data)
                return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' appears twice", path, s->name);
            st = moe__source_piece(t, x, s, f, 0, s->shape[0] * s->shape[1]);
            if (st != MOE_STATUS_OK) return moe__err(st, "'%s': %s", path, moe_last_error());
            continue;
        }
        if (moe__source_find(src, s->name))
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' appears twice", path, s->name);
        int kv = (strstr(s->name, "self_attn.k_proj.weight") || strstr(s->name, "self_attn.v_proj.weight")) &&
                 h->kv_heads < c->n_head; // grouped: named here; other shapes are checked against the config
        if (kv && (s->ndim != 2 || s->shape[0] != h->kv_heads * hs))
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' has %lld rows; %d key/value heads of size %lld need %lld",
                            path, s->name, (long long)(s->ndim ? s->shape[0] : 0), h->kv_heads, (long long)hs,
                            (long long)(h->kv_heads * hs));
        moe__src_tensor *t = moe__source_add(src, s->name, s->ndim, s->shape);
        if (!t) return moe__err(MOE_STATUS_NOMEM, "out of memory");
        st = moe__source_piece(t, 0, s, f, 0, t->info.numel);
        if (st != MOE_STATUS_OK) return moe__err(st, "'%s': %s", path, moe_last_error());
    }
    return MOE_STATUS_OK;
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

/* The source of an HF directory: every file mapped, its tensors named; experts all there. */
static moe_status hf_source(const char *dir, moe__source *out) {
    memset(out, 0, sizeof *out);
    hf_info h;
    moe_status st = parse_config(dir, &h);
    if (st != MOE_STATUS_OK) return st;
    out->vocab = h.c.vocab_size;
    char **files = NULL;
    int n_files = 0;
    st = checkpoint_files(dir, &files, &n_files);
    if (st == MOE_STATUS_OK && !(out->files = calloc((size_t)n_files, sizeof *out->files)))
        st = moe__err(MOE_STATUS_NOMEM, "out of memory");
    for (int i = 0; i < n_files && st == MOE_STATUS_OK; i++) {
        st = moe__st_read(files[i], &out->files[i]);
        if (st == MOE_STATUS_OK) out->n_files++;
        if (st == MOE_STATUS_OK) st = add_file(&h, files[i], &out->files[i], out);
    }
    for (int k = 0; k < out->n && st == MOE_STATUS_OK; k++) {
        const moe__src_tensor *t = &out->t[k];
        if (t->info.ndim != 3 || !strstr(t->info.name, ".experts.w")) continue;
        for (int64_t x = 0; x < t->info.shape[0] && st == MOE_STATUS_OK; x++)
            if (x >= t->np || !t->p[x].data)
                st = moe__err(MOE_STATUS_FORMAT, "'%s': expert %lld of '%s' is missing", dir, (long long)x, t->info.name);
    }
    for (int i = 0; i < n_files; i++) free(files[i]);
    free(files);
    if (st != MOE_STATUS_OK) moe__source_free(out);
    return st;
}

moe_status moe__open_source(const char *path, moe__source *out) {
    char cfg[4200];
    moe_status st = moe__pathf(cfg, sizeof cfg, "%s/config.json", path);
    if (st != MOE_STATUS_OK) return st;
    return file_exists(cfg) ? hf_source(path, out) : moe__ckpt_source(path, out);
}

moe_status moe_hf_load(const char *dir, const moe_config *c, int max_batch, moe_model **out) {
    *out = NULL;
    moe__source s;
    moe_model *m = NULL;
    moe_status st = hf_source(dir, &s);
    if (st != MOE_STATUS_OK) return st;
    st = moe__model_create(c, max_batch, MOE__MODEL_LEAN | MOE__MODEL_DEFER_PARAMS, &m);
    if (st == MOE_STATUS_OK && m->defer_params) st = moe__model_alloc_params(m);
    if (st == MOE_STATUS_OK) st = moe__source_fill(m, &s, dir);
    moe__source_free(&s);
    if (st != MOE_STATUS_OK) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_STATUS_OK;
}
