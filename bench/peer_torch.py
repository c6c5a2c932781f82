#!/usr/bin/env python3
"""peer_torch.py — the PyTorch peer of bench/bench.sh: the same models, trained the same way.

Decoder-only transformer (RMSNorm, RoPE causal attention, SwiGLU experts, top-K softmax router
with renormalised gates, Switch aux loss and z-loss), fp32, AdamW, on random byte tokens, with
two expert-dispatch styles:
  loop    the per-expert loop of Hugging Face's MixtralSparseMoeBlock (index_select the tokens
          of each expert, run it, index_add_ back);
  sorted  sort the (token, slot) assignments by expert, one matmul per expert on contiguous
          rows (as MegaBlocks / Megatron's grouped path do without a grouped-GEMM kernel).
Both are dropless (the C run drops by capacity factor 1.25, which only removes work from it).

usage: python3 peer_torch.py --config standard|fine|dense --dispatch loop|sorted [--steps N] [--threads T]
prints one line: name tokens/s peak_rss_MiB
"""
import argparse
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    # name: (E, K, F, dense_hidden) ; shared: V 256, T 256, C 384, L 6, H 6, B 8
    "standard": (8, 2, 768, 0),
    "fine": (32, 4, 192, 0),
    "dense": (0, 0, 0, 1536),  # dense FFN with the active parameters of K*F = 1536
}
V, T, C, L, H, B = 256, 256, 384, 6, 6, 8


class RMSNorm(nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(C, C, bias=False) for _ in range(4))
        d = C // H
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
        ang = torch.outer(torch.arange(T).float(), inv)
        emb = torch.cat((ang, ang), -1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.register_buffer("mask", torch.ones(T, T, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        d = c // H
        q = self.q(x).view(b, t, H, d).transpose(1, 2)
        k = self.k(x).view(b, t, H, d).transpose(1, 2)
        v = self.v(x).view(b, t, H, d).transpose(1, 2)
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        s = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        s = s.masked_fill(~self.mask, float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)
        return self.o(y)


class SwiGLU(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.w1 = nn.Linear(C, hidden, bias=False)
        self.w3 = nn.Linear(C, hidden, bias=False)
        self.w2 = nn.Linear(hidden, C, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    def __init__(self, E, K, Fh, dispatch):
        super().__init__()
        self.E, self.K, self.dispatch = E, K, dispatch
        self.gate = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(SwiGLU(Fh) for _ in range(E))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, C)
        n = x.shape[0]
        logits = self.gate(x)
        p = logits.softmax(-1)
        w, sel = torch.topk(p, self.K, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        load = torch.bincount(sel.reshape(-1), minlength=self.E).float()
        aux = self.E * ((load / (self.K * n)) * p.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        y = torch.zeros_like(x)
        if self.dispatch == "loop":
            # Hugging Face MixtralSparseMoeBlock
            mask = F.one_hot(sel, self.E).permute(2, 1, 0)  # (E, K, n)
            for e in range(self.E):
                idx, tok = torch.where(mask[e])
                if tok.numel() == 0:
                    continue
                out = self.experts[e](x[tok]) * w[tok, idx, None]
                y.index_add_(0, tok, out)
        else:
            flat = sel.reshape(-1)
            order = torch.argsort(flat, stable=True)
            tok = order // self.K
            xs = x[tok]
            counts = torch.bincount(flat, minlength=self.E).tolist()
            outs, start = [], 0
            for e, cnt in enumerate(counts):
                if cnt:
                    outs.append(self.experts[e](xs[start : start + cnt]))
                start += cnt
            ys = torch.cat(outs) * w.reshape(-1)[order, None]
            y.index_add_(0, tok, ys)
        return y.view(shape), aux, z


class Block(nn.Module):
    def __init__(self, cfg, dispatch):
        super().__init__()
        E, K, Fh, dense = cfg
        self.n1, self.n2 = RMSNorm(C), RMSNorm(C)
        self.attn = Attention()
        self.ffn = SwiGLU(dense) if dense else MoE(E, K, Fh, dispatch)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        h = self.ffn(self.n2(x))
        if isinstance(h, tuple):
            h, aux, z = h
        else:
            aux = z = torch.zeros(())
        return x + h, aux, z


class Model(nn.Module):
    def __init__(self, cfg, dispatch):
        super().__init__()
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(cfg, dispatch) for _ in range(L))
        self.norm = RMSNorm(C)
        self.head = nn.Linear(C, V, bias=False)

    def forward(self, tok, tgt):
        x = self.emb(tok)
        aux = z = 0.0
        for b in self.blocks:
            x, a, zz = b(x)
            aux, z = aux + a / L, z + zz / L
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, V), tgt.view(-1)) + 0.01 * aux + 0.001 * z


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="standard", choices=CONFIGS)
    ap.add_argument("--dispatch", default="sorted", choices=["loop", "sorted"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Model(CONFIGS[a.config], a.dispatch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for step in range(a.steps):
        tok = torch.randint(0, V, (B, T))
        tgt = torch.randint(0, V, (B, T))
        t0 = time.perf_counter()
        loss = model(tok, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    med = sorted(times[1:])[len(times[1:]) // 2]  # the median step after the first, as bench.sh takes for moe
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch-{a.dispatch}-{a.config} {B * T / med:.0f} {rss:.1f}")


if __name__ == "__main__":
    main()
