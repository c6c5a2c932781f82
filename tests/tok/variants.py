#!/usr/bin/python3
"""variants.py — writes OUT/NAME/ (tokenizer.json, tokenizer_config.json): the committed fixtures
with one component changed, covering what the fixtures themselves do not (every Split behaviour,
Unicode normalizers, Digits, added-token flags, templates, unk without byte fallback, a
SentencePiece vocabulary whose merges cross a word start, ...). Each must load in `tokenizers`;
tests/test_tokenizer.sh then compares moe with it as with the fixtures.

usage: variants.py FIXTURES OUT   (prints the names written)
"""
import copy
import json
import os
import sys

from tokenizers import Tokenizer


def split(pattern, behavior, invert=False, regex=True):
    return {"type": "Split", "pattern": {"Regex" if regex else "String": pattern}, "behavior": behavior,
            "invert": invert}


BL_NOREGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def template(single, specials):
    return {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": s, "type_id": 0}} if s != "$A" else {"Sequence": {"id": "A", "type_id": 0}}
                       for s in single],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {s: {"id": s, "ids": [i], "tokens": [s]} for s, i in specials.items()}}


def set_pre(p):
    return lambda j: j.__setitem__("pre_tokenizer", p)


def set_norm(n):
    return lambda j: j.__setitem__("normalizer", n)


def set_in(path, value):
    def f(j):
        d = j
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def hf_add(*tokens):
    """Added tokens as tokenizers adds them (the next free ids; a content already in the vocabulary
    keeps its id), so the file is one tokenizers itself would write."""
    def f(j):
        from tokenizers import AddedToken
        t = Tokenizer.from_str(json.dumps(j))
        t.add_tokens([AddedToken(c, special=False, normalized=n) for c, n in tokens])
        j.clear()
        j.update(json.loads(t.to_str()))
    return f


def cross_word(j):
    """A piece "s▁" merged before anything else: no cut before a word-start ▁ is exact any more."""
    v = j["model"]["vocab"]
    v["s▁"] = len(v)
    j["model"]["merges"].insert(0, "s ▁")


def no_meta_piece(j):
    """No token holds U+2581 and unknown characters fuse into one <unk>: "▁" is unknown too, so an
    unknown run may span a word start."""
    m = j["model"]
    m["byte_fallback"], m["fuse_unk"] = False, True
    keep = [t for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]) if "▁" not in t]
    m["vocab"] = {t: i for i, t in enumerate(keep)}
    m["merges"] = [x for x in m["merges"] if "▁" not in x]


def unreachable_piece(j):
    """ignore_merges with no pre-tokenizer: the whole text is the word, so a vocabulary entry that no
    merge reaches ("▁xyzzy") is taken only when it is the whole text."""
    j["model"]["ignore_merges"] = True
    j["model"]["vocab"]["▁xyzzy"] = len(j["model"]["vocab"])


def all_of(*fs):
    def f(j):
        for g in fs:
            g(j)
    return f


