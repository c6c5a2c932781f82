#!/usr/bin/env python3
"""Independent PyTorch reference for the C MoE transformer trainer (tests/test_ref.c).

What it does
------------
For each case in CASES it reads

  tests/ref/<case>_init.safetensors   initial weights (F32) and, in the metadata, the model config
  tests/ref/<case>_batch.safetensors  `tokens` and `targets`, I32 [NSTEPS, B, T]

(both written by `build/tests/test_ref --write-init tests/ref`), rebuilds the model in plain
PyTorch (Hugging Face Llama / Mixtral conventions: RMSNorm, rotate-half RoPE, causal attention,
SwiGLU FFNs, a top-k softmax router with optional renormalisation, expert capacity with dropping,
optional shared experts, load-balancing and router z losses) and writes

  tests/ref/<case>_ref.safetensors    F32 tensors:
    logits [B*T, V]              forward of batch 0 at the initial weights (training capacity)
    losses [4]                   ce, aux, z, total at init on batch 0
    load [n_moe_layers, E]       routed (token, slot) assignments per expert, before dropping
    dropped [n_moe_layers]       assignments dropped by the capacity limit
    grad.<name>                  d total / d <name> at init on batch 0 (autograd)
    step_losses [NSTEPS]         total loss at each of NSTEPS AdamW steps (batch s at step s)
    final.<name>                 parameters after those steps

Training: torch.optim.AdamW (betas (0.9, 0.95), eps 1e-8, weight decay 0.1 except for the norm
weights), per-group learning-rate multipliers for the routed experts and the router, a LambdaLR
linear-warmup + cosine schedule (floor 0.1 * lr), clip_grad_norm_(all params, 1.0) before each
step.  The training hyperparameters are fixed per case below (the training keys stored in the
model file's config are defaults and are ignored).

Everything runs in float32 on the CPU and is deterministic.  It needs only torch (no numpy, no
safetensors package: the file format is read and written by hand).

How to run
----------
    /usr/bin/python3 tests/ref/make_ref.py            # from the repository root
    /usr/bin/python3 tests/ref/make_ref.py DIR        # inputs and outputs in DIR instead

then `cmake --build build -j2 && ./build/tests/test_ref tests/ref` compares the C code with it.
"""

import array
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

CASES = ["case_a", "case_b"]
NSTEPS = 4

# Training hyperparameters per case (the spec; not read from the model file).
TRAIN = {
    "case_a": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=0.5, router_lr_mult=1.0),
    "case_b": dict(lr=0.02, warmup=1, steps=4, expert_lr_mult=1.0, router_lr_mult=2.0),
}
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
GRAD_CLIP = 1.0
MIN_LR_FRAC = 0.1


# ----------------------------------------------------------------------------------------------
# safetensors, by hand
# ----------------------------------------------------------------------------------------------

_DTYPES = {"F32": ("f", torch.float32), "I32": ("i", torch.int32)}


def read_safetensors(path):
    """Returns ({name: tensor} in file (data offset) order, metadata dict or {})."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", None) or {}
    data = blob[8 + hlen :]
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        code, dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        a = array.array(code)
        assert a.itemsize == 4
        a.frombytes(data[begin:end])
        if sys.byteorder != "little":
            a.byteswap()
        tensors[name] = torch.tensor(a.tolist(), dtype=dtype).reshape(info["shape"])
    return tensors, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: float tensor} as F32 safetensors (header padded with spaces to 8 bytes)."""
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().to(torch.float32).contiguous()
        a = array.array("f", t.reshape(-1).tolist())  # float32 -> python float -> float32: exact
        if sys.byteorder != "little":
            a.byteswap()
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        chunks.append(b)
        offset += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in chunks:
            f.write(b)


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------


def parse_bool(v):
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("1", "true", "yes")


