/*
 * checkpoint.c — model weights as safetensors: every tensor of the model's table under its
 * Hugging Face key (routed experts stacked [E][...]), F32, with the config (JSON), the step and
 * a format tag in the metadata. Loading checks the format tag, every name, dtype and shape.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"
#include "cpu/cpu.h"
#include "model/backend.h"

#include <string.h>
#include <sys/stat.h>

#define CKPT_FORMAT "moe"
#define CKPT_VERSION "1"

moe_status moe__ckpt_out_open(moe__st_out *o, const char *path, const moe__st_entry *e, int n, const char *cfg,
                              int64_t step, const char *extra_key, const char *extra_val) {
    char stepbuf[32];
    snprintf(stepbuf, sizeof stepbuf, "%lld", (long long)step);
    const char *keys[5] = {"format", "format_version", "config", "step", extra_key};
    const char *vals[5] = {CKPT_FORMAT, CKPT_VERSION, cfg, stepbuf, extra_val};
    // data_fnv1a64: over the data region as written (the tensors in order)
    return moe__st_out_open(o, path, e, n, keys, vals, extra_key ? 5 : 4, "data_fnv1a64");
}

/* Writes the tensors of m that `keep` selects (NULL = all) with the checkpoint metadata and one
 * more metadata pair when extra_key is not NULL. */
static moe_status save_tensors(const moe_model *m, const char *path, int64_t step, int (*keep)(const moe_tensor_info *),
                               const char *extra_key, const char *extra_val) {
    int n = moe_model_n_tensors(m), k = 0;
    moe__st_entry *e = calloc((size_t)n, sizeof *e);
    char *cfg = moe_config_to_json(moe_model_config(m));
    if (!e || !cfg) {
        free(e);
        free(cfg);
        return moe__err(MOE_STATUS_NOMEM, "out of memory saving '%s'", path);
    }
    moe_status sync = m->be->to_host((moe_model *)m, MOE_BUF_PARAMS);
    if (sync != MOE_STATUS_OK) {
        free(e);
        free(cfg);
        return sync;
    }
    const float *params = m->params;
    for (int i = 0; i < n; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        if (keep && !keep(t)) continue;
        e[k].name = t->name;
        e[k].dtype = "F32";
        e[k].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[k].shape[d] = t->shape[d];
        e[k].data = params + t->offset;
        k++;
    }
    moe__st_out o;
    moe_status st = moe__ckpt_out_open(&o, path, e, k, cfg, step, extra_key, extra_val);
    for (int i = 0; i < k && st == MOE_STATUS_OK; i++) {
        int64_t numel = 1;
        for (int d = 0; d < e[i].ndim; d++) numel *= e[i].shape[d];
        st = moe__st_out_write(&o, e[i].data, (size_t)numel * sizeof(float));
    }
    if (st == MOE_STATUS_OK) st = moe__st_out_close(&o);
    else moe__st_out_abort(&o);
    free(e);
    free(cfg);
    return st;
}

static int is_expert(const moe_tensor_info *t) { return t->group == MOE_GROUP_EXPERT; }
static int is_replicated(const moe_tensor_info *t) { return t->group != MOE_GROUP_EXPERT; }

moe_status moe_model_save(const moe_model *m, const char *path, int64_t step) {
    int ep, ep_rank;
    moe__model_ep(m, &ep, &ep_rank);
    if (ep > 1) return moe__err(MOE_STATUS_ARG, "'%s': an expert-parallel model is saved by its trainer (shards)", path);
    return save_tensors(m, path, step, NULL, NULL, NULL);
}

moe_status moe__shard_name(char *out, size_t n, const char *dir, const char *kind, int j, int ep, int64_t step) {
    return moe__pathf(out, n, "%s/%s-%d-of-%d.step%lld.%s", dir, kind, j, ep, (long long)step,
                      strcmp(kind, "experts") ? "bin" : "safetensors");
}

moe_status moe__model_save_experts(const moe_model *m, const char *path, int64_t step) {
    return save_tensors(m, path, step, is_expert, NULL, NULL);
}

moe_status moe__model_save_replicated(const moe_model *m, const char *path, int64_t step, int ep) {
    char buf[16];
    snprintf(buf, sizeof buf, "%d", ep);
    return save_tensors(m, path, step, is_replicated, "expert_shards", buf);
}

