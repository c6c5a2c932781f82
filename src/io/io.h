/*
 * io.h — files (io/): the safetensors reader and writer, checkpoints of the model's tensor table
 * (whole, or sharded by expert-parallel rank), and TensorBoard event files. The Hugging Face
 * import and export and the data loaders are public (include/moe.h). Not installed.
 */
#ifndef MOE_IO_H
#define MOE_IO_H

#include "core/core.h"

#include <stdint.h>

/* ---------------------------------------------------------------- safetensors (safetensors.c) */

typedef struct {
    char *name;
    char dtype[8];               /* "F32", "I32", ... */
    int ndim;
    int64_t shape[8];
    int64_t nbytes;
    const uint8_t *data;         /* into the file buffer, or own */
    uint8_t *own;                /* data this entry owns (tensors built in memory), or NULL */
} moe__st_tensor;

typedef struct {
    char *buf;                   /* whole file (NULL for a set built in memory): mapped, or read */
    size_t len;
    size_t map_len;              /* buf is a private mapping of this length (0: read into memory) */
    int n;
    moe__st_tensor *t;
    void *metadata;              /* the "__metadata__" object (a cJSON, parsed once), or NULL */
    const uint8_t *data;         /* the data region (after the header), data_len bytes */
    uint64_t data_len;
} moe__st_file;

/* Opens a file whole: mapped (private, copy on write) where it can be, else read. */
moe_status moe__st_read(const char *path, moe__st_file *out);
/* Only the header: names, dtypes, shapes, offsets (checked against the file size) and metadata;
 * the tensors' data pointers are NULL. For reading a config without the weights. */
moe_status moe__st_read_header(const char *path, moe__st_file *out);
void moe__st_free(moe__st_file *f);
/* FNV-1a 64 of [p, p + n) inside f's data, from basis, releasing mapped pages as it goes. */
uint64_t moe__st_fnv(const moe__st_file *f, uint64_t basis, const void *p, size_t n);
const moe__st_tensor *moe__st_find(const moe__st_file *f, const char *name);
/* Metadata value (a string) by key, or NULL. Caller frees. */
char *moe__st_meta(const moe__st_file *f, const char *key);

typedef struct {
    const char *name;
    const char *dtype;           /* "F32" or "I32" */
    int ndim;
    int64_t shape[4];
    const void *data;
} moe__st_entry;

/* A safetensors file written as a stream: open writes the header of the n entries (their data
 * pointers unused), then their data follows in order through write, and close checks the count
 * and commits the file atomically (abort drops it). With hash_key, metadata hash_key is the
 * FNV-1a 64 of the data (16 hex digits), computed as it is written and patched in at the close. */
typedef struct {
    moe__afile f;
    uint64_t total, done, sum;
    int64_t hash_at;             /* byte of the hash's value in the file, or -1 */
} moe__st_out;
moe_status moe__st_out_open(moe__st_out *o, const char *path, const moe__st_entry *e, int n, const char *const *meta_keys,
                            const char *const *meta_vals, int n_meta, const char *hash_key);
moe_status moe__st_out_write(moe__st_out *o, const void *data, size_t n);
moe_status moe__st_out_close(moe__st_out *o);
void moe__st_out_abort(moe__st_out *o);
/* Writes a safetensors file atomically; meta_keys/meta_vals are n_meta string pairs. */
moe_status moe__st_write(const char *path, const moe__st_entry *e, int n, const char *const *meta_keys,
                         const char *const *meta_vals, int n_meta);

/* ---------------------------------------------------------------- checkpoints (checkpoint.c) */

/* The config (and step, when not NULL) stored in an opened checkpoint, checked. */
moe_status moe__checkpoint_config_of(const moe__st_file *f, const char *path, moe_config *out, int64_t *step);
/* Copies every tensor of m's table from f, checking names, dtypes and shapes. */
moe_status moe__model_load_weights(moe_model *m, const moe__st_file *f, const char *path);
/* Multi-rank checkpoints: DIR/KIND-J-of-EP.stepS.{safetensors,bin} for KIND experts or state,
 * into out (n bytes); MOE_STATUS_ARG (moe__pathf) when it does not fit. */
moe_status moe__shard_name(char *out, size_t n, const char *dir, const char *kind, int j, int ep, int64_t step);
/* Opens a moe checkpoint for writing (moe__st_out): its n tensors e, the metadata every
 * checkpoint has (format, version, config JSON cfg, step, data_fnv1a64) and one more pair when
 * extra_key is not NULL. */
moe_status moe__ckpt_out_open(moe__st_out *o, const char *path, const moe__st_entry *e, int n, const char *cfg,
                              int64_t step, const char *extra_key, const char *extra_val);
