/*
 * checkpoint.c — model weights as safetensors: every tensor of the model's table under its
 * Hugging Face key (routed experts stacked [E][...]), F32, with the config (JSON), the step and
 * a format tag in the metadata. Loading checks the format tag, every name, dtype and shape.
 */
#define _POSIX_C_SOURCE 200809L
#include "internal.h"

#include <string.h>

#define CKPT_FORMAT "moe"
#define CKPT_VERSION "1"

moe_status moe_model_save(const moe_model *m, const char *path, int64_t step) {
    int n = moe_model_n_tensors(m);
    moe__st_entry *e = calloc((size_t)n, sizeof *e);
    char *cfg = moe_config_to_json(moe_model_config(m));
    if (!e || !cfg) {
        free(e);
        free(cfg);
        return moe__err(MOE_STATUS_NOMEM, "out of memory saving '%s'", path);
    }
    const float *params = moe_model_params((moe_model *)m);
    for (int i = 0; i < n; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        e[i].name = t->name;
        e[i].dtype = "F32";
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = params + t->offset;
    }
    char stepbuf[32];
    snprintf(stepbuf, sizeof stepbuf, "%lld", (long long)step);
    const char *keys[] = {"format", "format_version", "config", "step"};
    const char *vals[] = {CKPT_FORMAT, CKPT_VERSION, cfg, stepbuf};
    moe_status st = moe__st_write(path, e, n, keys, vals, 4);
    free(e);
    free(cfg);
    return st;
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
    st = moe_config_apply_json(out, cfg, path);
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

moe_status moe_checkpoint_config(const char *path, moe_config *out, int64_t *step) {
    moe__st_file f;
    moe_status st = moe__st_read(path, &f);
    if (st != MOE_STATUS_OK) return st;
    st = moe__checkpoint_config_of(&f, path, out, step);
    moe__st_free(&f);
    return st;
}

moe_status moe__model_load_weights(moe_model *m, const moe__st_file *f, const char *path) {
    int n = moe_model_n_tensors(m);
    float *params = moe_model_params(m);
    for (int i = 0; i < n; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        const moe__st_tensor *s = moe__st_find(f, t->name);
        if (!s) return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is missing", path, t->name);
        int same = !strcmp(s->dtype, "F32") && s->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = s->shape[d] == t->shape[d];
        if (!same)
            return moe__err(MOE_STATUS_FORMAT,
                            "'%s': tensor '%s' is %s with %d dims [%lld, ...]; the config needs F32 [%lld, %lld, %lld]",
                            path, t->name, s->dtype, s->ndim, (long long)(s->ndim ? s->shape[0] : 0),
                            (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2]);
        memcpy(params + t->offset, s->data, (size_t)s->nbytes);
    }
    if (f->n != n)
        for (int i = 0; i < f->n; i++)
            if (!moe_model_find(m, f->t[i].name))
                return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is not part of this model's config", path,
                                f->t[i].name);
    return MOE_STATUS_OK;
}

moe_status moe_model_load(const char *path, int max_batch, moe_model **out) {
    *out = NULL;
    moe__st_file f;
    moe_status st = moe__st_read(path, &f);
    if (st != MOE_STATUS_OK) return st;
    moe_config c;
    moe_model *m = NULL;
    st = moe__checkpoint_config_of(&f, path, &c, NULL);
    c.recompute = 0; // inference: no backward to save memory for
    if (st == MOE_STATUS_OK) st = moe_model_create(&c, max_batch, &m);
    if (st == MOE_STATUS_OK) st = moe__model_load_weights(m, &f, path);
    moe__st_free(&f);
    if (st != MOE_STATUS_OK) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_STATUS_OK;
}