/* The data checksum in the metadata (checkpoints written since it was added) against the data. */
static moe_status verify_data(const moe__st_file *f, const char *path) {
    char *want = moe__st_meta(f, "data_fnv1a64");
    if (!want) return MOE_STATUS_OK;
    char got[32];
    // a mapped file's pages leave resident memory as they are checked: a model that reads only
    // some of them (one tensor at a time: export) never holds them all
    snprintf(got, sizeof got, "%016llx", (unsigned long long)moe__st_fnv(f, MOE_FNV_INIT, f->data, (size_t)f->data_len));
    int ok = !strcmp(want, got);
    if (!ok) { // written with the old basis (core.h)?
        snprintf(got, sizeof got, "%016llx", (unsigned long long)moe__st_fnv(f, MOE_FNV_INIT_V0, f->data, (size_t)f->data_len));
        ok = !strcmp(want, got);
    }
    free(want);
    return ok ? MOE_STATUS_OK
              : moe__err(MOE_STATUS_FORMAT, "'%s': checksum mismatch in the tensor data (the file is corrupt)", path);
}

moe_status moe__checkpoint_config_of(const moe__st_file *f, const char *path, moe_config *out, int64_t *step) {
    char *format = moe__st_meta(f, "format"), *version = moe__st_meta(f, "format_version");
    char *cfg = moe__st_meta(f, "config"), *stepv = moe__st_meta(f, "step");
    moe_status st = MOE_STATUS_OK;
    if (!format || strcmp(format, CKPT_FORMAT) != 0) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s' is not a moe checkpoint (metadata 'format' is %s%s%s)", path,
                      format ? "'" : "", format ? format : "missing", format ? "'" : "");
        goto done;
    }
    if (!version || strcmp(version, CKPT_VERSION) != 0) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': checkpoint format version '%s' is not supported (expected %s)", path,
                      version ? version : "(missing)", CKPT_VERSION);
        goto done;
    }
    if (!cfg) {
        st = moe__err(MOE_STATUS_FORMAT, "'%s': checkpoint metadata has no 'config'", path);
        goto done;
    }
    *out = moe_config_default();
    st = moe__config_apply_json(out, cfg, path, 0); // old checkpoints wrote big seeds as numbers
    if (st == MOE_STATUS_OK) st = moe_config_validate(out);
    if (st == MOE_STATUS_OK && step) {
        char *end;
        *step = stepv ? strtoll(stepv, &end, 10) : -1;
        if (!stepv || *end || *step < 0) st = moe__err(MOE_STATUS_FORMAT, "'%s': checkpoint metadata 'step' is bad", path);
    }
done:
    free(format);
    free(version);
    free(cfg);
    free(stepv);
    return st;
}

/* A checkpoint named by its run directory or by the file itself: the file's path, to free. */
static char *checkpoint_file(const char *path) {
    struct stat sb;
    size_t n = strlen(path) + sizeof "/model.safetensors";
    char *p = malloc(n);
    if (!p) {
        moe__err(MOE_STATUS_NOMEM, "out of memory");
        return NULL;
    }
    snprintf(p, n, "%s/model.safetensors", path);
    if (stat(p, &sb) != 0) snprintf(p, n, "%s", path);
    return p;
}

moe_status moe_checkpoint_config(const char *path, moe_config *out, int64_t *step) {
    char *file = checkpoint_file(path);
    if (!file) return MOE_STATUS_NOMEM;
    moe__st_file f;
    moe_status st = moe__st_read_header(file, &f); // the weights are not read
    if (st == MOE_STATUS_OK) {
        st = moe__checkpoint_config_of(&f, file, out, step);
        moe__st_free(&f);
    }
    free(file);
    return st;
}

/* The file's tensor s must be F32 of t's shape, with `rows` in place of t's first dimension. */
static moe_status check_shape(const char *path, const moe__st_tensor *s, const moe_tensor_info *t, int64_t rows) {
    int64_t want[8];
    memcpy(want, t->shape, sizeof t->shape);
    want[0] = rows;
    int same = !strcmp(s->dtype, "F32") && s->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = s->shape[d] == want[d];
    if (same) return MOE_STATUS_OK;
    char a[128], b[128];
    moe__shape_str(s->shape, s->ndim, a, sizeof a);
    moe__shape_str(want, t->ndim, b, sizeof b);
    return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is %s %s; the config needs F32 %s", path, t->name, s->dtype, a, b);
}

/* Rows [e0, e0 + t->shape[0]) of a stacked expert tensor of E experts, from the checkpoint
 * itself or from its n_sh expert shards (shard j holds experts [j E/n_sh, (j+1) E/n_sh)). */
