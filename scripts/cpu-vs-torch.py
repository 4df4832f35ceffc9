#!/usr/bin/env python3
"""Training-step throughput of the CPU backend against HF transformers + PEFT (torch fp32).

Run by hand (never by CI), from the repository root, with a venv holding torch, transformers
and peft (plain `pip install torch transformers peft safetensors`):

    python scripts/cpu-vs-torch.py [--steps 5] [--rounds 5] [--threads N] [--cache-mib M]

Both sides train the same model shape with the same recipe: a Falcon-7B-layout model (hidden
512, 4 layers, 8 heads of 64, multi-query, parallel attention, vocab 8192, tied embedding)
with random weights, batch 2 x 256 of random ids with labels = ids, LoRA r=8 alpha=16
dropout=0.05 on query_key_value, gradient checkpointing per decoder layer, AdamW (lr 1e-4)
on the adapters. Torch runs fp32 with its default attention implementation and as many
threads as there are cores; this project runs `cargo run --example cpu_step` (built here first)
with an unquantized base and with an NF4 (double-quantized) base.

The machine may be shared, so the measurements alternate (torch, ours-none, ours-nf4) for
`--rounds` rounds. Each round gives a ratio of ours to the torch run just before it (both saw
about the same load); the script prints every round and the median ratio with its range.
With `--threads N` both sides use N threads (torch.set_num_threads, RAYON_NUM_THREADS).
Each side also reports its process CPU seconds per step, which a shared machine disturbs
less than wall-clock time. `--cache-mib` is passed to cpu_step as `--dequant-cache-mib`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers
import peft
from transformers import FalconConfig, FalconForCausalLM
from peft import LoraConfig, get_peft_model

HIDDEN, LAYERS, HEADS, VOCAB = 512, 4, 8, 8192
BATCH, SEQ = 2, 256


def torch_model():
    torch.manual_seed(0)
    cfg = FalconConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        multi_query=True,
        new_decoder_architecture=False,
        parallel_attn=True,
        alibi=False,
        bias=False,
        layer_norm_epsilon=1e-5,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=11,
        eos_token_id=11,
    )
    model = FalconForCausalLM(cfg)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"])
    model = get_peft_model(model, lora)
    model.train()
    return model


def torch_tokens_per_s(model, steps, warmup):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            weight_decay=0.0)

    def step():
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    for _ in range(warmup):
        step()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"impl": "torch", "tokens_per_s": steps * BATCH * SEQ / secs,
            "step_s": secs / steps, "cpu_s_per_step": cpu / steps, "loss": loss}


def build_ours(root):
    subprocess.run(["cargo", "build", "-p", "model-falcon", "--release", "--example", "cpu_step"],
                   cwd=root, check=True)
    return os.path.join(root, "target", "release", "examples", "cpu_step")


def ours_tokens_per_s(exe, quant, steps, warmup, threads, cache_mib):
    args = [exe, "--quant", quant, "--layers", str(LAYERS), "--hidden", str(HIDDEN),
            "--vocab", str(VOCAB), "--batch", str(BATCH), "--seq", str(SEQ),
            "--steps", str(steps), "--warmup", str(warmup), "--targets", "query_key_value"]
    if cache_mib is not None:
        args += ["--dequant-cache-mib", str(cache_mib)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def spread(xs):
    return f"median {statistics.median(xs):.2f}x (range {min(xs):.2f}-{max(xs):.2f}, n={len(xs)})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=5, help="alternating measurement rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads on both sides")
    ap.add_argument("--cache-mib", type=int, default=None,
                    help="cpu_step --dequant-cache-mib (default: cpu_step's)")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch.set_num_threads(a.threads)
    exe = build_ours(root)
    model = torch_model()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                            capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}; torch {torch.__version__} ({a.threads} threads), transformers "
          f"{transformers.__version__}, peft {peft.__version__}, attention "
          f"{model.config._attn_implementation}; {os.cpu_count()} cores", flush=True)
    ratios = {"ours-none": [], "ours-nf4": []}
    cpu_ratios = {"ours-none": [], "ours-nf4": []}
    for r in range(a.rounds):
        torch_res = None
        for name, run in [("torch", lambda: torch_tokens_per_s(model, a.steps, a.warmup)),
                          ("ours-none", lambda: ours_tokens_per_s(
                              exe, "none", a.steps, a.warmup, a.threads, a.cache_mib)),
                          ("ours-nf4", lambda: ours_tokens_per_s(
                              exe, "nf4", a.steps, a.warmup, a.threads, a.cache_mib))]:
            res = run()
            load = os.getloadavg()[0]
            extra = ""
            if torch_res is None:
                torch_res = res
            else:
                ratio = res["tokens_per_s"] / torch_res["tokens_per_s"]
                cpu_ratio = torch_res["cpu_s_per_step"] / res["cpu_s_per_step"]
                ratios[name].append(ratio)
                cpu_ratios[name].append(cpu_ratio)
                extra = f"; {ratio:.2f}x torch wall, {cpu_ratio:.2f}x torch CPU time"
            print(f"round {r + 1} {name:9s} {res['tokens_per_s']:8.1f} tokens/s "
                  f"({res['step_s']:.3f} s/step, {res['cpu_s_per_step']:.3f} CPU s/step, "
                  f"loss {res['loss']:.4f}; load average {load:.1f}{extra})", flush=True)
    for name, label in [("ours-none", "unquantized"), ("ours-nf4", "NF4 (vs torch unquantized)")]:
        print(f"ours {label}: wall {spread(ratios[name])}; CPU time {spread(cpu_ratios[name])}")


if __name__ == "__main__":
    sys.exit(main())
