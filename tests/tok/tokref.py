#!/usr/bin/python3
"""tokref.py — the Hugging Face `tokenizers` side of tests/test_tokenizer.sh and bench/bench_tokenize.sh.

  ref TOKDIR OUT FILE...        for each FILE (UTF-8 text), writes OUT/NAME.ids and OUT/NAME.ids_nospecial
                                (encode(text, add_special_tokens=True/False).ids, spaces, newline) and
                                OUT/NAME.dec, OUT/NAME.dec_skip (decode(ids with specials,
                                skip_special_tokens=False/True)), NAME the file's name without .txt; and
                                OUT/randomK.ids, .dec, .dec_skip: random ids (K = 0, 1, 2) and their decoding
  diff TOKDIR WANT GOT          says where two id files first differ, with the tokens around; exit 1 if they do
  invalid TOKDIR DATA IDS DEC   DATA: bytes that are not all UTF-8; IDS: moe's ids of them (no specials); DEC:
                                moe's decoding of IDS. Byte-level models: IDS' tokens are DATA's bytes as they
                                are (a Unicode normalizer applied to the valid runs only); otherwise IDS are tokenizers' ids of DATA with each maximal invalid
                                subsequence read as U+FFFD (bytes.decode("utf-8", "replace")). Both: DEC is
                                tokenizers' decode(IDS).
  edit SRC DST CODE             writes DST: the JSON of SRC as `j`, changed by the Python statements CODE
  bigvocab SRC DST              DST/: SRC/'s tokenizer grown past 65536 ids (padding tokens no text makes),
                                with a special <|eot|> at id 70000 as its EOS
  shards TOKDIR PREFIX DOC...   checks moe tokenize --data's output: PREFIX_*.bin (llm.c headers; uint16, or
                                uint32 past 65536 ids) hold, for each document of the DOCs in order (a file,
                                or each line's "text" of a .jsonl), the EOT then encode(doc, False).ids; the
                                sidecar PREFIX.json and PREFIX.tokenizer.json agree
  bench TOKDIR DOCS             prints MB/s of encode_batch over the documents of DOCS (a .jsonl; best of 3,
                                RAYON_NUM_THREADS set by the caller) and their tokens with an EOT each
"""
import glob
import json
import os
import random
import struct
import sys
import time
import unicodedata

from tokenizers import Tokenizer


def load(tokdir):
    path = tokdir if tokdir.endswith(".json") else os.path.join(tokdir, "tokenizer.json")
    return Tokenizer.from_file(path)


def ids_line(ids):
    return " ".join(map(str, ids)) + "\n"


def read_ids(path):
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def cmd_ref(tokdir, out, *files):
    tok = load(tokdir)
    os.makedirs(out, exist_ok=True)
    for path in files:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        name = os.path.basename(path)
        name = name[:-4] if name.endswith(".txt") else name
        ids = tok.encode(text, add_special_tokens=True).ids
        outputs = {"ids": ids_line(ids),
                   "ids_nospecial": ids_line(tok.encode(text, add_special_tokens=False).ids),
                   "dec": tok.decode(ids, skip_special_tokens=False),
                   "dec_skip": tok.decode(ids, skip_special_tokens=True)}
        for ext, s in outputs.items():
            with open(os.path.join(out, f"{name}.{ext}"), "wb") as f:
                f.write(s.encode("utf-8"))
    # random ids, drawn from the whole vocabulary, the first 300 (bytes, byte tokens) and the last 12
    # (added tokens): decoders on sequences no text encodes to (lone bytes, specials anywhere)
    vocab = tok.get_vocab_size()
    for k, n in enumerate((1, 30, 500)):
        r = random.Random(k)
        ids = [r.choice((r.randrange(vocab), r.randrange(min(300, vocab)), r.randrange(max(0, vocab - 12), vocab)))
               for _ in range(n)]
        for ext, s in (("ids", ids_line(ids)), ("dec", tok.decode(ids, skip_special_tokens=False)),
                       ("dec_skip", tok.decode(ids, skip_special_tokens=True))):
            with open(os.path.join(out, f"random{k}.{ext}"), "wb") as f:
                f.write(s.encode("utf-8"))


def where(tok, want, got):
    """The first difference of two id lists, with the tokens around it."""
    i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    lo = max(0, i - 4)
    show = lambda ids: [f"{x}:{tok.id_to_token(x)!r}" for x in ids[lo:i + 4]]
    return (f"{len(want)} ids expected, {len(got)} got; first difference at index {i}\n"
            f"  expected ...{show(want)}\n  got      ...{show(got)}\n"
            f"  text there: {tok.decode(want[lo:i + 4], skip_special_tokens=False)!r}")