static moe_status load_experts(float *dst, const moe_tensor_info *t, int64_t E, int64_t e0, const moe__st_file *f,
                               const moe__st_file *sh, int n_sh, const char *const *sh_path, const char *path) {
    int64_t per = t->numel / t->shape[0], Es = n_sh ? E / n_sh : E;
    for (int64_t i = 0; i < t->shape[0]; i++) {
        int64_t e = e0 + i;
        int j = n_sh ? (int)(e / Es) : 0;
        const moe__st_file *src = n_sh ? &sh[j] : f;
        const char *sp = n_sh ? sh_path[j] : path;
        const moe__st_tensor *s = moe__st_find(src, t->name);
        if (!s) return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is missing", sp, t->name);
        moe_status st = check_shape(sp, s, t, Es);
        if (st != MOE_STATUS_OK) return st;
        memcpy(dst + i * per, s->data + (size_t)((e - (int64_t)j * Es) * per) * sizeof(float), (size_t)per * sizeof(float));
    }
    return MOE_STATUS_OK;
}

moe_status moe__checkpoint_shards(const moe__st_file *f, const char *path, int *W) {
    char *v = moe__st_meta(f, "expert_shards"), *step = moe__st_meta(f, "step");
    char *end = NULL;
    long w = v ? strtol(v, &end, 10) : 0;
    moe_status st = MOE_STATUS_OK;
    if (v && (end == v || *end || w < 1 || w > 65536 || !step))
        st = moe__err(MOE_STATUS_FORMAT, "'%s': metadata expert_shards '%s' is bad", path, v);
    *W = st == MOE_STATUS_OK ? (int)w : 0;
    free(v);
    free(step);
    return st;
}

moe_status moe__model_load_weights(moe_model *m, const moe__st_file *f, const char *path) {
    int n = moe_model_n_tensors(m), ep, ep_rank, n_sh = 0;
    moe__model_ep(m, &ep, &ep_rank);
    float *params = m->params; // the host view: every tensor is written, then read back (from_host)
    moe_status st = MOE_STATUS_OK;
    // a multi-rank checkpoint keeps its experts in shard files named by its step
    char *stepv = moe__st_meta(f, "step");
    moe__st_file *sh = NULL;
    char **sh_path = NULL;
    if ((st = verify_data(f, path)) != MOE_STATUS_OK || (st = moe__checkpoint_shards(f, path, &n_sh)) != MOE_STATUS_OK)
        goto done;
    if (n_sh) {
        sh = calloc((size_t)n_sh, sizeof *sh);
        sh_path = calloc((size_t)n_sh, sizeof *sh_path);
        if (!sh || !sh_path) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory");
            goto done;
        }
        char dir[4096];
        const char *slash = strrchr(path, '/');
        st = slash ? moe__pathf(dir, sizeof dir, "%.*s", (int)(slash - path), path) : moe__pathf(dir, sizeof dir, ".");
        for (int j = 0; j < n_sh && st == MOE_STATUS_OK; j++) {
            // shard j holds the fraction [j, j+1)/n_sh of each layer's experts, this rank needs
            // [ep_rank, ep_rank+1)/ep: only the shards that overlap are read
            if (!moe__shard_overlaps(j, n_sh, ep_rank, ep)) continue;
            char name[4200];
            if ((st = moe__shard_name(name, sizeof name, dir, "experts", j, n_sh, strtoll(stepv, NULL, 10))) != MOE_STATUS_OK)
                break;
            sh_path[j] = strdup(name);
            st = moe__st_read(name, &sh[j]);
            if (st == MOE_STATUS_OK) st = verify_data(&sh[j], name);
            if (st != MOE_STATUS_OK)
                st = moe__err(MOE_STATUS_FORMAT, "'%s' names %d expert shards of step %s, but shard %d cannot be read: %s",
                              path, n_sh, stepv, j, moe_last_error());
        }
        if (st != MOE_STATUS_OK) goto done;
    }
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        if (t->group == MOE_GROUP_EXPERT) {
            int64_t E = t->shape[0] * ep;
            if (n_sh && E % n_sh) {
                st = moe__err(MOE_STATUS_FORMAT, "'%s': %lld experts do not split into %d shards", path, (long long)E, n_sh);
                break;
            }
            st = load_experts(params + t->offset, t, E, (int64_t)ep_rank * t->shape[0], f, sh, n_sh,
                              (const char *const *)sh_path, path);
            continue;
        }
        const moe__st_tensor *s = moe__st_find(f, t->name);
        if (!s) {
            st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is missing", path, t->name);
            break;
        }
        if ((st = check_shape(path, s, t, t->shape[0])) != MOE_STATUS_OK) break;
        memcpy(params + t->offset, s->data, (size_t)s->nbytes);
    }
    for (int i = 0; i < f->n && st == MOE_STATUS_OK; i++)
        if (!moe_model_find(m, f->t[i].name))
            st = moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is not part of this model's config", path, f->t[i].name);
