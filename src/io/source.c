/*
 * source.c — weights read tensor by tensor from where they lie. A source is a list of tensors
 * under this model's names (a Hugging Face checkpoint's converted names, or a moe checkpoint's),
 * each the concatenation of pieces: runs of elements of mapped files (F32, BF16 or F16),
 * converted to float when read. Nothing is read until a tensor is: opening one checks names,
 * shapes and dtypes from the headers only. Reading releases the mapped pages it went through, so
 * a conversion holds about one tensor, not the model.
 *
 *   moe_import          a moe checkpoint written from a source, one tensor at a time
 *   moe__source_fill    every tensor of a model filled from a source (moe_hf_load)
 */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"
#include "model/backend.h"

#include <errno.h>
#include <math.h>
#include <string.h>

moe__src_tensor *moe__source_add(moe__source *s, const char *name, int ndim, const int64_t *shape) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 64;
        moe__src_tensor *t = realloc(s->t, (size_t)cap * sizeof *t);
        if (!t) return NULL;
        s->t = t;
        s->cap = cap;
    }
    moe__src_tensor *t = &s->t[s->n];
    memset(t, 0, sizeof *t);
    if (!(t->info.name = strdup(name))) return NULL;
    t->info.ndim = ndim;
    t->info.numel = 1;
    for (int d = 0; d < ndim; d++) t->info.numel *= (t->info.shape[d] = shape[d]);
    t->info.layer = -1;
    s->n++;
    return t;
}

moe__src_tensor *moe__source_find(const moe__source *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->t[i].info.name, name)) return &s->t[i];
    return NULL;
}

moe_status moe__source_piece(moe__src_tensor *t, int at, const moe__st_tensor *st, const moe__st_file *f, int64_t first,
                             int64_t n) {
    char dt = !strcmp(st->dtype, "F32") ? 'f' : !strcmp(st->dtype, "BF16") ? 'b' : !strcmp(st->dtype, "F16") ? 'h' : 0;
    if (!dt)
        return moe__err(MOE_STATUS_FORMAT, "tensor '%s' is %s; moe reads F32, BF16 and F16", st->name, st->dtype);
    if (at >= t->cap) {
        int cap = at + 1 > 2 * t->cap ? at + 1 : 2 * t->cap;
        moe__piece *p = realloc(t->p, (size_t)cap * sizeof *p);
        if (!p) return moe__err(MOE_STATUS_NOMEM, "out of memory");
        memset(p + t->cap, 0, (size_t)(cap - t->cap) * sizeof *p);
        t->p = p;
        t->cap = cap;
    }
    int es = dt == 'f' ? 4 : 2;
    t->p[at] = (moe__piece){st->data + first * es, n, dt, f ? f->buf : NULL, f ? f->map_len : 0};
    if (at >= t->np) t->np = at + 1;
    return MOE_STATUS_OK;
}

void moe__source_free(moe__source *s) {
    for (int i = 0; i < s->n; i++) {
        free((char *)s->t[i].info.name);
        free(s->t[i].p);
    }
    free(s->t);
    for (int i = 0; i < s->n_files; i++) moe__st_free(&s->files[i]);
    free(s->files);
    moe_model_free(s->model);
    memset(s, 0, sizeof *s);
}

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

void moe__source_read(const moe__src_tensor *t, int p0, int np, float *dst) {
    for (int k = p0; k < p0 + np; k++) {
        const moe__piece *p = &t->p[k];
        if (p->dtype == 'f') {
            memcpy(dst, p->data, (size_t)p->n * 4);
        } else {
            for (int64_t i = 0; i < p->n; i++) {
                uint16_t v = (uint16_t)(p->data[2 * i] | (p->data[2 * i + 1] << 8)); // little-endian, maybe unaligned
                dst[i] = p->dtype == 'b' ? moe__f32_of_bf16(v) : half_to_f32(v);
            }
        }
        moe__map_release(p->map, p->map_len, p->data, (size_t)p->n * (p->dtype == 'f' ? 4 : 2));
        dst += p->n;
    }
}

moe_status moe__ckpt_source(const char *path, moe__source *out) {
    memset(out, 0, sizeof *out);
    moe_status st = moe_model_load(path, 0, &out->model); // the weights only
    const moe_model *m = out->model;
    if (st == MOE_STATUS_OK) out->vocab = moe_model_config(m)->vocab_size;
    for (int i = 0; st == MOE_STATUS_OK && i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *ti = moe_model_tensor(m, i);
        moe__src_tensor *t = moe__source_add(out, ti->name, ti->ndim, ti->shape);
        if (!t || !(t->p = calloc(1, sizeof *t->p))) {
            st = moe__err(MOE_STATUS_NOMEM, "out of memory");
            break;
        }
        t->info.layer = ti->layer;
        t->info.group = ti->group;
        t->np = t->cap = 1;
        t->p[0] = (moe__piece){(const uint8_t *)(m->params + ti->offset), ti->numel, 'f', m->map, m->map_len};
    }
    if (st != MOE_STATUS_OK) moe__source_free(out);
    return st;
}

