#!/usr/bin/python3
"""make_fixtures.py — trains the reference tokenizers that tests/test_tokenizer.sh checks moe's C
tokenizer (src/tok/) against, with Hugging Face `tokenizers` 0.19.1, and writes them beside this
script (committed; run again only to change them):

  gpt2/           GPT-2-style byte-level BPE (ByteLevel pre-tokenizer and decoder), vocab 2000,
                  <|endoftext|> at id 0 (BOS and EOS) and a non-special added token <|sep|>
  llama3/         Llama-3-style: Split(the Llama-3 regex, isolated) then ByteLevel(use_regex=False),
                  BPE with ignore_merges, special tokens after the vocabulary (3000 + 10)
  spm/            SentencePiece-style BPE with byte fallback as Llama-2 / Mistral v0.1 have it:
                  normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, the 256 <0xXX>
                  tokens at ids 3..258, decoder Replace + ByteFallback + Fuse + Strip; vocab 2000
  spm_metaspace/  the same vocabulary and merges as newer converters write it: no normalizer,
                  Metaspace(prepend_scheme="first") pre-tokenizer, decoder Metaspace + ByteFallback
                  + Fuse (Metaspace first: it drops "▁" from the first token only, which a fused
                  text would make the whole text)
  bpe512/         a 512-token byte-level BPE for the end-to-end test (shards, train, sample)
  pairs/          gpt2/ with its merges written as pairs (["a", "b"]), as tokenizers >= 0.20 does
  multilingual.txt  the multilingual test text (MULTI + MULTI_TEST_ONLY below)

Each directory also holds tokenizer_config.json (bos_token, eos_token, add_bos_token) as transformers
writes it. All train on one corpus: ../shared/data/tinyshakespeare.txt (the repository's sibling)
and MULTI repeated, so non-ASCII merges exist. Training is deterministic: the script trains every
tokenizer twice and stops if the two differ.

usage: /usr/bin/python3 tests/tok/make_fixtures.py [path/to/tinyshakespeare.txt]
"""
import json
import os
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Trained on (repeated) and tested: scripts, accents, emoji, digits, whitespace runs, contractions.
MULTI = """\
Français : À l'été, où êtes-vous ? Ça va très bien, merci ! L'œuvre de Molière est célèbre.
Deutsch: Grüße aus München! Die Straße ist schön, und der Bär fährt Fahrrad. Größenwahn.
Español: ¿Dónde está la biblioteca? ¡Mañana será otro día! El niño comió piñata.
Português: Não há razão para pânico; a canção é linda e a coração bate.
Ελληνικά: Καλημέρα κόσμε! Η γλώσσα μου έδωσαν ελληνική, το σπίτι φτωχικό.
Русский: Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.
Українська: Ґанок, їжак, єнот — це слова з літерами ґ, ї, є.
العربية: مرحبا بالعالم! اللغة العربية جميلة جدا، وأنا أحب القراءة.
עברית: שלום עולם! אני אוהב לקרוא ספרים בערב.
हिन्दी: नमस्ते दुनिया! मुझे हिन्दी पढ़ना पसंद है। संख्या १२३४५६
中文：你好，世界！我喜欢学习语言。今天天气很好，我们去公园散步吧。
日本語：こんにちは世界！カタカナとひらがな、漢字を使います。東京タワーへ行きましょう。
한국어: 안녕하세요 세계! 저는 한국어를 배우고 있습니다. 김치찌개가 맛있어요.
ภาษาไทย: สวัสดีชาวโลก ฉันชอบกินข้าวเหนียวมะม่วง
Emoji: 😀 😃 😄 👍🏽 👍🏿 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷 🇯🇵 ✨🎉
Combining: e\u0301 a\u0300 n\u0303 o\u0308 A\u030a Z\u0327 q\u0323\u0307 — café vs cafe\u0301.
Digits: 0 12 345 6789 1234567890 3.14159 2,718,281 ٠١٢٣٤٥٦٧٨٩ 2024-05-20 10:45:00
Whitespace:\tone tab,\t\ttwo tabs,  two spaces,     five spaces,\r\nCRLF line\r\n   indented
Trailing spaces here   \n\n\n  \t  \nafter blank lines.
Contractions: I'LL don't WE'RE it's You'd THEY'VE I'm she'S O'Neil can’t won’t rock'n'roll
Specials in text: <s> </s> <unk> <|endoftext|> <|begin_of_text|> <|end_of_text|> <|sep|> <|eot_id|>
Code: def f(x):\n    return x**2 + 1  # comment\nint main(void) { return 0; }\n"""

