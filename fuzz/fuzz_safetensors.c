/* fuzz_safetensors.c — the safetensors reader (header length, JSON header, dtypes, shapes,
 * offsets; the whole file and the header alone must agree) and the checkpoint metadata on top of it (format, version, config, step). A small
 * enough config is also built into a model and loaded, through every name and shape check. */
#include "io/io.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_file(data, size, ".safetensors");
    moe__st_file f, h;
    int whole = moe__st_read(path, &f) == MOE_STATUS_OK;
    int head = moe__st_read_header(path, &h) == MOE_STATUS_OK; // as moe_checkpoint_config reads
    if (head != whole) abort(); // the header alone is judged as the whole file is
    if (head && (h.n != f.n || (!h.metadata) != (!f.metadata))) abort();
    if (head) moe__st_free(&h);
    if (!whole) return 0;
    for (int i = 0; i < f.n; i++) // every tensor the reader accepts lies inside the file
        if (f.t[i].nbytes && (f.t[i].data < (const uint8_t *)f.buf || f.t[i].data + f.t[i].nbytes > (const uint8_t *)f.buf + f.len))
            abort();
    moe_config c;
    int64_t step;
    if (moe__checkpoint_config_of(&f, path, &c, &step) == MOE_STATUS_OK && c.n_layer * c.n_embd <= 4096 &&
        (int64_t)c.vocab_size * c.n_embd <= 1 << 16 && c.n_experts * c.expert_hidden <= 4096 && c.seq_len <= 64) {
        c.batch_size = 1;
        moe_model *m = NULL;
        if (moe_model_create(&c, 1, &m) == MOE_STATUS_OK) moe__model_load_weights(m, &f, path);
        moe_model_free(m);
    }
    moe__st_free(&f);
    return 0;
}
