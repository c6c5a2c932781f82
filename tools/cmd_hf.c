/*
 * cmd_hf.c — the commands between moe and other checkpoints: `moe export` (a Hugging Face
 * Mixtral, Qwen2-MoE or OLMoE directory of a model) and `moe import` (a model from a Hugging Face
 * directory or another moe checkpoint, with sparse upcycling), and the model sources that
 * `moe import` and `moe train --init-from` share.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- model sources */

model_source source_open(const char *path, moe_config *c) {
    char *config_json = path_in(path, "config.json"); // HF directories have config.json
    model_source s = {path, access(config_json, F_OK) == 0, moe_config_default()};
    free(config_json);
    check(s.hf ? moe_hf_config(path, &s.cfg) : moe_checkpoint_config(path, &s.cfg, NULL));
    moe_config train = moe_config_default();
    *c = s.cfg;
    moe_config_take_training(c, &train);
    return s;
}

moe_model *source_load(const model_source *s, int seq_len) {
    moe_model *m;
    if (s->hf) {
        moe_config c = s->cfg;
        if (seq_len < c.seq_len) c.seq_len = seq_len; // shapes do not depend on it
        check(moe_hf_load(s->path, &c, 1, &m));
    } else {
        check(moe_model_load(s->path, 1, &m));
    }
    return m;
}

void print_init_report(const char *src, const moe_init_report *r) {
    printf("moe: initialised from %s: %d tensors copied", src, r->copied);
    if (r->upcycled) printf(", %d layers upcycled (dense FFN copied into every expert)", r->upcycled);
    if (r->fresh) printf(", %d router tensors fresh", r->fresh);
    printf("\n");
}

/* ---------------------------------------------------------------- export */

typedef struct {
    const char *ckpt, *out, *dtype, *family, *shard;
} export_opts;

#define OPT(field) offsetof(export_opts, field)
static const cli_flag export_flags[] = {
    {"--ckpt", CLI_STRING, "DIR", OPT(ckpt), .help = "run directory or .safetensors file", .required = 1},
    {"--out", CLI_STRING, "HFDIR", OPT(out), .help = "the Hugging Face directory to write", .required = 1},
    {"--dtype", CLI_STRING, "TYPE", OPT(dtype), .help = "f32 or bf16 (default f32)"},
    {"--family", CLI_STRING, "NAME", OPT(family), .help = "auto, mixtral, qwen2_moe or olmoe (default auto)"},
    {"--max-shard-size", CLI_STRING, "SIZE", OPT(shard),
     .help = "shard the weights above SIZE (bytes, or with KB, MB, GB: powers of\n"
             "1000 as transformers counts them; default 5GB), with\n"
             "model.safetensors.index.json"},
};
#undef OPT

static int run_export(void *opts) {
    const export_opts *o = opts;
    const char *written = NULL;
    if (strcmp(o->dtype, "f32") && strcmp(o->dtype, "bf16"))
        die(2, "export: --dtype must be f32 or bf16, got '%s'", o->dtype);
    if (strcmp(o->family, "auto") && strcmp(o->family, "mixtral") && strcmp(o->family, "qwen2_moe") &&
        strcmp(o->family, "olmoe"))
        die(2, "export: --family must be auto, mixtral, qwen2_moe or olmoe, got '%s'", o->family);
    int64_t shard = 0;
    if (o->shard && (shard = parse_size(o->shard)) <= 0)
        die(2, "export: --max-shard-size must be a size such as 2000000000, 500MB or 5GB, got '%s'", o->shard);
    moe_model *m;
    check(moe_model_load(o->ckpt, 0, &m)); // the weights only
    check(moe_export_hf(m, o->out, o->family, !strcmp(o->dtype, "bf16"), shard, &written));
    const char *copied = copy_companions(o->ckpt, o->out);
    char *index = path_in(o->out, "model.safetensors.index.json");
    printf("moe: wrote %s/config.json and %s/%s (%s, %s)%s%s\n", o->out, o->out,
           exists(index) ? "model.safetensors.index.json with its shards" : "model.safetensors", written, o->dtype,
           copied[0] ? ", with " : "", copied);
    free(index);
    moe_model_free(m);
    return 0;
}

