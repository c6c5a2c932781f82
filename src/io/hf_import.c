/*
 * hf_import.c — reads Hugging Face checkpoints: DIR/config.json with DIR/model.safetensors, or
 * with the shards that DIR/model.safetensors.index.json lists; tensors in F32, BF16 or F16.
 * MixtralForCausalLM maps onto an all-MoE model; Qwen2MoeForCausalLM onto one with q/k/v biases,
 * a gated shared expert of its own width and dense layers (decoder_sparse_step, mlp_only_layers);
 * OlmoeForCausalLM onto one with QK-norm; LlamaForCausalLM and MistralForCausalLM onto a dense
 * one (the start of sparse upcycling). The HF tensors become a source (io.h, source.c)
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

typedef enum { HF_LLAMA, HF_MIXTRAL, HF_QWEN2_MOE, HF_OLMOE } hf_family;

typedef struct {
    moe_config c;
    hf_family fam;
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

/* A boolean field of config.json, def when absent or null. */
static moe_status bool_field(const cJSON *j, const char *path, const char *key, int def, int *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, key);
    *out = def;
    if (!it || cJSON_IsNull(it)) return MOE_STATUS_OK;
    if (!cJSON_IsBool(it)) return moe__err(MOE_STATUS_FORMAT, "'%s': field '%s' must be true or false", path, key);
    *out = cJSON_IsTrue(it);
    return MOE_STATUS_OK;
}

/* Fields of config.json that the model cannot represent: each an error naming it. */
static moe_status check_unsupported(const cJSON *j, const char *path) {
    const char *must_false[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++)
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, must_false[i])))
            return moe__err(MOE_STATUS_FORMAT, "'%s': %s is true; moe's layers have no such biases (Qwen2's q/k/v "
                            "biases are the only ones)", path, must_false[i]);
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "rope_scaling");
    if (rs && !cJSON_IsNull(rs))
        return moe__err(MOE_STATUS_FORMAT, "'%s': rope_scaling is set; moe has plain RoPE only", path);
    const cJSON *clip = cJSON_GetObjectItemCaseSensitive(j, "clip_qkv");
    if (clip && !cJSON_IsNull(clip))
        return moe__err(MOE_STATUS_FORMAT, "'%s': clip_qkv is set (OLMoE clamps q, k and v); moe does not clamp them", path);
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
    if (act && (!cJSON_IsString(act) || (strcmp(act->valuestring, "silu") && strcmp(act->valuestring, "swish"))))
        return moe__err(MOE_STATUS_FORMAT, "'%s': hidden_act '%s' is not silu; moe's FFNs are SwiGLU", path,
                        cJSON_IsString(act) ? act->valuestring : "?");
    return MOE_STATUS_OK;
}

/* Qwen2-MoE's sparse layers as moe_layers: layer l is MoE when experts exist, (l + 1) is a
 * multiple of decoder_sparse_step and l is not in mlp_only_layers; spelled all, none or a list
 * of ranges. */
