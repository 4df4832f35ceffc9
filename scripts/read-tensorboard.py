#!/usr/bin/env python3
"""Reads the TensorBoard event files of a training run with TensorBoard's own loader and
checks them against the run's metrics.jsonl.

    pip install tensorboard
    python scripts/read-tensorboard.py <output-dir>

For every scalar tag (train/loss, eval/loss, train/learning_rate, ...) it prints the number
of points and the last (step, value), then checks that each metrics.jsonl row's numbers are
in the event files at the row's step, as float32, under Hugging Face's tag names. Exit status
0 when all agree, 1 otherwise.
"""
import glob
import json
import os
import struct
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def tag(key):
    for prefix in ("eval_", "test_"):
        if key.startswith(prefix):
            return prefix[:-1] + "/" + key[len(prefix):]
    return "train/" + key


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    files = sorted(glob.glob(os.path.join(out, "runs", "*", "events.out.tfevents.*")))
    if not files:
        sys.exit(f"no event files under {out}/runs/")
    scalars = {}
    for f in files:
        acc = EventAccumulator(os.path.dirname(f), size_guidance={"scalars": 0})
        acc.Reload()
        for t in acc.Tags()["scalars"]:
            for e in acc.Scalars(t):
                scalars.setdefault(t, {}).setdefault(e.step, []).append(e.value)
    for t in sorted(scalars):
        steps = sorted(scalars[t])
        print(f"{t:32} {len(steps):4} points, last step {steps[-1]}: {scalars[t][steps[-1]][-1]:.6g}")
    bad = 0
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    for row in rows:
        for k, v in row.items():
            if k == "step" or not isinstance(v, (int, float)):
                continue
            got = scalars.get(tag(k), {}).get(row["step"], [])
            if f32(v) not in got:
                bad += 1
                print(f"MISMATCH step {row['step']} {k}={v}: event files have {got}")
    print(f"{len(files)} event file(s), {len(rows)} metrics.jsonl rows: "
          + ("all values found" if bad == 0 else f"{bad} mismatches"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