/* The ranks a checkpoint's experts are sharded over: its metadata expert_shards (*W; 0 when
 * absent: the experts are in the file itself); MOE_STATUS_FORMAT naming a bad value. */
moe_status moe__checkpoint_shards(const moe__st_file *f, const char *path, int *W);
/* Whether shard j of W (the fraction [j, j+1)/W of each layer's experts) overlaps rank r of ep. */
static inline int moe__shard_overlaps(int j, int W, int r, int ep) {
    return (int64_t)j * ep < (int64_t)(r + 1) * W && (int64_t)(j + 1) * ep > (int64_t)r * W;
}
moe_status moe__model_save_experts(const moe_model *m, const char *path, int64_t step);
/* model.safetensors of a multi-rank checkpoint: every tensor but the experts, expert_shards = ep. */
moe_status moe__model_save_replicated(const moe_model *m, const char *path, int64_t step, int ep);

/* ---------------------------------------------------------------- TensorBoard (tensorboard.c) */

/* TensorBoard event files (tensorboard.c): open one in dir for a run whose next step is
 * first_step + 1 (first_step > 0: a resumed run; earlier files' steps from there on are dropped
 * by TensorBoard); add values, then moe__tb_step writes them as one event of that step. Write
 * errors are kept and reported by moe__tb_flush. */
typedef struct moe__tb moe__tb;
moe_status moe__tb_open(const char *dir, int64_t first_step, moe__tb **out);
void moe__tb_scalar(moe__tb *tb, const char *tag, float v);
/* n values as a histogram with buckets (limits[b-1], limits[b]]. */
void moe__tb_histogram(moe__tb *tb, const char *tag, const double *x, int n, const double *limits, int n_limits);
void moe__tb_step(moe__tb *tb, int64_t step);
moe_status moe__tb_flush(moe__tb *tb);
void moe__tb_close(moe__tb *tb);

/* One training window of d (data.c): tok = tokens [start, start + T), tgt = [start + 1, start + T]. */
moe_status moe__dataset_window(const moe_dataset *d, int64_t start, int T, int *tok, int *tgt);

/* ---------------------------------------------------------------- tensor sources (source.c) */

/* A run of n elements of a tensor, in a file's data (mapped: map, map_len; else map NULL). */
typedef struct {
    const uint8_t *data;
    int64_t n;
    char dtype;                  /* 'f' F32, 'b' BF16, 'h' F16 */
    const void *map;
    size_t map_len;
} moe__piece;

/* A source tensor under this model's name: info (name, ndim, shape, numel; layer and group
 * when known), its elements the concatenation of np pieces (a stacked expert tensor: one piece
 * per expert). */
typedef struct {
    moe_tensor_info info;
    moe__piece *p;
    int np, cap;
} moe__src_tensor;

typedef struct {
    moe__src_tensor *t;
    int n, cap;
    int vocab;                   /* the source's vocab_size */
    moe__st_file *files;         /* the files the pieces lie in, mapped */
    int n_files;
    moe_model *model;            /* a moe checkpoint's model, whose parameters the pieces are */
} moe__source;

moe__src_tensor *moe__source_add(moe__source *s, const char *name, int ndim, const int64_t *shape);
moe__src_tensor *moe__source_find(const moe__source *s, const char *name);
/* Piece `at` of t: elements [first, first + n) of tensor st of file f (FORMAT for a dtype moe does
 * not read). */
moe_status moe__source_piece(moe__src_tensor *t, int at, const moe__st_tensor *st, const moe__st_file *f, int64_t first,
                             int64_t n);
/* Pieces [p0, p0 + np) of t as floats into dst; their mapped pages are released after. */
void moe__source_read(const moe__src_tensor *t, int p0, int np, float *dst);
void moe__source_free(moe__source *s);
/* The source of a moe checkpoint (its model, loaded for inference, mapped). */
moe_status moe__ckpt_source(const char *path, moe__source *out);
/* A tensor name of the Qwen2-MoE and OLMoE families (mlp.gate, mlp.shared_expert,
 * mlp.shared_expert_gate) as moe names it (block_sparse_moe.*), or back with to_hf; other names
 * as they are. Per-expert names are not renamed here. Into buf (n bytes). */
const char *moe__hf_rename(char *buf, size_t n, const char *name, int to_hf);
/* The source of a Hugging Face directory (hf_import.c), or else of a moe checkpoint. */
moe_status moe__open_source(const char *path, moe__source *out);
/* Every tensor of m from s by name (this rank's experts of stacked ones), shapes checked;
 * origin names the source in errors. */
moe_status moe__source_fill(moe_model *m, const moe__source *s, const char *origin);

#endif