def moe_layer_set(spec, n_layer):
    spec = str(spec).strip()
    if spec == "all":
        return set(range(n_layer))
    if spec in ("none", ""):
        return set()
    if spec.startswith("every:"):
        k = int(spec[len("every:") :])
        return {l for l in range(n_layer) if (l + 1) % k == 0}
    return {int(s) for s in spec.split(",") if s.strip()}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu(x, w_gate, w_up, w_down):
    return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_tables(T, D, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    angle = torch.outer(torch.arange(T, dtype=torch.int64).float(), inv_freq)  # [T, D/2]
    emb = torch.cat((angle, angle), dim=-1)  # [T, D]
    return emb.cos(), emb.sin()


def attention(x, P, pre, cfg):
    B, T, C = x.shape
    H = cfg["n_head"]
    D = C // H
    q = F.linear(x, P[pre + "self_attn.q_proj.weight"]).view(B, T, H, D).transpose(1, 2)
    k = F.linear(x, P[pre + "self_attn.k_proj.weight"]).view(B, T, H, D).transpose(1, 2)
    v = F.linear(x, P[pre + "self_attn.v_proj.weight"]).view(B, T, H, D).transpose(1, 2)
    cos, sin = rope_tables(T, D, float(cfg["rope_theta"]))
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = scores.softmax(dim=-1) @ v  # [B, H, T, D]
    out = out.transpose(1, 2).reshape(B, T, C)
    return F.linear(out, P[pre + "self_attn.o_proj.weight"])


def moe_ffn(x, P, pre, cfg):
    """Sparse MoE on x [N, C]. Returns (y [N, C], aux, z, load [E] long, dropped int)."""
    N, C = x.shape
    E, K = cfg["n_experts"], cfg["top_k"]
    m = pre + "block_sparse_moe."
    logits = F.linear(x, P[m + "gate.weight"])  # [N, E]
    probs = logits.softmax(dim=-1)

    # discrete routing: top-K experts by probability, decreasing, ties to the lower index
    with torch.no_grad():
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
        sel = order[:, :K].clone()  # [N, K]
    p_sel = probs.gather(1, sel)  # [N, K], differentiable
    if parse_bool(cfg["norm_topk"]):
        w = p_sel / p_sel.sum(dim=-1, keepdim=True)
    else:
        w = p_sel
    load = torch.bincount(sel.reshape(-1), minlength=E)  # [E], before dropping

    # capacity: which (token, slot) assignments are kept
    keep = torch.ones(N, K, dtype=torch.bool)
    dropped = 0
    cf = float(cfg["capacity_factor"])
    if cf > 0:
        cap = max(int(cfg["min_capacity"]), int(math.ceil(K * N / E * cf)))
        cap = min(cap, N)
        policy = cfg["drop_policy"]
        with torch.no_grad():
            for e in range(E):
                tok, slot = (sel == e).nonzero(as_tuple=True)  # in increasing token order
                if tok.numel() <= cap:
                    continue
                if policy == "probability":
                    # highest router probability first; stable sort keeps the lower token first on ties
                    rank = torch.sort(probs[tok, e], descending=True, stable=True).indices
                elif policy == "position":
                    rank = torch.arange(tok.numel())
                else:
                    raise ValueError("unknown drop_policy %r" % policy)
                gone = rank[cap:]
                keep[tok[gone], slot[gone]] = False
                dropped += gone.numel()

    y = torch.zeros_like(x)
    w1, w3, w2 = P[m + "experts.w1.weight"], P[m + "experts.w3.weight"], P[m + "experts.w2.weight"]
    for e in range(E):
        tok, slot = ((sel == e) & keep).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        out = swiglu(x[tok], w1[e], w3[e], w2[e])  # [n_e, C]
        y = y.index_add(0, tok, out * w[tok, slot].unsqueeze(-1))
    if cfg["n_shared"] > 0:
        s = m + "shared_experts."
        y = y + swiglu(x, P[s + "gate_proj.weight"], P[s + "up_proj.weight"], P[s + "down_proj.weight"])

    f = load.to(torch.float32) / (K * N)  # a count: no gradient
    aux = E * (f * probs.mean(dim=0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    return y, aux, z, load, dropped


def forward(P, cfg, tokens, targets):
    """tokens, targets: long [B, T]. Returns logits [B*T, V], (ce, aux, z, total), loads, drops."""
    B, T = tokens.shape
    C, L = cfg["n_embd"], cfg["n_layer"]
    eps = float(cfg["norm_eps"])
    moe_set = moe_layer_set(cfg["moe_layers"], L)
    x = F.embedding(tokens, P["model.embed_tokens.weight"])  # [B, T, C]
    auxes, zs, loads, drops = [], [], [], []
    for l in range(L):
        pre = "model.layers.%d." % l
        h = x + attention(rms_norm(x, P[pre + "input_layernorm.weight"], eps), P, pre, cfg)
        hn = rms_norm(h, P[pre + "post_attention_layernorm.weight"], eps)
        if l in moe_set:
            y, aux, z, load, dropped = moe_ffn(hn.reshape(B * T, C), P, pre, cfg)
            y = y.view(B, T, C)
            auxes.append(aux)
            zs.append(z)
            loads.append(load)
            drops.append(dropped)
        else:
            y = swiglu(hn, P[pre + "mlp.gate_proj.weight"], P[pre + "mlp.up_proj.weight"],
                       P[pre + "mlp.down_proj.weight"])
        x = h + y
    x = rms_norm(x, P["model.norm.weight"], eps)
    head = P["model.embed_tokens.weight"] if parse_bool(cfg["tie_embeddings"]) else P["lm_head.weight"]
    logits = F.linear(x, head).reshape(B * T, -1)
    ce = F.cross_entropy(logits, targets.reshape(-1))
    if auxes:
        aux = torch.stack(auxes).mean()
        z = torch.stack(zs).mean()
    else:
        aux = z = torch.zeros((), dtype=torch.float32)
    total = ce + float(cfg["aux_loss_coef"]) * aux + float(cfg["z_loss_coef"]) * z
    return logits, (ce, aux, z, total), loads, drops


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def lr_factor(s, warmup, steps):
    """lr(s) / base_lr at 0-based step s: linear warmup, then cosine down to MIN_LR_FRAC."""
    if s < warmup:
        return (s + 1) / warmup
    progress = min(max((s - warmup) / max(steps - warmup, 1), 0.0), 1.0)
    return MIN_LR_FRAC + 0.5 * (1.0 - MIN_LR_FRAC) * (1.0 + math.cos(math.pi * progress))


def make_params(init):
    return {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}


def param_groups(P, hp):
    groups = {}
    for name, p in P.items():
        is_norm = name.endswith("layernorm.weight") or name == "model.norm.weight"
        if ".block_sparse_moe.experts." in name:
            mult = hp["expert_lr_mult"]
        elif name.endswith("block_sparse_moe.gate.weight"):
            mult = hp["router_lr_mult"]
        else:
            mult = 1.0
        wd = 0.0 if is_norm else WEIGHT_DECAY
        groups.setdefault((wd, mult), []).append(p)
    return [dict(params=ps, weight_decay=wd, lr=hp["lr"] * mult) for (wd, mult), ps in groups.items()]


def run_case(d, case):
    init, meta = read_safetensors(os.path.join(d, case + "_init.safetensors"))
    cfg = json.loads(meta["config"])
    batch, _ = read_safetensors(os.path.join(d, case + "_batch.safetensors"))
    tokens, targets = batch["tokens"].long(), batch["targets"].long()
    assert tokens.shape[0] == NSTEPS
    hp = TRAIN[case]
    out = {}

    # forward and backward at the initial weights, batch 0
    P = make_params(init)
    logits, losses, loads, drops = forward(P, cfg, tokens[0], targets[0])
    losses[3].backward()
    out["logits"] = logits
    out["losses"] = torch.stack([l.detach() for l in losses])
    E = cfg["n_experts"]
    out["load"] = torch.stack(loads).float() if loads else torch.zeros(0, E)
    out["dropped"] = torch.tensor(drops, dtype=torch.float32)
    for name, p in P.items():
        out["grad." + name] = p.grad if p.grad is not None else torch.zeros_like(p)
    print("%s: ce %.6f aux %.6f z %.6f total %.6f" % ((case,) + tuple(float(l) for l in losses)))
    print("%s: load %s dropped %s" % (case, out["load"].long().tolist(), drops))

    # NSTEPS AdamW steps from the initial weights, batch s at step s
    P = make_params(init)
    opt = torch.optim.AdamW(param_groups(P, hp), betas=BETAS, eps=ADAM_EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, hp["warmup"], hp["steps"]))
    step_losses = []
    for s in range(NSTEPS):
        opt.zero_grad(set_to_none=True)
        _, losses, _, _ = forward(P, cfg, tokens[s], targets[s])
        losses[3].backward()
        norm = torch.nn.utils.clip_grad_norm_(list(P.values()), GRAD_CLIP)
        opt.step()
        sched.step()
        step_losses.append(float(losses[3]))
        print("%s: step %d loss %.6f grad norm %.4f lr %.6g" %
              (case, s, step_losses[-1], float(norm), hp["lr"] * lr_factor(s, hp["warmup"], hp["steps"])))
    out["step_losses"] = torch.tensor(step_losses, dtype=torch.float32)
    for name, p in P.items():
        out["final." + name] = p

    path = os.path.join(d, case + "_ref.safetensors")
    write_safetensors(path, out, {"source": "tests/ref/make_ref.py", "torch": torch.__version__})
    print("wrote %s (%d tensors)" % (path, len(out)))


def main():
    torch.manual_seed(0)  # nothing is random; for good measure
    torch.set_num_threads(1)
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for case in CASES:
        run_case(d, case)


if __name__ == "__main__":
    main()