const cli_command moe_cmd_export = {
    "export",
    "a Hugging Face checkpoint (Mixtral, Qwen2-MoE, OLMoE) of a model",
    "export --ckpt DIR --out HFDIR [--dtype f32|bf16] [--family auto|mixtral|qwen2_moe|olmoe] [--max-shard-size SIZE]",
    "Writes a Hugging Face checkpoint (config.json + model.safetensors) that transformers loads, when\n"
    "the model maps onto a family exactly (the same logits), otherwise says why not; DIR's\n"
    "tokenizer.json, tokenizer_config.json and generation_config.json go with it:\n"
    "  mixtral    MixtralForCausalLM: every layer MoE, softmax top-K renormalised, no shared experts\n"
    "  qwen2_moe  Qwen2MoeForCausalLM: dense layers, shared experts (gated or not, any width),\n"
    "             q/k/v biases, top-K renormalised or not\n"
    "  olmoe      OlmoeForCausalLM: QK-norm, every layer MoE, no shared experts\n"
    "  auto       the first of these that maps (the default)\n"
    "None takes sigmoid scores, a gate scale, a selection bias or per-layer expert counts.\n",
    CLI_FLAGS(export_flags),
    NULL,
    sizeof(export_opts),
    &(export_opts){.dtype = "f32", .family = "auto"},
    run_export,
};

/* ---------------------------------------------------------------- import */

typedef struct {
    const char *from, *out, *config;
    cli_list sets;
    long seed;
} import_opts;

#define OPT(field) offsetof(import_opts, field)
static const cli_flag import_flags[] = {
    {"--from", CLI_STRING, "SRC", OPT(from), .help = "a Hugging Face directory or a moe checkpoint", .required = 1},
    {"--out", CLI_STRING, "DIR", OPT(out), .help = "directory to write model.safetensors in (created if missing)",
     .required = 1},
    {"--config", CLI_STRING, "FILE", OPT(config), .help = "JSON object of config keys (moe train --help)"},
    {"--set", CLI_LIST, "KEY=VALUE", OPT(sets), .help = "set one config key; repeatable, applied after --config"},
    {"--seed", CLI_INT, "N", OPT(seed),
     .help = "initialisation seed of what SRC does not give (routers;\n"
             "default 1337)",
     .lo = 0, .hi = INT_MAX},
};
#undef OPT

static int run_import(void *opts) {
    const import_opts *o = opts;
    moe_config c;
    source_open(o->from, &c);
    apply_keys(&c, o->config, &o->sets);
    check(moe_config_validate(&c));
    char *path = path_in(o->out, "model.safetensors"); // moe_import makes the directory once SRC checks out
    moe_init_report r;
    check(moe_import(o->from, &c, (uint64_t)o->seed, path, &r));
    int n_moe = 0;
    for (int l = 0; l < c.n_layer; l++) n_moe += moe_config_layer_is_moe(&c, l);
    const char *copied = copy_companions(o->from, o->out);
    print_init_report(o->from, &r);
    printf("moe: wrote %s (%d of %d layers MoE)%s%s\n", path, n_moe, c.n_layer, copied[0] ? ", with " : "", copied);
    free(path);
    return 0;
}

const cli_command moe_cmd_import = {
    "import",
    "a model from a Hugging Face checkpoint or another model; upcycling",
    "import --from SRC --out DIR [--config FILE] [--set KEY=VALUE ...] [--seed N]",
    "Writes DIR/model.safetensors (a moe checkpoint at step 0) from SRC: a Hugging Face directory\n"
    "(config.json with model.safetensors or model.safetensors.index.json and its shards; F32, BF16\n"
    "or F16) of MixtralForCausalLM, Qwen2MoeForCausalLM (q/k/v biases, a gated shared expert of its\n"
    "own width, dense layers by decoder_sparse_step and mlp_only_layers) or OlmoeForCausalLM\n"
    "(QK-norm), or of LlamaForCausalLM / MistralForCausalLM (dense), or a moe checkpoint. The\n"
    "model keys come from SRC, then --config and --set may change them:\n"
    "\n"
    "  * keys that change no shape (seq_len, capacity_factor, routing details, losses) apply as set;\n"
    "  * sparse upcycling: --set moe_layers=all --set n_experts=8 on a dense SRC makes every FFN an\n"
    "    MoE layer whose experts all start as that FFN, with a fresh router (Komatsuzaki et al. 2022);\n"
    "    expert_hidden must equal SRC's ffn_hidden; with norm_topk=1 the model computes the same\n"
    "    function as SRC until trained;\n"
    "  * any other difference is an error naming the tensor.\n"
    "\n"
    "Grouped-query attention (num_key_value_heads < num_attention_heads) is kept: n_kv_head.\n"
    "seq_len defaults to max_position_embeddings capped at 4096 (and at sliding_window).\n"
    "SRC's tokenizer.json, tokenizer_config.json and generation_config.json are copied to DIR\n"
    "(moe sample and moe eval use the tokenizer).\n"
    "moe train --init-from SRC does the same as the start of a training run.\n",
    CLI_FLAGS(import_flags),
    NULL,
    sizeof(import_opts),
    &(import_opts){.seed = 1337},
    run_import,
};