ALLSPLIT = r"[^\s]+|\s+"
VARIANTS = {
    # byte-level, from gpt2
    "gpt2_prefix_space": ("gpt2", set_pre({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                           "use_regex": True})),
    "gpt2_nfc": ("gpt2", set_norm({"type": "NFC"})),
    "gpt2_nfd": ("gpt2", set_norm({"type": "NFD"})),
    "gpt2_nfkc": ("gpt2", set_norm({"type": "NFKC"})),
    "gpt2_nfkd": ("gpt2", set_norm({"type": "NFKD"})),
    "gpt2_digits": ("gpt2", set_pre({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]})),
    "gpt2_digits_grouped": ("gpt2", set_pre({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False}, BL_NOREGEX]})),
    "gpt2_strip_flags": ("gpt2", all_of(
        set_in(["added_tokens", 0, "lstrip"], True), set_in(["added_tokens", 0, "rstrip"], True),
        set_in(["added_tokens", 1, "single_word"], True))),
    # "<|end" and "<|endoftext|>" overlap (the longest wins); "é" is already a byte-level token (id 166)
    "gpt2_overlapping_added": ("gpt2", hf_add(("<|end", False), ("endoftext|>", False), (" world", False),
                                              ("é", True))),
    "gpt2_bos_eos": ("gpt2", set_in(["post_processor"], template(["<|endoftext|>", "$A", "<|endoftext|>"],
                                                                   {"<|endoftext|>": 0}))),
    "gpt2_no_post": ("gpt2", set_in(["post_processor"], None)),
    "gpt2_post_bytelevel": ("gpt2", set_in(["post_processor"], {"type": "ByteLevel", "add_prefix_space": True,
                                                                "trim_offsets": False, "use_regex": True})),
    "gpt2_regex_replace": ("gpt2", set_norm({"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "#"},
        {"type": "Replace", "pattern": {"String": "the"}, "content": "THE"}]})),
    # byte-level with Split, from llama3
    "llama3_merges": ("llama3", set_in(["model", "ignore_merges"], False)),
    "split_removed": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(" ", "Removed", regex=False), BL_NOREGEX]})),
    "split_prev": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(r"\s", "MergedWithPrevious"), BL_NOREGEX]})),
    "split_next": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(r"\s", "MergedWithNext"), BL_NOREGEX]})),
    "split_contiguous": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(r"[,.!?]", "Contiguous"), BL_NOREGEX]})),
    "split_invert": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(r"\p{L}+", "Isolated", invert=True), BL_NOREGEX]})),
    "split_invert_removed": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [split(r"\p{L}+|\p{N}", "Removed", invert=True), BL_NOREGEX]})),
    "deepseek_v3_like": ("llama3", set_pre({"type": "Sequence", "pretokenizers": [
        split(r"\p{N}{1,3}", "Isolated"),
        split("[一-龥\u3040-ゟ゠-ヿ]+", "Isolated"),
        split(r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
              r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+", "Isolated"),
        BL_NOREGEX]})),
    # SentencePiece-style, from spm and spm_metaspace
    "spm_unk": ("spm", set_in(["model", "byte_fallback"], False)),
    "spm_unk_unfused": ("spm", all_of(set_in(["model", "byte_fallback"], False), set_in(["model", "fuse_unk"], False))),
    "spm_cross_word": ("spm", cross_word),
    "spm_unk_no_meta_piece": ("spm", no_meta_piece),
    "spm_ignore_merges": ("spm", unreachable_piece),
    "spm_bos_eos": ("spm", set_in(["post_processor"], template(["<s>", "$A", "</s>"], {"<s>": 1, "</s>": 2}))),
    "spm_added_normalized": ("spm", hf_add(("hello world", True), ("▁the▁", False))),
    "spm_nfkc": ("spm", set_norm({"type": "Sequence", "normalizers": [
        {"type": "NFKC"}, {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})),
    "spm_strip_decoder": ("spm", set_in(["decoder", "decoders", 3], {"type": "Strip", "content": " ", "start": 2, "stop": 0})),
    "meta_always": ("spm_metaspace", all_of(set_in(["pre_tokenizer", "prepend_scheme"], "always"),
                                           set_in(["decoder", "decoders", 0, "prepend_scheme"], "always"))),
    "meta_never": ("spm_metaspace", all_of(set_in(["pre_tokenizer", "prepend_scheme"], "never"),
                                          set_in(["decoder", "decoders", 0, "prepend_scheme"], "never"))),
    "meta_nosplit": ("spm_metaspace", set_in(["pre_tokenizer", "split"], False)),
    "meta_replace_decoder": ("spm_metaspace", set_in(["decoder"], {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})),
}


def main():
    fixtures, out = sys.argv[1:3]
    for name, (base, edit) in VARIANTS.items():
        with open(os.path.join(fixtures, base, "tokenizer.json"), encoding="utf-8") as f:
            j = json.load(f)
        with open(os.path.join(fixtures, base, "tokenizer_config.json"), encoding="utf-8") as f:
            config = f.read()
        j = copy.deepcopy(j)
        edit(j)
        s = json.dumps(j, ensure_ascii=False)
        Tokenizer.from_str(s)  # tokenizers reads it
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            f.write(s)
        with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(config)
        print(name)


if __name__ == "__main__":
    main()
