#!/usr/bin/env python3
"""peer_torch_gpu.py — the PyTorch peer of bench/bench_gpu.sh on the same GPU: the same models,
trained the same way, as a user would write them today.

Decoder-only transformer (RMSNorm, RoPE, causal attention through SDPA, SwiGLU experts, top-K
softmax router with renormalised gates, Switch aux loss and z-loss), bf16 autocast with fp32
master weights, fused AdamW, on random tokens. Dispatch: sort the (token, slot) assignments by
expert, one matmul per expert on contiguous rows (dropless). --compile wraps the model in
torch.compile (the peer GPU.md quotes: 161,159 tok/s standard on the H200).

usage: python3 peer_torch_gpu.py --config standard|fine [--steps N] [--compile]
prints one line: name tokens/s TFLOP/s MFU peak_GiB
"""
import argparse
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

# name: (E, K, F); shared: V 32000, T 1024, C 1024, L 8, H 16, B 16
CONFIGS = {"standard": (8, 2, 2816), "fine": (64, 8, 352)}
V, T, C, L, H, B = 32000, 1024, 1024, 8, 16, 16
PEAK = 989e12  # H200 dense bf16, the datasheet


class RMSNorm(nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.w = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.w


def rope(x, cos, sin):  # x (B, H, T, D): pairs (i, i + D/2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(C, C, bias=False) for _ in range(4))
        inv = 1.0 / (10000 ** (torch.arange(0, C // H, 2).float() / (C // H)))
        ang = torch.outer(torch.arange(T).float(), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, H, C // H).transpose(1, 2) for p in (self.q, self.k, self.v))
        q, k = rope(q, self.cos[:t], self.sin[:t]), rope(k, self.cos[:t], self.sin[:t])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, C))


class MoE(nn.Module):
    def __init__(self, E, K, Fh):
        super().__init__()
        self.E, self.K = E, K
        self.router = nn.Linear(C, E, bias=False)
        self.w1 = nn.Parameter(torch.randn(E, Fh, C) * 0.02)
        self.w3 = nn.Parameter(torch.randn(E, Fh, C) * 0.02)
        self.w2 = nn.Parameter(torch.randn(E, C, Fh) * 0.02)

    def forward(self, x):
        xf = x.reshape(-1, C)
        logits = self.router(xf).float()
        probs = logits.softmax(-1)
        gate, sel = probs.topk(self.K, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        flat = sel.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.E).tolist()  # a host sync, as every eager peer
        rows = xf[order // self.K]
        out = torch.empty(rows.shape[0], C, device=x.device, dtype=rows.dtype)
        start = 0
        for e, n in enumerate(counts):
            if n:
                r = rows[start:start + n]
                h = F.silu(r @ self.w1[e].t()) * (r @ self.w3[e].t())
                out[start:start + n] = (h @ self.w2[e].t()).to(out.dtype)
            start += n
        y = torch.zeros_like(xf, dtype=out.dtype)
        y.index_add_(0, order // self.K, out * gate.reshape(-1)[order].unsqueeze(1).to(out.dtype))
        f = torch.bincount(flat, minlength=self.E).float() / flat.numel()
        aux = self.E * (f * probs.mean(0)).sum()
        z = torch.logsumexp(logits, -1).pow(2).mean()
        return y.view_as(x), aux, z


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n1, self.n2 = RMSNorm(C), RMSNorm(C)
        self.attn, self.moe = Attention(), MoE(*cfg)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        y, aux, z = self.moe(self.n2(x))
        return x + y, aux, z


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.emb = nn.Embedding(V, C)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(L))
        self.norm, self.head = RMSNorm(C), nn.Linear(C, V, bias=False)

    def forward(self, tok, tgt):
        x, aux, z = self.emb(tok), 0.0, 0.0
        for b in self.blocks:
            x, a, zz = b(x)
            aux, z = aux + a, z + zz
        logits = self.head(self.norm(x)).float()
        ce = F.cross_entropy(logits.view(-1, V), tgt.view(-1))
        return ce + 0.01 * aux / L + 0.001 * z / L


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="standard", choices=CONFIGS)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    E, K, Fh = CONFIGS[a.config]
    model = Model((E, K, Fh)).cuda()
    step_model = torch.compile(model) if a.compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    tok = torch.randint(0, V, (B, T), device="cuda")
    tgt = torch.randint(0, V, (B, T), device="cuda")
    times = []
    for _ in range(a.steps):
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(tok, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1.record()
        torch.cuda.synchronize()
        times.append(t0.elapsed_time(t1) / 1e3)
    tps = B * T / statistics.median(times[len(times) // 2:])  # after compilation and warmup
    active = V * C + L * (4 * C * C + C * E + K * 3 * C * Fh + 2 * C) + C  # head, attention, router, K experts, norms
    flops = (6 * active + 12 * L * C * T) * tps
    name = f"torch{'.compile' if a.compile else ' eager'} {a.config}"
    print(f"{name} {tps:.0f} {flops / 1e12:.1f} {100 * flops / PEAK:.1f}% {torch.cuda.max_memory_allocated() / 2**30:.1f}")


if __name__ == "__main__":
    main()
