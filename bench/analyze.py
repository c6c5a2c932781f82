#!/usr/bin/env python3
"""analyze.py — tables and plot data for docs/results.md from the runs of bench/studies.sh.

usage: python3 bench/analyze.py RUNS_DIR DATA_DIR
Writes DATA_DIR/<run>.val.dat (step, seconds, val_loss), DATA_DIR/<run>.maxvio.dat (step,
MaxVio of each MoE layer, smoothed over 10 steps), DATA_DIR/<run>.drop.dat, and prints the
markdown tables on stdout. Plain python3, no dependencies."""
import json
import os
import statistics
import struct
import sys


def records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "event" not in r]  # step records, not typed events


def params(run_dir):
    """(total, active per token) from the checkpoint header and config."""
    with open(os.path.join(run_dir, "model.safetensors"), "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    cfg = json.loads(header["__metadata__"]["config"])
    total = active = 0
    for name, t in header.items():
        if name == "__metadata__" or name.endswith("e_score_correction_bias"):
            continue
        numel = 1
        for d in t["shape"]:
            numel *= d
        total += numel
        if name == "model.embed_tokens.weight" and not cfg["tie_embeddings"]:
            continue
        if ".experts." in name and cfg["routing"] != "soft":
            numel = numel // t["shape"][0] * cfg["top_k"]
        active += numel
    return total, active


def smooth(xs, w=10):
    out = []
    for i in range(len(xs)):
        lo = max(0, i - w + 1)
        out.append(sum(xs[lo : i + 1]) / (i + 1 - lo))
    return out


def main():
    runs_dir, data_dir = sys.argv[1], sys.argv[2]
    os.makedirs(data_dir, exist_ok=True)
    runs = sorted(d for d in os.listdir(runs_dir) if os.path.isfile(os.path.join(runs_dir, d, "model.safetensors")))
    summary = {}
    for run in runs:
        r = records(os.path.join(runs_dir, run))
        secs, t = [], 0.0
        for x in r:
            t += x["step_ms"] / 1000.0
            secs.append(t)
        with open(os.path.join(data_dir, run + ".val.dat"), "w") as f:
            for x, s in zip(r, secs):
                if "val_loss" in x:
                    f.write(f"{x['step']} {s:.2f} {x['val_loss']:.5f}\n")
        layers = len(r[0]["moe"])
        if layers:
            mv = [smooth([x["moe"][i]["maxvio"] for x in r]) for i in range(layers)]
            dr = smooth([statistics.mean(m["dropped_frac"] for m in x["moe"]) for x in r])
            with open(os.path.join(data_dir, run + ".maxvio.dat"), "w") as f:
                for j, x in enumerate(r):
                    f.write(f"{x['step']} " + " ".join(f"{mv[i][j]:.4f}" for i in range(layers)) + f" {dr[j]:.5f}\n")
        last = r[-100:]
        total, active = params(os.path.join(runs_dir, run))
        summary[run] = dict(
            val=[x for x in r if "val_loss" in x][-1]["val_loss"],
            best=min(x["val_loss"] for x in r if "val_loss" in x),
            maxvio=[statistics.mean(x["moe"][i]["maxvio"] for x in last) for i in range(layers)],
            peak_maxvio=max((m["maxvio"] for x in r for m in x["moe"]), default=0.0),
            drop=statistics.mean(statistics.mean(m["dropped_frac"] for m in x["moe"]) for x in last) if layers else 0.0,
            tps=statistics.median(x["tokens_per_s"] for x in r[1:]),
            secs=secs[-1],
            total=total,
            active=active,
            steps=r[-1]["step"],
        )
    print("| run | final val loss | MaxVio per layer (mean of last 100 steps) | peak MaxVio | dropped (last 100) |")
    print("|---|---|---|---|---|")
    for run in ("collapse_none", "collapse_switch", "collapse_noisy", "collapse_auxfree", "collapse_auxfree_fast"):
        if run in summary:
            s = summary[run]
            mv = " / ".join(f"{v:.3f}" for v in s["maxvio"])
            print(f"| {run} | {s['val']:.4f} | {mv} | {s['peak_maxvio']:.2f} | {100 * s['drop']:.2f}% |")
    print()
    print("| run | params total | active / token | final val loss | best val loss | tokens/s | train time |")
    print("|---|---|---|---|---|---|---|")
    for run in ("collapse_switch", "dense_active_shakes", "dense_total_shakes", "moe_mix", "dense_active_mix",
                "dense_total_mix"):
        if run in summary:
            s = summary[run]
            print(f"| {run} | {s['total'] / 1e6:.2f}M | {s['active'] / 1e6:.2f}M | {s['val']:.4f} | {s['best']:.4f} | "
                  f"{s['tps']:.0f} | {s['secs']:.0f} s |")


if __name__ == "__main__":
    main()