done:
    if (st == MOE_STATUS_OK) st = m->be->from_host(m, MOE_BUF_PARAMS);
    for (int j = 0; j < n_sh && sh; j++) {
        moe__st_free(&sh[j]);
        if (sh_path) free(sh_path[j]);
    }
    free(sh);
    free(sh_path);
    free(stepv);
    return st;
}

static int has_meta(const moe__st_file *f, const char *key) {
    char *v = moe__st_meta(f, key);
    free(v);
    return v != NULL;
}

/* 1 when f holds exactly m's tensors, F32, in m's order and shapes, packed from the start of its
 * data: the data region is then the parameter buffer itself. */
static int same_layout(const moe_model *m, const moe__st_file *f) {
    if (f->n != m->n_tensors || (uintptr_t)f->data % sizeof(float) || f->data_len != (uint64_t)m->n_params * 4) return 0;
    for (int i = 0; i < m->n_tensors; i++) { // moe_model_save writes the table in order
        const moe_tensor_info *t = moe_model_tensor(m, i);
        const moe__st_tensor *s = &f->t[i];
        if (strcmp(s->name, t->name) || s->data != f->data + t->offset * 4 || s->nbytes != t->numel * 4 ||
            check_shape("", s, t, t->shape[0]))
            return 0;
    }
    return 1;
}

/* The fp32 model of checkpoint `file` (opened as f), created with flags: its parameters the mapped
 * file's data when the layout allows (nothing copied), else read into its own buffer. */
static moe_status load_fp32(const char *file, moe__st_file *f, const moe_config *c, int max_batch, int flags,
                            moe_model **out) {
    moe_model *m = NULL;
    moe_status st = moe__model_create(c, max_batch, flags | MOE__MODEL_DEFER_PARAMS, &m);
    if (st == MOE_STATUS_OK && m->defer_params && f->map_len && same_layout(m, f) && m->ep == 1 &&
        !has_meta(f, "expert_shards")) {
        if ((st = verify_data(f, file)) == MOE_STATUS_OK) { // the parameters are the mapping: nothing is copied
            m->params = (float *)f->data;
            m->map = f->buf;
            m->map_len = f->map_len;
            f->buf = NULL;
            f->map_len = 0;
        }
    } else if (st == MOE_STATUS_OK) {
        if (m->defer_params) st = moe__model_alloc_params(m);
        if (st == MOE_STATUS_OK) st = moe__model_load_weights(m, f, file);
    }
    if (st != MOE_STATUS_OK) moe_model_free(m);
    *out = st == MOE_STATUS_OK ? m : NULL;
    return st;
}

moe_status moe_model_load(const char *path, int max_batch, moe_model **out) {
    *out = NULL;
    char *file = checkpoint_file(path);
    if (!file) return MOE_STATUS_NOMEM;
    moe__st_file f;
    moe_status st = moe__st_read(file, &f);
    if (st != MOE_STATUS_OK) {
        free(file);
        return st;
    }
    moe_config c;
    moe_model *m = NULL, *src = NULL;
    st = moe__checkpoint_config_of(&f, file, &c, NULL);
    c.recompute = 0; // inference: no backward to save memory for
    const moe_device *dev = moe_device_selected();
    if (st == MOE_STATUS_OK && max_batch < 0) st = moe__err(MOE_STATUS_ARG, "max_batch %d is negative", max_batch);
    if (st == MOE_STATUS_OK && max_batch > 0 && dev->kind == MOE_DEVICE_CPU && dev->dtype == MOE_DTYPE_BF16) {
        // bf16 weights: the model takes them from the fp32 file's (a table over it) tensor by tensor
        st = load_fp32(file, &f, &c, 1, MOE__MODEL_TABLE, &src);
        if (st == MOE_STATUS_OK) st = moe__model_create(&c, max_batch, MOE__MODEL_LEAN, &m);
        if (st == MOE_STATUS_OK) st = moe__cpu_fill_bf16(m, src);
        moe_model_free(src);
    } else if (st == MOE_STATUS_OK) { // max_batch 0: the weights only, no activations (export)
        st = load_fp32(file, &f, &c, max_batch > 0 ? max_batch : 1, max_batch > 0 ? MOE__MODEL_LEAN : MOE__MODEL_TABLE, &m);
        if (st == MOE_STATUS_OK && max_batch == 0) m->max_batch = 0; // nothing to run a forward with
    }
    moe__st_free(&f);
    free(file);
    if (st != MOE_STATUS_OK) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_STATUS_OK;
}
