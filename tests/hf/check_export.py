"""check_export.py — loads a `moe export` directory with transformers (MixtralForCausalLM,
Qwen2MoeForCausalLM or, with transformers >= 4.45, OlmoeForCausalLM, from its config.json) and
compares its logits with moe's on the same tokens.

usage: /usr/bin/python3 tests/hf/check_export.py HFDIR TOKENS_FILE LOGITS_FILE [TOL]
  TOKENS_FILE   whitespace-separated token ids (one sequence)
  LOGITS_FILE   moe's logits for them: float32 little-endian, (T, V) row-major
Prints the max abs difference; exits 1 when it is above TOL. The default TOL is 1e-4 for an fp32
export. A bf16 export (`moe export --dtype bf16`) rounds every weight to 8 significant bits
(relative error up to 2^-9 each) while moe's logits come from its fp32 weights, so the two differ
by the rounding, not by a mistake: its default bound is 2e-2 x max(1, max |logit|), and the
script says so, and why, instead of failing at 1e-4.
"""
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    hf, tok_file, logit_file = sys.argv[1:4]
    cfg = AutoConfig.from_pretrained(hf)
    bf16 = str(getattr(cfg, "torch_dtype", "")).endswith("bfloat16")
    assert cfg.model_type in ("mixtral", "qwen2_moe", "olmoe"), cfg.model_type
    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    model.eval()
    tokens = [int(t) for t in open(tok_file).read().split()]
    ours = np.fromfile(logit_file, dtype="<f4").reshape(len(tokens), cfg.vocab_size)
    with torch.no_grad():
        theirs = model(torch.tensor([tokens])).logits[0].double().numpy()
    diff = float(np.abs(theirs - ours).max())
    scale = float(np.abs(theirs).max())
    if len(sys.argv) > 4:
        tol, why = float(sys.argv[4]), "given"
    elif bf16:
        tol = 2e-2 * max(1.0, scale)
        why = ("bf16 export: its weights are moe's rounded to 8 significant bits, moe's logits are of the fp32 "
               f"weights; bound 2e-2 x max(1, max |logit|) = {tol:.3g}")
    else:
        tol, why = 1e-4, "fp32 export"
    print(f"transformers {__import__('transformers').__version__} {type(model).__name__}: "
          f"max |logit difference| = {diff:.3e} over {len(tokens)} tokens x {cfg.vocab_size} (max |logit| {scale:.2f}); "
          f"tolerance {tol:.3g} ({why})")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
