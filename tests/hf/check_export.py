"""check_export.py — loads a `moe export` directory with transformers (MixtralForCausalLM or
Qwen2MoeForCausalLM, from its config.json) and
compares its logits with moe's on the same tokens.

usage: /usr/bin/python3 tests/hf/check_export.py HFDIR TOKENS_FILE LOGITS_FILE [TOL]
  TOKENS_FILE   whitespace-separated token ids (one sequence)
  LOGITS_FILE   moe's logits for them: float32 little-endian, (T, V) row-major
Prints the max abs difference; exits 1 when it is above TOL (default 1e-4).
"""
import sys

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    hf, tok_file, logit_file = sys.argv[1:4]
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
    cfg = AutoConfig.from_pretrained(hf)
    assert cfg.model_type in ("mixtral", "qwen2_moe"), cfg.model_type
    model = AutoModelForCausalLM.from_pretrained(hf, torch_dtype=torch.float32)
    model.eval()
    tokens = [int(t) for t in open(tok_file).read().split()]
    ours = np.fromfile(logit_file, dtype="<f4").reshape(len(tokens), cfg.vocab_size)
    with torch.no_grad():
        theirs = model(torch.tensor([tokens])).logits[0].double().numpy()
    diff = float(np.abs(theirs - ours).max())
    scale = float(np.abs(theirs).max())
    print(f"transformers {__import__('transformers').__version__} {type(model).__name__}: "
          f"max |logit difference| = {diff:.3e} over {len(tokens)} tokens x {cfg.vocab_size} (max |logit| {scale:.2f})")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