# Tested only: characters and sequences the tokenizers never saw (byte fallback, rare scripts).
MULTI_TEST_ONLY = """\
Rare: ሰላም ዓለም (Ge'ez) · გამარჯობა (Georgian) · வணக்கம் (Tamil) · ᚠᚢᚦᚨᚱᚲ (runes) · 𠀀𠀁𪜀 (CJK ext. B)
Math: ∀x∈ℝ, ∃y: x²+y²≤1 ⇒ ∫₀¹ f(x)dx ≈ π/4; ∑ᵢ aᵢ ≠ ∞. 𝔸𝔹ℂ 𝒜ℬ𝒞
Spaces: no-break\u00a0space, ideographic\u3000space, em\u2003space, line\u2028separator, zero\u200bwidth
Controls: bell\x07 vt\x0b ff\x0c us\x1f del\x7f bom\ufeff end
Variation: ☺︎ ☺️ ✌🏻✌🏼✌🏽✌🏾✌🏿 🧑🏽‍🚀 🫶 keycap 1️⃣ #️⃣ flags 🇺🇦🇧🇷🏴󠁧󠁢󠁳󠁣󠁴󠁿
Long digits: 31415926535897932384626433832795028841971 ١٢٣٤٥٦٧٨٩٠١٢
Many spaces:                                         then text\t\t\t\t\tand\r\n\r\n\r\n
Mixed case contractions: YOU'LL We'Ve HE'D it'S DON'T they'lL
Adjacent specials: <s><s></s><unk><|endoftext|><|endoftext|>text<|begin_of_text|><|sep|><|sep|>x
Unterminated specials: <s <|endoftext| |endoftext|> <|begin_of_text <0x41> <0xFF>
Unicode classes: nel\x85 ogham\u1680space mvs\u180e ⅫⅢ ½¾ x²³ ０１２３ ⑴⑵ ᛮ 𝟘𝟙 it'ſ it'K ǅemal İstanbul ıi ß ẞ ﬁ ﬀ
Compatibility: ＦＵＬＬ ｗｉｄｔｈ ｶﾀｶﾅ ㈱ ㎏ ℃ Å Ω ⁵ ₂ ︵ ﹏ …
Marks: Z͑̉͗ä̖́lͮ͒g̈o̐ 한 한 ‏RTL‮ reversed‬ 󠁁tag
Noncharacters: ﷐ ￿ 􏿿 private replacement�
Carriage: a\rb\r\r\nc \r
Literal metaspace: ▁hello▁▁world ▁ ▁▁ a▁b ▁
xyzzy: a xyzzy b
"""


def read_corpus(path):
    with open(path, encoding="utf-8") as f:
        shakespeare = f.read()
    return shakespeare + MULTI * 30


def chunks(text, lines=40):
    """Training sequences: blocks of lines, newlines kept."""
    ls = text.splitlines(keepends=True)
    return ["".join(ls[i:i + lines]) for i in range(0, len(ls), lines)]


def byte_level(vocab, special, pre=None, ignore_merges=False):
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre or pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return tok, trainer


def bos_template(tok, bos):
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                         special_tokens=[(bos, tok.token_to_id(bos))])