def cmd_diff(tokdir, want, got):
    a, b = read_ids(want), read_ids(got)
    if a == b:
        return 0
    print(where(load(tokdir), a, b))
    return 1


def byte_decoder():
    """GPT-2's byte <-> printable-character map, reversed."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def tokenizer_json(tokdir):
    with open(tokdir if tokdir.endswith(".json") else os.path.join(tokdir, "tokenizer.json"), encoding="utf-8") as f:
        return json.load(f)


def is_byte_level(tokdir):
    return '"ByteLevel"' in json.dumps(tokenizer_json(tokdir).get("decoder"))


def normalize_valid_runs(data, form):
    """data with each maximal valid UTF-8 run put in Unicode normal form `form`, invalid bytes kept."""
    out, run, i = [], [], 0
    while i < len(data):
        for n in (1, 2, 3, 4):
            try:
                run.append(data[i:i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out += [unicodedata.normalize(form, "".join(run)).encode("utf-8"), data[i:i + 1]]
            run, i = [], i + 1
    return b"".join(out) + unicodedata.normalize(form, "".join(run)).encode("utf-8")


def cmd_invalid(tokdir, data_path, ids_path, dec_path):
    tok = load(tokdir)
    with open(data_path, "rb") as f:
        data = f.read()
    got = read_ids(ids_path)
    with open(dec_path, "rb") as f:
        dec = f.read()
    bad = []
    if is_byte_level(tokdir):
        bd = byte_decoder()
        toks = [tok.id_to_token(i) for i in got]
        if None in toks:
            bad.append(f"ids out of the vocabulary: {got}")
        else:
            back = bytes(bd[c] for c in "".join(toks))
            norm = tokenizer_json(tokdir).get("normalizer") or {}
            want = normalize_valid_runs(data, norm["type"]) if norm.get("type") in ("NFC", "NFD", "NFKC", "NFKD") else data
            if back != want:
                bad.append(f"the tokens' bytes are not the input's{' (' + norm['type'] + ' on its valid runs)' if want != data else ''}:"
                           f"\n  input  {want!r}\n  tokens {back!r}\n  ids {got}")
    else:
        want = tok.encode(data.decode("utf-8", "replace"), add_special_tokens=False).ids
        if got != want:
            bad.append("ids differ from tokenizers' ids of the text with each maximal invalid subsequence as U+FFFD:\n"
                       + where(tok, want, got))
            # name the other convention when it is the one followed
            if got == tok.encode(per_byte_replace(data), add_special_tokens=False).ids:
                bad.append("(they are the ids with each invalid BYTE as U+FFFD, as include/moe.h describes it)")
    want_dec = tok.decode(got, skip_special_tokens=False).encode("utf-8")
    if dec != want_dec:
        bad.append(f"moe's decoding of its ids differs from tokenizers':\n  want {want_dec!r}\n  got  {dec!r}")
    for b in bad:
        print(b)
    return 1 if bad else 0


def per_byte_replace(data):
    """Each byte that is not part of a valid UTF-8 sequence read as U+FFFD (one per byte)."""
    out, i = [], 0
    while i < len(data):
        for n in (4, 3, 2, 1):
            try:
                out.append(data[i:i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def cmd_edit(src, dst, code):
    with open(src, encoding="utf-8") as f:
        j = json.load(f)
    exec(code, {"j": j})
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)


def cmd_bigvocab(src, dst):
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    for i in range(len(vocab), 70000):
        vocab[f"<|pad_{i}|>"] = i
    j["added_tokens"].append({"id": 70000, "content": "<|eot|>", "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True})
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|eot|>", "add_bos_token": True}, f)
    tok = load(dst)
    assert tok.token_to_id("<|eot|>") == 70000 and tok.get_vocab_size() == 70001, "tokenizers reads it otherwise"


def documents(path):
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    with open(path, "rb") as f:
        return [f.read().decode("utf-8")]


FNV64_OFFSET = 0xcbf29ce484222325  # 14695981039346656037, FNV-1a 64's offset basis


def fnv1a64(b, h=FNV64_OFFSET):
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def cmd_shards(tokdir, prefix, *docs):
    tok = load(tokdir)
    with open(os.path.join(tokdir, "tokenizer_config.json")) as f:
        eos = json.load(f)["eos_token"]
    eot = tok.token_to_id(eos)
    vocab = tok.get_vocab_size()
    want = []
    for path in docs:
        for d in documents(path):
            want += [eot] + tok.encode(d, add_special_tokens=False).ids
    bad = []
    paths = sorted(glob.glob(glob.escape(prefix) + "_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
    if not paths:
        print(f"no shards {prefix}_NNNNNN.bin")
        return 1
    magic, version, width, fmt = (20240520, 1, 2, "H") if vocab <= 65536 else (20240801, 7, 4, "I")
    got = []
    for i, p in enumerate(paths):
        if os.path.basename(p) != f"{os.path.basename(prefix)}_{i:06d}.bin":
            bad.append(f"shards are not numbered from 000000 without gaps: {p}")
        with open(p, "rb") as f:
            b = f.read()
        h = struct.unpack("<256i", b[:1024])
        if (h[0], h[1]) != (magic, version):
            bad.append(f"{p}: header magic {h[0]} version {h[1]}, expected {magic} {version}")
        if len(b) != 1024 + width * h[2]:
            bad.append(f"{p}: header count {h[2]} but {(len(b) - 1024) / width} tokens of {width} bytes")
        got += struct.unpack(f"<{(len(b) - 1024) // width}{fmt}", b[1024:1024 + (len(b) - 1024) // width * width])
    got = list(got)
    if got != want:
        bad.append("shard tokens differ from [EOT] + encode(document) for each document: " + where(tok, want, got))
    with open(os.path.join(tokdir, "tokenizer.json"), "rb") as f:
        tj = f.read()
    try:
        with open(prefix + ".json") as f:
            side = json.load(f)
        expect = {"tokenizer_hash": fnv1a64(tj), "vocab_size": vocab, "eot": eot, "tokens": len(want),
                  "dtype": "uint16" if width == 2 else "uint32"}
        for k, v in expect.items():
            g = side.get(k)
            if (g.lower() if k == "tokenizer_hash" and isinstance(g, str) else g) != v:
                bad.append(f"{prefix}.json: {k} is {g!r}, expected {v!r}")
                if k == "tokenizer_hash" and g == fnv1a64(tj, 1469598103934665603):
                    bad.append("  (that is FNV-1a over the bytes from the offset basis 1469598103934665603, "
                               "src/core/core.h's MOE_FNV_INIT, where FNV-1a 64's is 14695981039346656037)")
        # the shards: their count, or their file names in order
        names = [os.path.basename(p) for p in paths]
        if side.get("shards") not in (len(paths), names):
            bad.append(f"{prefix}.json: shards is {side.get('shards')!r}, expected {len(paths)} or {names}")
    except (OSError, ValueError) as e:
        bad.append(f"sidecar {prefix}.json: {e}")
    try:
        with open(prefix + ".tokenizer.json", "rb") as f:
            if f.read() != tj:
                bad.append(f"{prefix}.tokenizer.json is not a copy of the tokenizer")
    except OSError as e:
        bad.append(str(e))
    config = os.path.join(tokdir, "tokenizer_config.json")
    if os.path.exists(config) and os.path.exists(prefix + ".tokenizer_config.json"):
        with open(config, "rb") as f, open(prefix + ".tokenizer_config.json", "rb") as g:
            if f.read() != g.read():
                bad.append(f"{prefix}.tokenizer_config.json is not a copy of {config}")
    for b in bad:
        print(b)
    return 1 if bad else 0


def cmd_bench(tokdir, docs_path):
    """MB/s of encode_batch over the documents of a .jsonl (best of 3; RAYON_NUM_THREADS set by the
    caller), and the tokens with one EOT per document, as moe tokenize --data counts them."""
    tok = load(tokdir)
    docs = documents(docs_path)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    best = None
    for _ in range(3):
        t = time.perf_counter()
        enc = tok.encode_batch(docs, add_special_tokens=False)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    print(f"{nbytes / best / 1e6:.2f} {sum(len(e.ids) for e in enc) + len(docs)}")
    return 0


def main():
    cmds = {"ref": cmd_ref, "diff": cmd_diff, "invalid": cmd_invalid, "edit": cmd_edit, "bigvocab": cmd_bigvocab,
            "shards": cmd_shards, "bench": cmd_bench}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    sys.exit(cmds[sys.argv[1]](*sys.argv[2:]) or 0)


if __name__ == "__main__":
    main()