moe_status moe__source_fill(moe_model *m, const moe__source *s, const char *origin) {
    int ep, rank;
    moe__model_ep(m, &ep, &rank);
    for (int i = 0; i < s->n; i++)
        if (!moe_model_find(m, s->t[i].info.name))
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is not part of this model's config", origin,
                            s->t[i].info.name);
    for (int i = 0; i < moe_model_n_tensors(m); i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        const moe__src_tensor *x = moe__source_find(s, t->name);
        if (!x) return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is missing", origin, t->name);
        int expert = t->group == MOE_GROUP_EXPERT;
        int same = x->info.ndim == t->ndim && x->info.shape[0] == t->shape[0] * (expert ? ep : 1);
        for (int d = 1; same && d < t->ndim; d++) same = x->info.shape[d] == t->shape[d];
        if (!same) {
            char a[96], b[96];
            moe__shape_str(x->info.shape, x->info.ndim, a, sizeof a);
            moe__shape_str(t->shape, t->ndim, b, sizeof b);
            return moe__err(MOE_STATUS_FORMAT, "'%s': tensor '%s' is %s; the config needs %s%s", origin, t->name, a, b,
                            expert && ep > 1 ? " on each of the expert-parallel ranks" : "");
        }
        // this rank's experts of a stacked tensor (one piece per expert), else every piece
        if (expert && x->np == x->info.shape[0])
            moe__source_read(x, (int)(rank * t->shape[0]), (int)t->shape[0], m->params + t->offset);
        else if (expert && ep > 1)
            return moe__err(MOE_STATUS_ARG, "'%s': tensor '%s' is not split by expert: load it on one process", origin,
                            t->name);
        else moe__source_read(x, 0, x->np, m->params + t->offset);
    }
    return m->be->from_host(m, MOE_BUF_PARAMS);
}

/* The values of a tensor that starts fresh (a router, a noise projection, a selection bias):
 * its initialisation, drawn from a generator seeded by (seed, its index) alone, so that it does
 * not depend on the other tensors. */
static void init_fresh(const moe_model *m, int i, uint64_t seed, float *dst) {
    const moe__tensor *t = &m->tensors[i];
    moe__rng r;
    moe__rng_seed(&r, seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1)));
    float std = t->init == MOE_INIT_ROUTER ? m->cfg.router_init_std : m->cfg.init_std;
    if (t->init == MOE_INIT_PROJ) std = m->cfg.init_std / sqrtf(2.0f * (float)m->cfg.n_layer);
    for (int64_t j = 0; j < t->info.numel; j++)
        dst[j] = t->init == MOE_INIT_ONE ? 1.0f : t->init == MOE_INIT_ZERO ? 0.0f : std * moe__rng_normal(&r);
}

moe_status moe_import(const char *src, const moe_config *c, uint64_t seed, const char *out, moe_init_report *report) {
    moe_model *m = NULL; // the table only: no parameters, no activations
    moe__source s;
    memset(&s, 0, sizeof s);
    moe_status st = moe__model_create(c, 1, MOE__MODEL_TABLE, &m);
    if (st == MOE_STATUS_OK) st = moe__open_source(src, &s);
    int n = m ? moe_model_n_tensors(m) : 0;
    const moe_tensor_info **infos = malloc((size_t)(s.n ? s.n : 1) * sizeof *infos);
    int *plan = malloc((size_t)(n ? n : 1) * sizeof *plan);
    uint8_t *up = malloc((size_t)(n ? n : 1));
    moe__st_entry *e = calloc((size_t)(n ? n : 1), sizeof *e);
    char *cfg = m ? moe_config_to_json(c) : NULL;
    float *buf = NULL;
    if (st == MOE_STATUS_OK && (!infos || !plan || !up || !e || !cfg)) st = moe__err(MOE_STATUS_NOMEM, "out of memory");
    for (int i = 0; i < s.n && st == MOE_STATUS_OK; i++) infos[i] = &s.t[i].info;
    if (st == MOE_STATUS_OK && s.vocab != c->vocab_size)
        st = moe__err(MOE_STATUS_CONFIG, "import: vocab_size %d differs from the source's %d", c->vocab_size, s.vocab);
    if (st == MOE_STATUS_OK) st = moe__init_plan(m, infos, s.n, plan, up, report);
    int64_t largest = 1;
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        e[i] = (moe__st_entry){t->name, "F32", t->ndim, {t->shape[0], t->shape[1], t->shape[2]}, NULL};
        largest = t->numel > largest ? t->numel : largest;
    }
    if (st == MOE_STATUS_OK && !(buf = malloc((size_t)largest * sizeof(float))))
        st = moe__err(MOE_STATUS_NOMEM, "import: out of memory (a tensor of %lld floats)", (long long)largest);
    // the checkpoint moe_model_save writes at step 0, made one tensor at a time, in a directory made
    // now that the source checks out
    char *dir = st == MOE_STATUS_OK ? strdup(out) : NULL, *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash) *slash = 0;
    if (slash && slash != dir && moe__mkdir_p(dir) != 0)
        st = moe__err(MOE_STATUS_IO, "import: cannot create '%s': %s", dir, strerror(errno));
    free(dir);
    moe__st_out o;
    int opened = st == MOE_STATUS_OK && (st = moe__ckpt_out_open(&o, out, e, n, cfg, 0, NULL, NULL)) == MOE_STATUS_OK;
    for (int i = 0; i < n && st == MOE_STATUS_OK; i++) {
        const moe_tensor_info *t = moe_model_tensor(m, i);
        if (plan[i] < 0) init_fresh(m, i, seed, buf);
        else moe__source_read(&s.t[plan[i]], 0, s.t[plan[i]].np, buf);
        int64_t per = up[i] ? infos[plan[i]]->numel : t->numel;
        for (int64_t x = 0; x < (up[i] ? t->shape[0] : 1) && st == MOE_STATUS_OK; x++) // an upcycled expert: each a copy
            st = moe__st_out_write(&o, buf, (size_t)per * sizeof(float));
    }
    if (opened && st == MOE_STATUS_OK) st = moe__st_out_close(&o);
    else if (opened) moe__st_out_abort(&o);
    free(buf);
    free(cfg);
    free(e);
    free(up);
    free(plan);
    free(infos);
    moe__source_free(&s);
    moe_model_free(m);
    return st;
}
