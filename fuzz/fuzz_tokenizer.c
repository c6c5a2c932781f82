/* fuzz_tokenizer.c — the tokenizer (src/tok/): the first input byte chooses
 *   0: the rest is a tokenizer.json to load (then a short text is encoded and decoded with it);
 *   1: the rest is text for a byte-level BPE (GPT-2 style: ByteLevel with its regex, added tokens
 *      with lstrip/rstrip/single_word), which must decode back to itself when it is valid UTF-8;
 *   2: the same text through a Llama-3 style Split + ByteLevel, with NFC;
 *   3: text for a SentencePiece-style BPE with byte fallback (Prepend/Replace, ByteFallback,
 *      Fuse, Strip decoders);
 *   4: text for a Metaspace one with unk and fuse_unk, no byte fallback.
 * The tokenizers are built here from their JSON (the byte-level vocabularies hold all 256 byte
 * characters and a few merges). */
#define _GNU_SOURCE /* memmem */
#include "moe.h"
#include "fuzz_common.h"
#include "tok/tok.h"

static moe_tokenizer *tk[5];

static void put(char **p, const char *s) {
    size_t n = strlen(s);
    memcpy(*p, s, n);
    *p += n;
}

/* {"token": id, ...} of the 256 byte characters and extra, as JSON escaped strings */
static char *byte_vocab(char *p, const char *const *extra, int n_extra) {
    char buf[64];
    put(&p, "{");
    for (int b = 0; b < 256; b++) {
        int l;
        const char *c = moe__tk_byte_char(b, &l);
        put(&p, b ? ",\"" : "\"");
        if (c[0] == '"' || c[0] == '\\') put(&p, "\\");
        memcpy(p, c, (size_t)l), p += l;
        snprintf(buf, sizeof buf, "\":%d", b);
        put(&p, buf);
    }
    for (int i = 0; i < n_extra; i++) {
        snprintf(buf, sizeof buf, ",\"%s\":%d", extra[i], 256 + i);
        put(&p, buf);
    }
    put(&p, "}");
    return p;
}

static moe_tokenizer *load_json(const char *json) {
    const char *path = fuzz_file((const uint8_t *)json, strlen(json), "-tok.json");
    moe_tokenizer *t = NULL;
    if (moe_tokenizer_load(path, &t) != MOE_STATUS_OK) {
        fprintf(stderr, "fuzz_tokenizer: a built-in tokenizer does not load: %s\n", moe_last_error());
        abort();
    }
    return t;
}