static moe_status qwen_layers(const cJSON *j, const char *path, int L, int experts, moe_config *c) {
    double step;
    moe_status st = num_field(j, path, "decoder_sparse_step", 1, 1, &step);
    if (st != MOE_STATUS_OK) return st;
    if (step < 1) return moe__err(MOE_STATUS_FORMAT, "'%s': decoder_sparse_step must be at least 1", path);
    unsigned char moe[1024];
    if (L > 1024) return moe__err(MOE_STATUS_FORMAT, "'%s': num_hidden_layers %d is above 1024", path, L);
    for (int l = 0; l < L; l++) moe[l] = experts && (l + 1) % (int)step == 0;
    const cJSON *only = cJSON_GetObjectItemCaseSensitive(j, "mlp_only_layers");
    if (only && !cJSON_IsNull(only) && !cJSON_IsArray(only))
        return moe__err(MOE_STATUS_FORMAT, "'%s': mlp_only_layers must be a list of layers", path);
    for (const cJSON *it = only ? only->child : NULL; it; it = it->next) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 || it->valuedouble >= L)
            return moe__err(MOE_STATUS_FORMAT, "'%s': mlp_only_layers entry %g is not a layer in [0, %d)", path,
                            cJSON_IsNumber(it) ? it->valuedouble : -1.0, L);
        moe[(int)it->valuedouble] = 0;
    }
    int n = 0, len = 0;
    for (int l = 0; l < L; l++) n += moe[l];
    if (n == L || n == 0) {
        snprintf(c->moe_layers, sizeof c->moe_layers, n ? "all" : "none");
        return MOE_STATUS_OK;
    }
    for (int l = 0; l < L; l++) {
        if (!moe[l] || (l > 0 && moe[l - 1])) continue;
        int e = l;
        while (e + 1 < L && moe[e + 1]) e++;
        size_t room = sizeof c->moe_layers - (size_t)len;
        int w = e > l ? snprintf(c->moe_layers + len, room, "%s%d-%d", len ? "," : "", l, e)
                      : snprintf(c->moe_layers + len, room, "%s%d", len ? "," : "", l);
        if (w < 0 || (size_t)w >= room)
            return moe__err(MOE_STATUS_FORMAT, "'%s': its %d MoE layers of %d do not fit moe_layers (%zu characters)",
                            path, n, L, sizeof c->moe_layers - 1);
        len += w;
    }
    return MOE_STATUS_OK;
}

/* The model config of a parsed config.json of family h->fam (transformers' defaults where a field
 * is left out) into h. */