def make_gpt2(corpus, vocab=2000, sep=True):
    tok, trainer = byte_level(vocab, ["<|endoftext|>"])
    tok.train_from_iterator(chunks(corpus), trainer)
    if sep:
        tok.add_tokens([AddedToken("<|sep|>", special=False, normalized=False)])
    tok.post_processor = bos_template(tok, "<|endoftext|>")
    return tok, dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_bos_token=True)


def make_llama3(corpus):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok, trainer = byte_level(3000, [], pre=pre, ignore_merges=True)
    tok.train_from_iterator(chunks(corpus), trainer)
    # after the vocabulary, as Llama-3's 128000.. are
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
               "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_2|>",
               "<|reserved_special_token_3|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1",
                                      special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok, dict(bos_token=bos, eos_token="<|end_of_text|>", add_bos_token=True)


def make_spm(corpus, vocab=2000):
    """Trains with the normalizer and a splitting Metaspace (so merges stay inside words), then
    rebuilds the model as Llama-2's tokenizer.json has it: <unk> <s> </s>, the 256 byte tokens,
    the learned pieces; byte fallback; no pre-tokenizer."""
    special = ["<unk>", "<s>", "</s>"]
    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = norm
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=vocab - 256, special_tokens=special, show_progress=False)
    tok.train_from_iterator(chunks(corpus), trainer)
    m = json.loads(tok.to_str())["model"]
    learned = [t for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]) if t not in special]
    pieces = special + [f"<0x{b:02X}>" for b in range(256)] + learned
    merges = [tuple(s.split(" ")) for s in m["merges"]]
    model = models.BPE({t: i for i, t in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True,
                       fuse_unk=True)

    def build(legacy):
        t = Tokenizer(model)
        t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
        if legacy:
            t.normalizer = norm
            t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(content=" ", left=1, right=0)])
        else:
            t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
            t.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                           decoders.ByteFallback(), decoders.Fuse()])
        t.post_processor = bos_template(t, "<s>")
        return t
    config = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True, add_eos_token=False)
    return (build(True), config), (build(False), config)


def make_bpe512(corpus):
    return make_gpt2(corpus, vocab=512, sep=False)


def save(name, tok, config):
    """Writes tokenizer.json and tokenizer_config.json through transformers, as a model repository has them."""
    from transformers import PreTrainedTokenizerFast
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **config)
    fast.save_pretrained(d)
    for extra in ("special_tokens_map.json",):  # tokenizer_config.json holds the same
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    return d


def to_pairs(src, dst):
    """A tokenizer.json with its merges as ["a", "b"] pairs (tokenizers 0.19 writes "a b")."""
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    j["model"]["merges"] = [m.split(" ") for m in j["model"]["merges"]]
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        config = f.read()
    with open(os.path.join(dst, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        f.write(config)


def main():
    if tokenizers.__version__ != "0.19.1":
        sys.exit(f"make_fixtures.py: tokenizers {tokenizers.__version__}; the fixtures are made with 0.19.1")
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "data",
                                                                  "tinyshakespeare.txt")
    corpus = read_corpus(path)
    made = {}
    for attempt in range(2):
        spm, spm_meta = make_spm(corpus)
        out = {"gpt2": make_gpt2(corpus), "llama3": make_llama3(corpus), "spm": spm, "spm_metaspace": spm_meta,
               "bpe512": make_bpe512(corpus)}
        strs = {k: t.to_str() for k, (t, _) in out.items()}
        if attempt == 1 and strs != made:
            sys.exit("make_fixtures.py: two trainings differ: training is not deterministic")
        made = strs
    for name, (tok, config) in out.items():
        print(name, save(name, tok, config), tok.get_vocab_size())
    to_pairs(os.path.join(HERE, "gpt2"), os.path.join(HERE, "pairs"))
    with open(os.path.join(HERE, "multilingual.txt"), "w", encoding="utf-8", newline="") as f:
        f.write(MULTI + MULTI_TEST_ONLY)


if __name__ == "__main__":
    main()
