"""check_events.py — reads a run directory's TensorBoard event files with TensorBoard's own reader
(EventAccumulator, which checks every record's CRC-32C) and compares them with metrics.jsonl.

usage: /usr/bin/python3 tests/tb/check_events.py RUN_DIR
Checks: every step of metrics.jsonl appears exactly once under train/loss with the same value
(float32; metrics.jsonl prints 6 to 9 digits), and likewise lr, grad_norm, aux/z loss, val/loss, per-layer MaxVio, dropped fraction
and per-expert load share; the load-share histogram counts E experts summing to 1.
Prints what it compared; exits 1 on the first difference.
"""
import json
import math
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    run = sys.argv[1]
    recs = [r for r in map(json.loads, open(f"{run}/metrics.jsonl")) if "event" not in r]  # steps only
    acc = EventAccumulator(run, size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    bad = []

    def series(tag):
        if tag not in tags["scalars"]:
            bad.append(f"tag {tag} missing")
            return {}
        ev = acc.Scalars(tag)
        steps = [e.step for e in ev]
        if len(steps) != len(set(steps)):
            bad.append(f"{tag}: a step appears twice: {steps}")
        return {e.step: e.value for e in ev}

    def same(tag, want):  # want: {step: value}
        got = series(tag)
        if sorted(got) != sorted(want):
            bad.append(f"{tag}: steps {sorted(got)} != metrics.jsonl's {sorted(want)}")
            return
        for s, v in want.items():
            if not math.isclose(got[s], f32(v), rel_tol=1e-5, abs_tol=1e-9):
                bad.append(f"{tag} step {s}: {got[s]} != {v}")

    n = 0
    for key, tag in [("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                     ("aux_loss", "train/aux_loss"), ("z_loss", "train/z_loss"), ("val_loss", "val/loss")]:
        same(tag, {r["step"]: r[key] for r in recs if key in r})
        n += 1
    layers = recs[0]["moe"]
    for li, layer in enumerate(layers):
        L = layer["layer"]
        same(f"moe/layer{L}/maxvio", {r["step"]: r["moe"][li]["maxvio"] for r in recs})
        same(f"moe/layer{L}/dropped_frac", {r["step"]: r["moe"][li]["dropped_frac"] for r in recs})
        n += 2
        for e in range(len(layer["load"])):
            same(f"moe/layer{L}/load/expert{e:03d}",
                 {r["step"]: r["moe"][li]["load"][e] / sum(r["moe"][li]["load"]) for r in recs})
            n += 1
        htag = f"moe/layer{L}/load_share"
        if htag not in tags["histograms"]:
            bad.append(f"histogram {htag} missing")
        else:
            for h in acc.Histograms(htag):
                v = h.histogram_value
                if v.num != len(layer["load"]) or abs(v.sum - 1) > 1e-6 or sum(v.bucket) != v.num:
                    bad.append(f"{htag} step {h.step}: num {v.num} sum {v.sum} buckets {sum(v.bucket)}")
            n += 1
    print(f"check_events: {len(recs)} steps, {n} series read back with tensorboard "
          f"{__import__('tensorboard').__version__}: {'ok' if not bad else 'FAIL'}")
    for b in bad[:10]:
        print("  " + b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
