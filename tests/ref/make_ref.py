#!/usr/bin/env python3
"""Independent PyTorch reference for the C MoE transformer trainer (tests/test_ref.c).

What it does
------------
For each case in CASES it reads

  tests/ref/<case>_init.safetensors   initial weights (F32) and, in the metadata, the model config
  tests/ref/<case>_batch.safetensors  `tokens` and `targets`, I32 [NSTEPS, B, T]; for noisy top-K
                                      routing also `noise_eps.<s>.<l>` F32 [B*T, E_l], the N(0,1)
                                      draws of the forward at step s in layer l

(both written by `build/tests/test_ref --write-init tests/ref`), rebuilds the model in plain
PyTorch (Hugging Face Llama / Mixtral conventions: RMSNorm, rotate-half RoPE, causal attention,
SwiGLU FFNs, routed experts with optional shared experts) and writes

  tests/ref/<case>_ref.safetensors    F32 tensors:
    logits [B*T, V]              forward of batch 0 at the initial weights (training mode)
    losses [7]                   ce, aux, z, seq_aux, importance, load, total at init on batch 0
                                 (each MoE loss averaged over the MoE layers;
                                 total = ce + sum coef * loss, coefficients from the config)
    load [sum_l E_l]             per MoE layer (in layer order) and expert: routed assignments
                                 before capacity dropping
    dropped [n_moe_layers]       assignments dropped by the capacity limit
    grad.<name>                  d total / d <name> at init on batch 0 (autograd); zeros for buffers
    step_losses [NSTEPS]         total loss at each of NSTEPS AdamW steps (batch s at step s)
    final.<name>                 tensors after those steps (buffers unchanged)

Routing (N = B*T tokens, n = b*T + t; E = E_l, the layer's expert count; K = top_k)
  logits = x Wg^T; z loss = mean_n logsumexp(logits)^2.  Scores s = softmax or sigmoid(logits)
  (router_score); probs = s normalised over the experts (= s for softmax).
  topk           top-K of s + e_score_correction_bias (the bias, a buffer, only where the tensor
                 exists), decreasing, ties to the lower index; with n_group G > 1 only among the
                 experts of the topk_group groups (of E/G consecutive experts) with the best group
                 score (max, or sum of the top 2, of s + bias in the group; ties to the lower group); gate = route_scale * s_sel (divided
                 by sum s_sel if norm_topk).  Capacity max(min_capacity, ceil(K*N/E*cf)) <= N per
                 expert when capacity_factor > 0, dropping by position or by lowest s.
  noisy_topk     Shazeer et al. 2017: H = logits + eps * softplus(x Wn^T) with the exported eps;
                 top-K of H; gates = route_scale * softmax of the K selected H; probs = the gates
                 scattered into [N, E]; capacity as topk with priority probs.  Importance loss =
                 CV^2(sum_n probs), load loss = CV^2(sum_n Phi((logits - thr) / std)) with thr the
                 (K+1)-th largest H for selected experts, else the K-th; CV^2 with the population
                 variance and 1e-10 in the denominator.
  expert_choice  Zhou et al. 2022: each expert takes its cap = min(N, max(min_capacity,
                 ceil(K*N/E*cf))) tokens of highest s (cf = 1 if capacity_factor is 0; ties to
                 the lower token); gate = route_scale * s; nothing dropped.
  soft           every expert on every token with gate route_scale * s; nothing dropped.
  aux = E * sum_e f_e P_e, f = load / sum load (constant), P = mean_n probs.
  seq_aux (DeepSeek-V3) = mean_b sum_e f_be P_be, f_be = E/(K*T) * (slots of sequence b routed to e
  before dropping; chosen for expert choice; all for soft), P_be = mean over b's tokens of probs.

Cases (configs in tests/test_ref.c)
  case_a  MoE and dense layers, shared expert, renormalised top-2, dropping by probability
  case_b  Switch top-1 without renormalisation, dropping by position, tied embeddings
  case_c  DeepSeek-V3 style: sigmoid scores, e_score_correction_bias buffer (random, fixed),
          route_scale 2.5, sequence-wise aux loss, expert counts 4,6, a shared expert
  case_d  noisy top-2 with importance and load losses (noise.weight trained in the router group)
  case_e  expert choice
  case_f  dense soft mixture of 3 experts in one of two layers
  case_g  Qwen2-MoE: q/k/v biases, grouped-query attention, a shared expert of its own width
          scaled by sigmoid(x . shared_expert_gate), a dense layer, top-K not renormalised
  case_h  OLMoE: QK-norm (an RMSNorm over the whole q projection, C wide, and one over the whole
          k projection, n_kv_head * head_dim wide, before the split into heads and RoPE)
  case_i  DeepSeek-V3 group-limited routing: sigmoid + bias, groups scored by the sum of their
          top-2, the best topk_group groups kept, top-K within them
  case_j  DeepSeek-V2 group-limited routing: softmax, groups scored by their max

Training: torch.optim.AdamW (betas (0.9, 0.95), eps 1e-8, weight decay 0.1 except for the norm
weights and biases), per-group learning-rate multipliers for the routed experts and the router (gate and
noise weights), a LambdaLR linear-warmup + cosine schedule (floor 0.1 * lr), clip_grad_norm_(all
trainable params, 1.0) before each step.  The bias buffers get no gradient, are not optimised and
are not updated.  The training hyperparameters are fixed per case below (copied from the case
table of tests/test_ref.c; the training keys stored in the model file's config are ignored).

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

CASES = ["case_a", "case_b", "case_c", "case_d", "case_e", "case_f", "case_g", "case_h", "case_i", "case_j"]
NSTEPS = 4

# Training hyperparameters per case (the spec; not read from the model file).
TRAIN = {
    "case_a": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=0.5, router_lr_mult=1.0),
    "case_b": dict(lr=0.02, warmup=1, steps=4, expert_lr_mult=1.0, router_lr_mult=2.0),
    "case_c": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_d": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_e": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_f": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_g": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_h": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_i": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
    "case_j": dict(lr=0.01, warmup=2, steps=4, expert_lr_mult=1.0, router_lr_mult=1.0),
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
    out = set()
    for s in spec.split(","):
        lo, _, hi = s.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


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
    Hkv = cfg.get("n_kv_head") or H  # grouped-query attention: each key/value head serves H // Hkv heads
    D = C // H
    a = pre + "self_attn."
    q = F.linear(x, P[a + "q_proj.weight"], P.get(a + "q_proj.bias"))  # Qwen2: biases
    k = F.linear(x, P[a + "k_proj.weight"], P.get(a + "k_proj.bias"))
    v = F.linear(x, P[a + "v_proj.weight"], P.get(a + "v_proj.bias"))
    if a + "q_norm.weight" in P:  # OLMoE: over the whole projections, before the split into heads
        eps = float(cfg["norm_eps"])
        q = rms_norm(q, P[a + "q_norm.weight"], eps)
        k = rms_norm(k, P[a + "k_norm.weight"], eps)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2)
    v = v.view(B, T, Hkv, D).transpose(1, 2)
    cos, sin = rope_tables(T, D, float(cfg["rope_theta"]))
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(H // Hkv, dim=1)  # transformers' repeat_kv
    v = v.repeat_interleave(H // Hkv, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # [B, H, T, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = scores.softmax(dim=-1) @ v  # [B, H, T, D]
    out = out.transpose(1, 2).reshape(B, T, C)
    return F.linear(out, P[pre + "self_attn.o_proj.weight"])


def cv_squared(x):
    """Squared coefficient of variation, population variance (divide by len(x))."""
    mean = x.mean()
    return ((x - mean) ** 2).mean() / (mean * mean + 1e-10)


def normal_cdf(x):
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def moe_ffn(x, P, pre, cfg, B, T, noise_eps):
    """One MoE FFN on x [N, C] (N = B*T, token n = b*T + t).

    noise_eps: [N, E] standard normal draws (noisy_topk only, else None).
    Returns (y [N, C], dict of the layer's losses, load [E] long, dropped int)."""
    N, C = x.shape
    K = cfg["top_k"]
    m = pre + "block_sparse_moe."
    Wg = P[m + "gate.weight"]
    E = Wg.shape[0]
    routing = cfg.get("routing", "topk")
    route_scale = float(cfg.get("route_scale", 1.0))
    logits = F.linear(x, Wg)  # [N, E]
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()  # always from the clean logits

    # scores s and probs (affinities normalised over the experts, for aux and seq aux)
    if cfg.get("router_score", "softmax") == "sigmoid":
        s = torch.sigmoid(logits)
        probs = s / s.sum(dim=-1, keepdim=True)
    else:
        s = logits.softmax(dim=-1)
        probs = s

    importance_loss = load_loss = torch.zeros((), dtype=torch.float32)
    # per expert: (token indices, gates [n_e]) of the assignments that are computed
    work = []
    dropped = 0
    if routing in ("topk", "noisy_topk"):
        if routing == "topk":
            bias_name = m + "e_score_correction_bias"
            with torch.no_grad():
                key = s + P[bias_name] if bias_name in P else s.clone()
                G = int(cfg.get("n_group", 0))
                if G > 1:  # group-limited (DeepSeek-V2/V3): other groups' experts cannot be chosen
                    S, TG = E // G, int(cfg["topk_group"])
                    kg = key.view(N, G, S)
                    if cfg.get("group_score", "top2_sum") == "max":
                        gsc = kg.max(dim=-1).values
                    else:
                        gsc = kg.topk(min(2, S), dim=-1).values.sum(dim=-1)
                    keep = torch.sort(gsc, dim=-1, descending=True, stable=True).indices[:, :TG]
                    gmask = torch.zeros(N, G, dtype=torch.bool).scatter(1, keep, True)
                    key = key.masked_fill(~gmask.repeat_interleave(S, dim=1), float("-inf"))
                order = torch.sort(key, dim=-1, descending=True, stable=True).indices
                sel = order[:, :K].clone()  # [N, K], decreasing s + bias, ties to the lower index
            s_sel = s.gather(1, sel)  # gates use the unbiased scores
            if parse_bool(cfg["norm_topk"]):
                gate = route_scale * s_sel / s_sel.sum(dim=-1, keepdim=True)
            else:
                gate = route_scale * s_sel
            priority = s.detach()
        else:
            std = F.softplus(F.linear(x, P[m + "noise.weight"]))  # [N, E]
            Hn = logits + noise_eps * std
            with torch.no_grad():
                order = torch.sort(Hn, dim=-1, descending=True, stable=True).indices
                sel = order[:, :K].clone()
            gate = route_scale * Hn.gather(1, sel).softmax(dim=-1)  # [N, K]
            probs = torch.zeros(N, E).scatter(1, sel, gate)  # differentiable in gate
            priority = probs.detach()
            # Shazeer et al. (2017) losses
            importance_loss = cv_squared(probs.sum(dim=0))
            thr_out = Hn.gather(1, order[:, K - 1 : K])  # K-th largest H       [N, 1]
            thr_in = Hn.gather(1, order[:, K : K + 1])  # (K+1)-th largest H     [N, 1]
            is_sel = torch.zeros(N, E, dtype=torch.bool).scatter(1, sel, True)
            thr = torch.where(is_sel, thr_in, thr_out)
            p_in = normal_cdf((logits - thr) / std)
            load_loss = cv_squared(p_in.sum(dim=0))
        load = torch.bincount(sel.reshape(-1), minlength=E)  # [E], before dropping
        seq_count = torch.stack([torch.bincount(sel[b * T : (b + 1) * T].reshape(-1), minlength=E)
                                 for b in range(B)]).float()  # [B, E]

        # capacity: which (token, slot) assignments are kept
        keep = torch.ones(N, K, dtype=torch.bool)
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
                        # highest priority first; the stable sort keeps the lower token first on ties
                        rank = torch.sort(priority[tok, e], descending=True, stable=True).indices
                    elif policy == "position":
                        rank = torch.arange(tok.numel())
                    else:
                        raise ValueError("unknown drop_policy %r" % policy)
                    gone = rank[cap:]
                    keep[tok[gone], slot[gone]] = False
                    dropped += gone.numel()
        for e in range(E):
            tok, slot = ((sel == e) & keep).nonzero(as_tuple=True)
            work.append((tok, gate[tok, slot]))
    elif routing == "expert_choice":
        cf = float(cfg["capacity_factor"])
        if cf == 0:
            cf = 1.0
        cap = min(max(int(cfg["min_capacity"]), int(math.ceil(K * N / E * cf))), N)
        chosen = torch.zeros(N, E, dtype=torch.bool)
        with torch.no_grad():
            for e in range(E):
                tok = torch.sort(s[:, e], descending=True, stable=True).indices[:cap]
                tok = torch.sort(tok).values
                chosen[tok, e] = True
        for e in range(E):
            tok = chosen[:, e].nonzero(as_tuple=True)[0]
            work.append((tok, route_scale * s[tok, e]))
        load = chosen.sum(dim=0)
        seq_count = chosen.view(B, T, E).sum(dim=1).float()
    elif routing == "soft":
        for e in range(E):
            work.append((torch.arange(N), route_scale * s[:, e]))
        load = torch.full((E,), N, dtype=torch.int64)
        seq_count = torch.full((B, E), float(T))
    else:
        raise ValueError("unknown routing %r" % routing)

    y = torch.zeros_like(x)
    w1, w3, w2 = P[m + "experts.w1.weight"], P[m + "experts.w3.weight"], P[m + "experts.w2.weight"]
    for e, (tok, g) in enumerate(work):
        if tok.numel() == 0:
            continue
        out = swiglu(x[tok], w1[e], w3[e], w2[e])  # [n_e, C]
        y = y.index_add(0, tok, out * g.unsqueeze(-1))
    if int(cfg["n_shared"]) > 0:
        sh = m + "shared_experts."
        ys = swiglu(x, P[sh + "gate_proj.weight"], P[sh + "up_proj.weight"], P[sh + "down_proj.weight"])
        if m + "shared_expert_gate.weight" in P:  # Qwen2-MoE
            ys = torch.sigmoid(F.linear(x, P[m + "shared_expert_gate.weight"])) * ys
        y = y + ys

    # load balancing (counts are constants: no gradient)
    f = load.to(torch.float32) / float(load.sum())
    aux = E * (f * probs.mean(dim=0)).sum()
    f_seq = seq_count * (E / (K * T))  # [B, E]
    p_seq = probs.view(B, T, E).mean(dim=1)  # [B, E]
    seq_aux = (f_seq * p_seq).sum(dim=1).mean()
    losses = dict(aux=aux, z=z, seq_aux=seq_aux, importance=importance_loss, load=load_loss)
    return y, losses, load, dropped


LOSS_NAMES = ["ce", "aux", "z", "seq_aux", "importance", "load", "total"]
LOSS_COEFS = {"aux": "aux_loss_coef", "z": "z_loss_coef", "seq_aux": "seq_aux_loss_coef",
              "importance": "importance_loss_coef", "load": "load_loss_coef"}


def forward(P, cfg, tokens, targets, noise=None):
    """tokens, targets: long [B, T]; noise: {layer: [B*T, E] N(0,1) draws} for noisy_topk.
    Returns logits [B*T, V], the losses (a list in LOSS_NAMES order), loads, drops."""
    B, T = tokens.shape
    C, L = cfg["n_embd"], cfg["n_layer"]
    eps = float(cfg["norm_eps"])
    moe_set = moe_layer_set(cfg["moe_layers"], L)
    x = F.embedding(tokens, P["model.embed_tokens.weight"])  # [B, T, C]
    layer_losses, loads, drops = [], [], []
    for l in range(L):
        pre = "model.layers.%d." % l
        h = x + attention(rms_norm(x, P[pre + "input_layernorm.weight"], eps), P, pre, cfg)
        hn = rms_norm(h, P[pre + "post_attention_layernorm.weight"], eps)
        if l in moe_set:
            eps_l = noise[l] if cfg.get("routing") == "noisy_topk" else None
            y, ll, load, dropped = moe_ffn(hn.reshape(B * T, C), P, pre, cfg, B, T, eps_l)
            y = y.view(B, T, C)
            layer_losses.append(ll)
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
    losses = [ce]
    total = ce
    for name in LOSS_NAMES[1:-1]:
        if layer_losses:
            v = torch.stack([ll[name] for ll in layer_losses]).mean()
        else:
            v = torch.zeros((), dtype=torch.float32)
        losses.append(v)
        total = total + float(cfg.get(LOSS_COEFS[name], 0.0)) * v
    losses.append(total)
    return logits, losses, loads, drops


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


def lr_factor(s, warmup, steps):
    """lr(s) / base_lr at 0-based step s: linear warmup, then cosine down to MIN_LR_FRAC."""
    if s < warmup:
        return (s + 1) / warmup
    progress = min(max((s - warmup) / max(steps - warmup, 1), 0.0), 1.0)
    return MIN_LR_FRAC + 0.5 * (1.0 - MIN_LR_FRAC) * (1.0 + math.cos(math.pi * progress))


def is_buffer(name):
    """Non-trainable state stored with the model: no gradient, not optimised."""
    return name.endswith("block_sparse_moe.e_score_correction_bias")


def make_params(init):
    return {n: (t.clone() if is_buffer(n) else torch.nn.Parameter(t.clone())) for n, t in init.items()}


def trainable(P):
    return [p for n, p in P.items() if not is_buffer(n)]


def param_groups(P, hp):
    groups = {}
    for name, p in P.items():
        if is_buffer(name):
            continue
        # norms (QK-norm too) and biases: no weight decay
        is_norm = name.endswith("norm.weight") or name.endswith(".bias")
        if ".block_sparse_moe.experts." in name:
            mult = hp["expert_lr_mult"]
        elif name.endswith("block_sparse_moe.gate.weight") or name.endswith("block_sparse_moe.noise.weight"):
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
    # noise[s][l]: the N(0,1) draws of the noisy gate of layer l in the forward of step s
    noise = [{} for _ in range(NSTEPS)]
    for name, t in batch.items():
        if name.startswith("noise_eps."):
            _, s, l = name.split(".")
            noise[int(s)][int(l)] = t
    hp = TRAIN[case]
    out = {}

    # forward and backward at the initial weights, batch 0
    P = make_params(init)
    logits, losses, loads, drops = forward(P, cfg, tokens[0], targets[0], noise[0])
    losses[-1].backward()
    out["logits"] = logits
    out["losses"] = torch.stack([l.detach() for l in losses])
    out["load"] = torch.cat(loads).float() if loads else torch.zeros(0)
    out["dropped"] = torch.tensor(drops, dtype=torch.float32)
    for name, p in P.items():
        g = None if is_buffer(name) else p.grad
        out["grad." + name] = g if g is not None else torch.zeros_like(p)
    print("%s: %s" % (case, " ".join("%s %.6f" % (n, float(v)) for n, v in zip(LOSS_NAMES, losses))))
    print("%s: load %s dropped %s" % (case, [l.tolist() for l in loads], drops))

    # NSTEPS AdamW steps from the initial weights, batch s at step s (buffers stay as they are)
    P = make_params(init)
    opt = torch.optim.AdamW(param_groups(P, hp), betas=BETAS, eps=ADAM_EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, hp["warmup"], hp["steps"]))
    step_losses = []
    for s in range(NSTEPS):
        opt.zero_grad(set_to_none=True)
        _, losses, _, _ = forward(P, cfg, tokens[s], targets[s], noise[s])
        losses[-1].backward()
        norm = torch.nn.utils.clip_grad_norm_(trainable(P), GRAD_CLIP)
        opt.step()
        sched.step()
        step_losses.append(float(losses[-1]))
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