static moe_status read_config(const cJSON *j, const char *path, hf_info *h) {
    moe_config *c = &h->c;
    moe_status st;
    hf_family fam = h->fam;
    int qwen = fam == HF_QWEN2_MOE, olmoe = fam == HF_OLMOE, routed = fam != HF_LLAMA;
    const char *experts_key = fam == HF_MIXTRAL ? "num_local_experts" : "num_experts";
    double def_e = fam == HF_MIXTRAL ? 8 : qwen ? 60 : 64, def_k = fam == HF_MIXTRAL ? 2 : qwen ? 4 : 8;
    double V, C, F, L, H, kvh, mpe, eps, theta, E, K, hd, sw, jitter, std, aux, EF, SF;
    int tie, norm_topk, use_sw;
    if ((st = num_field(j, path, "vocab_size", NAN, 1, &V)) || (st = num_field(j, path, "hidden_size", NAN, 1, &C)) ||
        (st = num_field(j, path, "intermediate_size", NAN, 1, &F)) ||
        (st = num_field(j, path, "num_hidden_layers", NAN, 1, &L)) ||
        (st = num_field(j, path, "num_attention_heads", NAN, 1, &H)) ||
        (st = num_field(j, path, "num_key_value_heads", H, 1, &kvh)) ||
        (st = num_field(j, path, "max_position_embeddings", qwen ? 32768 : olmoe ? 4096 : 2048, 1, &mpe)) ||
        (st = num_field(j, path, "rms_norm_eps", fam == HF_MIXTRAL || olmoe ? 1e-5 : 1e-6, 0, &eps)) ||
        (st = num_field(j, path, "rope_theta", fam == HF_MIXTRAL ? 1e6 : 1e4, 0, &theta)) ||
        (st = num_field(j, path, experts_key, def_e, 1, &E)) ||
        (st = num_field(j, path, "num_experts_per_tok", def_k, 1, &K)) ||
        (st = num_field(j, path, "head_dim", H > 0 ? C / H : 0, 0, &hd)) ||
        (st = num_field(j, path, "sliding_window", 0, 1, &sw)) ||
        (st = num_field(j, path, "router_jitter_noise", 0, 0, &jitter)) ||
        (st = num_field(j, path, "initializer_range", 0.02, 0, &std)) ||
        (st = num_field(j, path, "router_aux_loss_coef", qwen ? 0.001 : 0.01, 0, &aux)) ||
        (st = num_field(j, path, "moe_intermediate_size", qwen ? 1408 : F, 1, &EF)) ||
        (st = num_field(j, path, "shared_expert_intermediate_size", qwen ? 5632 : 0, 1, &SF)) ||
        (st = bool_field(j, path, "tie_word_embeddings", 0, &tie)) ||
        (st = bool_field(j, path, "norm_topk_prob", fam == HF_MIXTRAL, &norm_topk)) ||
        (st = bool_field(j, path, "use_sliding_window", !qwen, &use_sw)))
        return st;
    if (H < 1 || kvh < 1 || fmod(H, kvh) != 0)
        return moe__err(MOE_STATUS_FORMAT, "'%s': num_key_value_heads %g does not divide num_attention_heads %g", path,
                        kvh, H);
    if (hd != C / H)
        return moe__err(MOE_STATUS_FORMAT, "'%s': head_dim %g is not hidden_size / num_attention_heads = %g", path, hd,
                        C / H);
    if (qwen && SF < 1)
        return moe__err(MOE_STATUS_FORMAT, "'%s': shared_expert_intermediate_size %g: a Qwen2-MoE shared expert needs "
                        "a width of at least 1", path, SF);
    c->n_kv_head = kvh < H ? (int)kvh : 0; // grouped-query attention, natively
    c->vocab_size = (int)V;
    c->n_embd = (int)C;
    c->n_layer = (int)L;
    c->n_head = (int)H;
    c->seq_len = (int)(mpe < HF_MAX_SEQ ? mpe : HF_MAX_SEQ);
    if (use_sw && sw > 0 && sw < c->seq_len) c->seq_len = (int)sw; // within the window, sliding attention is full
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;
    c->tie_embeddings = tie;
    c->init_std = (float)std;
    c->ffn_hidden = (int)F;
    c->expert_hidden = (int)EF;
    c->qkv_bias = qwen;
    c->qk_norm = olmoe;
    snprintf(c->moe_layers, sizeof c->moe_layers, routed && E > 0 ? "all" : "none");
    if (qwen && (st = qwen_layers(j, path, c->n_layer, E > 0, c)) != MOE_STATUS_OK) return st;
    if (routed && E > 0) {
        c->n_experts = (int)E;
        c->top_k = (int)K;
        c->norm_topk = norm_topk;
        c->routing = MOE_ROUTING_TOPK;
        c->router_score = MOE_SCORE_SOFTMAX;
        c->capacity_factor = 0.0f; // these families are dropless, in training too
        c->jitter_eps = (float)jitter;
        c->aux_loss_coef = (float)aux;
        c->z_loss_coef = 0.0f;
    }
    if (qwen) { // one shared expert of its own width, behind a sigmoid gate
        c->n_shared = 1;
        c->shared_hidden = SF == EF ? 0 : (int)SF;
        c->shared_gate = 1;
    }
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
    if (!strcmp(type, "mixtral")) h->fam = HF_MIXTRAL;
    else if (!strcmp(type, "llama") || !strcmp(type, "mistral")) h->fam = HF_LLAMA;
    else if (!strcmp(type, "qwen2_moe")) h->fam = HF_QWEN2_MOE;
    else if (!strcmp(type, "olmoe")) h->fam = HF_OLMOE;
    else {
        // families people bring that cannot be mapped exactly, each with its reason
        static const char *const why[][2] = {
            {"deepseek_v2", "its multi-head latent attention (MLA: compressed k/v) has no counterpart in moe"},
            {"deepseek_v3", "its multi-head latent attention (MLA: compressed k/v) has no counterpart in moe"},
            {"qwen3_moe", "its QK-norm is per head (moe's qk_norm is OLMoE's, over the whole projection)"},
            {"dbrx", "its fused, clipped q/k/v projection and LayerNorm have no counterpart in moe"},
            {"jamba", "its Mamba layers have no counterpart in moe"}};
        const char *reason = "it is not one moe reads (mixtral, qwen2_moe, olmoe; llama or mistral to upcycle)";
        for (size_t i = 0; i < sizeof why / sizeof why[0]; i++)
            if (!strcmp(type, why[i][0])) reason = why[i][1];
        st = moe__err(MOE_STATUS_FORMAT, "'%s': model_type '%s': %s", path, type, reason);
        goto done;
    }
    if ((st = check_unsupported(j, path)) != MOE_STATUS_OK || (st = read_config(j, path, h)) != MOE_STATUS_OK) goto done;
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

const char *moe__hf_rename(char *buf, size_t n, const char *name, int to_hf) {
    static const char *const pairs[][2] = {{".mlp.gate.weight", ".block_sparse_moe.gate.weight"},
                                           {".mlp.shared_expert.", ".block_sparse_moe.shared_experts."},
                                           {".mlp.shared_expert_gate.", ".block_sparse_moe.shared_expert_gate."}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        const char *from = pairs[i][to_hf], *to = pairs[i][!to_hf], *p = strstr(name, from);
        if (p) {
            snprintf(buf, n, "%.*s%s%s", (int)(p - name), name, to, p + strlen(from));
            return buf;
        }
    }
    snprintf(buf, n, "%s", name);
    return buf;
}

/* Expert x's matrix w (1, 2, 3 as Mixtral's w1, w2, w3) of layer l, when name is one: Mixtral's
 * block_sparse_moe.experts.X.wN, or Qwen2-MoE's and OLMoE's mlp.experts.X.{gate,down,up}_proj. */
static int expert_name(const char *name, int *l, int *x, int *w) {
    char proj[16], tail[8] = "";
    int end = 0;
    if (sscanf(name, "model.layers.%d.block_sparse_moe.experts.%d.w%d.weig%7s%n", l, x, w, tail, &end) == 4)
        return !strcmp(tail, "ht") && name[end] == 0;
    if (sscanf(name, "model.layers.%d.mlp.experts.%d.%15[a-z]_proj.weig%7s%n", l, x, proj, tail, &end) != 4 ||
        strcmp(tail, "ht") || name[end])
        return 0;
    *w = !strcmp(proj, "gate") ? 1 : !strcmp(proj, "down") ? 2 : !strcmp(proj, "up") ? 3 : 0;
    return *w > 0;
}

/* The tensors of one HF file into the source s, under this model's names: per-expert matrices as
 * pieces of their layer's stacked tensor; grouped-query K/V projections as they are. Headers
 * only: nothing is read. */
static moe_status add_file(const hf_info *h, const char *path, const moe__st_file *f, moe__source *src) {
    const moe_config *c = &h->c;
    moe_status st = MOE_STATUS_OK;
    for (int i = 0; i < f->n && st == MOE_STATUS_OK; i++) {
        const moe__st_tensor *s = &f->t[i];
        size_t nl = strlen(s->name);
        if (nl >= 19 && !strcmp(s->name + nl - 19, "rotary_emb.inv_freq")) continue; // a buffer, recomputed
        if (c->tie_embeddings && !strcmp(s->name, "lm_head.weight")) continue;        // the embedding, tied
        char stacked[512], ours[512];
        int l, x, w;
        if (h->fam != HF_LLAMA && expert_name(s->name, &l, &x, &w)) {
            // one expert's matrix: a piece of the stacked [E, rows, cols] tensor of its layer
            int E = l >= 0 && l < c->n_layer && moe_config_layer_is_moe(c, l) ? moe_config_layer_experts(c, l) : 0;
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
        const char *name = moe__hf_rename(ours, sizeof ours, s->name, 0);
        if (moe__source_find(src, name))
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' appears twice", path, s->name);
        moe__src_tensor *t = moe__source_add(src, name, s->ndim, s->shape);
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