static void init(void) {
    static char json[65536];
    static const char *const extra[] = {"Ġt", "he", "Ġthe", "in", "Ġa", "er", "Ġs", "Ġthe Ġ"};
    static const char added[] =
        "\"added_tokens\":[{\"id\":300,\"content\":\"<|endoftext|>\",\"special\":true,\"lstrip\":false,\"rstrip\":false,"
        "\"single_word\":false,\"normalized\":false},{\"id\":301,\"content\":\"<mask>\",\"special\":true,\"lstrip\":true,"
        "\"rstrip\":true,\"single_word\":false,\"normalized\":false},{\"id\":302,\"content\":\"word\",\"special\":false,"
        "\"lstrip\":false,\"rstrip\":false,\"single_word\":true,\"normalized\":true}]";
    static const char merges[] = "\"merges\":[\"Ġ t\",\"h e\",\"Ġt he\",\"i n\",\"Ġ a\",\"e r\",\"Ġ s\"]";
    for (int k = 1; k <= 2; k++) {
        char *p = json;
        put(&p, "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,");
        put(&p, added);
        put(&p, k == 1 ? ",\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
                       : ",\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\","
                         "\"pattern\":{\"Regex\":\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},"
                         "\"behavior\":\"Isolated\",\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false}]},");
        put(&p, "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<|endoftext|>\",\"type_id\":0}},"
                "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<|endoftext|>\":{\"id\":\"<|endoftext|>\","
                "\"ids\":[300],\"tokens\":[\"<|endoftext|>\"]}}},\"decoder\":{\"type\":\"ByteLevel\"},");
        put(&p, k == 1 ? "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"vocab\":"
                       : "\"model\":{\"type\":\"BPE\",\"ignore_merges\":true,\"vocab\":");
        p = byte_vocab(p, extra, 7);
        put(&p, ",");
        put(&p, merges);
        put(&p, "}}");
        *p = 0;
        tk[k] = load_json(json);
    }
    // SentencePiece-style: letters, ▁, pieces, the 256 byte tokens
    for (int k = 3; k <= 4; k++) {
        char *p = json, buf[64];
        int id = 0;
        put(&p, "{\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},{\"id\":1,\"content\":\"<s>\",\"special\":true},"
                "{\"id\":2,\"content\":\"</s>\",\"special\":true}],");
        put(&p, k == 3 ? "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"▁\"},{\"type\":\"Replace\","
                         "\"pattern\":{\"String\":\" \"},\"content\":\"▁\"}]},\"pre_tokenizer\":null,"
                         "\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"▁\"},\"content\":\" \"},"
                         "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]},"
                       : "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"▁\",\"prepend_scheme\":\"first\",\"split\":true},"
                         "\"decoder\":{\"type\":\"Metaspace\",\"replacement\":\"▁\",\"prepend_scheme\":\"first\",\"split\":true},");
        put(&p, "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
                "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[1],\"tokens\":[\"<s>\"]}}},");
        put(&p, k == 3 ? "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"fuse_unk\":true,\"unk_token\":\"<unk>\",\"vocab\":{"
                       : "\"model\":{\"type\":\"BPE\",\"byte_fallback\":false,\"fuse_unk\":true,\"unk_token\":\"<unk>\",\"vocab\":{");
        put(&p, "\"<unk>\":0,\"<s>\":1,\"</s>\":2");
        id = 3;
        for (int b = 0; b < 256 && k == 3; b++) {
            snprintf(buf, sizeof buf, ",\"<0x%02X>\":%d", b, id++);
            put(&p, buf);
        }
        for (const char *c = "abcdefghijklmnopqrstuvwxyz"; *c; c++) {
            snprintf(buf, sizeof buf, ",\"%c\":%d", *c, id++);
            put(&p, buf);
        }
        static const char *const pieces[] = {"▁", "▁t", "he", "▁the", "in", "▁a", "▁▁"};
        for (int i = 0; i < 7; i++) {
            snprintf(buf, sizeof buf, ",\"%s\":%d", pieces[i], id++);
            put(&p, buf);
        }
        put(&p, "},\"merges\":[[\"▁\",\"t\"],[\"h\",\"e\"],[\"▁t\",\"he\"],[\"i\",\"n\"],[\"▁\",\"a\"],[\"▁\",\"▁\"]]}}");
        *p = 0;
        tk[k] = load_json(json);
    }
}

static void run(const moe_tokenizer *t, const uint8_t *data, size_t size, int check_roundtrip) {
    int *ids = NULL;
    size_t n = 0, cap = 0;
    if (moe_tokenizer_encode(t, (const char *)data, size, 1, &ids, &n, &cap) != MOE_STATUS_OK) abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= moe_tokenizer_vocab_size(t)) abort();
    char *text;
    size_t len;
    if (moe_tokenizer_decode(t, ids, n, 1, &text, &len) != MOE_STATUS_OK) abort();
    if (check_roundtrip) { // valid UTF-8 without the added tokens' text decodes to itself
        int valid = 1, has_added = memmem(data, size, "<|endoftext|>", 13) || memmem(data, size, "<mask>", 6) ||
                                    memmem(data, size, "word", 4);
        for (size_t i = 0; i < size && valid;) {
            int l = moe__tk_utf8_len(data + i, size - i);
            valid = l > 0;
            i += (size_t)l;
        }
        if (valid && !has_added && (len != size || memcmp(text, data, size))) abort();
    }
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk[1]) init();
    if (size == 0) return 0;
    int mode = data[0] % 5;
    data++, size--;
    if (mode == 0) {
        const char *path = fuzz_file(data, size, "-in.json");
        moe_tokenizer *t = NULL;
        if (moe_tokenizer_load(path, &t) == MOE_STATUS_OK) {
            static const uint8_t sample[] = "Hello world <s> \xff\xfe caf\xc3\xa9 12345  \n\t end";
            run(t, sample, sizeof sample - 1, 0);
            moe_tokenizer_free(t);
        }
        return 0;
    }
    run(tk[mode], data, size, mode == 1);
    return 0;
}
