"""make_tiny.py — writes a tiny random Hugging Face checkpoint with transformers, and its logits on
a token sequence, for `moe import` to be compared against (tests/test_hf.sh).

usage: /usr/bin/python3 tests/hf/make_tiny.py FAMILY OUTDIR TOKENS_FILE LOGITS_OUT [options]
  FAMILY        mixtral, llama, qwen2_moe (q/k/v biases, a gated shared expert of its own width,
                dense layers by mlp_only_layers and decoder_sparse_step, top-K not renormalised)
                or olmoe (QK-norm; needs transformers >= 4.45: see tests/hf/olmoe/README.md)
  --dtype D     float32, bfloat16 or float16 on disk (default float32); the logits are those of
                the stored (rounded) weights, computed in float32
  --shard SIZE  save_pretrained's max_shard_size (e.g. 100KB) to write model.safetensors.index.json
  --kv-heads N  num_key_value_heads (grouped-query attention when below the 4 heads)
  --tie         tie_word_embeddings
  --layers N    num_hidden_layers (default 2)
  --sparse-step K, --mlp-only L1,L2   qwen2_moe's decoder_sparse_step and mlp_only_layers
Writes LOGITS_OUT as float32 little-endian (T, V). Biases and norm gains are moved off their
initial zeros and ones, so that a tensor read wrongly shows in the logits.
"""
import argparse

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("family", choices=["mixtral", "llama", "qwen2_moe", "olmoe"])
    ap.add_argument("out")
    ap.add_argument("tokens")
    ap.add_argument("logits")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shard", default=None)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--sparse-step", type=int, default=1)
    ap.add_argument("--mlp-only", default="")
    a = ap.parse_args()
    torch.manual_seed(0)
    common = dict(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=a.layers, num_attention_heads=4,
                  num_key_value_heads=a.kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                  tie_word_embeddings=a.tie, initializer_range=0.1)
    if a.family == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(num_local_experts=4, num_experts_per_tok=2, **common))
    elif a.family == "qwen2_moe":
        common["intermediate_size"] = 40  # dense layers; experts and the shared expert have their own widths
        only = [int(x) for x in a.mlp_only.split(",") if x]
        model = transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=36,
            norm_topk_prob=False, decoder_sparse_step=a.sparse_step, mlp_only_layers=only, **common))
    elif a.family == "olmoe":
        common["intermediate_size"] = 24
        model = transformers.OlmoeForCausalLM(transformers.OlmoeConfig(
            num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, pad_token_id=None, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    with torch.no_grad():  # norms away from 1 and biases away from 0, so a missed tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    dtype = getattr(torch, a.dtype)
    with torch.no_grad():  # the weights as stored; buffers (RoPE frequencies) stay exact
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
    model.eval()
    tokens = [int(t) for t in open(a.tokens).read().split()]
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].numpy().astype("<f4")
    logits.tofile(a.logits)
    kw = {"max_shard_size": a.shard} if a.shard else {}
    model.to(dtype).save_pretrained(a.out, safe_serialization=True, **kw)


if __name__ == "__main__":
    main()
