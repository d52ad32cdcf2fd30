#!/usr/bin/env python3
"""Peak memory of one full fine-tuning step vs one carry-on training step at SmolLM2-135M's shape,
batch 8 × 256 tokens, measured the same way (issue 18, "Show that it helps").

- Base: SmolLM2-135M's exact shape (hidden 576, 30 layers, 9 heads, 3 KV heads, head_dim 64,
  intermediate 1536, vocabulary 49,152, tied embeddings, RoPE θ 100000, RMSNorm eps 1e-5) with random
  weights, as the trainer's LlamaLM (llama_base.py). Memory does not depend on the weights' values.
- Inputs, the same for both: one in-memory shard as a harvest of 8 sequences × 256 tokens gives
  (token ids, targets, f16 final hidden states [2048, 576]), read through the trainer's Corpus.
- Full fine-tune: bench/baselines.py's train_lm for one step (forward, CE through the tied head,
  backward, gradient clipping, AdamW step over every base parameter: the optimizer's state is
  created in that step, as in a real first step).
- Carry-on: the trainer's own Trainer.train_step (train.py) for one step, on a carry-on of the
  trainer CLI's default architecture (`carryon-train train` defaults: width 64, 2 blocks, 4 heads,
  reading the final hidden state), loss through the frozen head W [49152, 576] in row chunks
  (loss.py head_cross_entropy), AdamW from train.make_optimizer.

Each is measured in a fresh child process (so the peaks do not mix): peak RSS (getrusage
ru_maxrss) and its growth over the child's RSS right after importing torch and building the inputs
(the torch runtime's fixed cost, shown separately), plus torch.cuda.max_memory_allocated on a GPU.

    trainer/python trainer/bench/memory.py [--json] [--device cpu|cuda|auto] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M config.json).
SMOLLM2_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5,
                    max_position_embeddings=8192)
# A tiny shape for the test: proves the script runs, measures nothing of interest.
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=64)
METHODS = ("finetune", "carry_on")


def rss_kb() -> int:
    """The process's current resident set (Linux /proc), KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def carry_on_defaults() -> Dict:
    """The carry-on architecture `carryon-train train` uses when no shape option is given."""
    from carryon_train.cli import build_parser

    a = build_parser().parse_args(["train", "--base", "-", "--out", "-", "--id", "x"])
    return dict(width=a.width, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, intermediate=a.intermediate)


# --------------------------------------------------------------------------------------------
# child: one measurement


def _corpus(shape: Dict, batch: int, seq: int, seed: int):
    """One shard in memory, as a harvest of `batch` sequences of `seq` tokens writes it (f16 states)."""
    import numpy as np
    from carryon_train.data import Corpus, Shard

    rng = np.random.default_rng(seed)
    n, H, V = batch * seq, shape["hidden_size"], shape["vocab_size"]
    ids = rng.integers(0, V, size=n + 1, dtype=np.int64)
    tensors = {
        "hidden.final": (rng.standard_normal((n, H), dtype=np.float32) * 3).astype(np.float16),
        "token_ids": ids[:-1].astype(np.int32),
        "target_ids": ids[1:].astype(np.int32),
        "is_completion": np.zeros(n, np.uint8),
    }
    offsets = np.arange(0, n + 1, seq, dtype=np.int64)
    shard = Shard("<memory>", {"stored_size": str(H), "completion_rows": "0"}, tensors, offsets, "F16")
    return Corpus([shard], ["final"], seq)


def measure(spec: Dict) -> Dict:
    """Runs in a fresh process: baseline RSS after torch + inputs, then one training step."""
    import torch
    from carryon_train.train import TrainOptions

    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    shape, batch, seq = spec["shape"], spec["batch"], spec["seq"]
    corpus = _corpus(shape, batch, seq, 0)
    windows = corpus.windows
    assert len(windows) == batch, (len(windows), batch)
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)
    baseline_kb = rss_kb()
    o = TrainOptions(steps=1, batch_size=batch, lr=1e-4, warmup=0, checkpoint_every=0, log_every=1, progress=False, device=str(device))
    t0 = time.time()
    if spec["method"] == "finetune":
        from baselines import train_lm
        from carryon_train.llama_base import LlamaLM

        s = shape
        model = LlamaLM(s["vocab_size"], s["hidden_size"], s["num_hidden_layers"], s["num_attention_heads"], s["num_key_value_heads"],
                        s["head_dim"], s["intermediate_size"], s["rms_norm_eps"], s["rope_theta"], s["max_position_embeddings"],
                        s["tie_word_embeddings"])
        model.init_weights(0)
        params = model.parameter_count()
        trainable = params
        log: List[Dict] = []
        o.log_every = 1
        built_s = time.time() - t0
        step_s = train_lm(model, corpus, windows, o, log)
        loss = log[-1]["loss"]
    else:
        from carryon_train.model import CarryOn, CarryOnConfig
        from carryon_train.train import Trainer

        cfg = CarryOnConfig.for_base(shape, **spec["carry_on"])
        model = CarryOn(cfg, seed=0)
        g = torch.Generator().manual_seed(0)
        # The frozen LM head [vocab, hidden] (head.onnx's in a real run); tied in SmolLM2, so it is
        # the embedding matrix, which the carry-on's training never needs otherwise.
        head = torch.empty(shape["vocab_size"], shape["hidden_size"]).normal_(0.0, 0.02, generator=g)  # in place: no temporary
        params = model.parameter_count() + head.numel()
        trainable = model.parameter_count()
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(model, head, corpus, windows, [], o, run_dir)
            built_s = time.time() - t0
            t1 = time.time()
            r = trainer.train_step()
            step_s = time.time() - t1
        loss = r["loss"]
    out = {
        "method": spec["method"],
        "baseline_rss_mb": round(baseline_kb / 1024, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "params": params,
        "trainable_params": trainable,
        "build_seconds": round(built_s, 2),
        "step_seconds": round(step_s, 2),
        "loss": float(loss),
        "threads": torch.get_num_threads(),
    }
    out["growth_mb"] = round(out["peak_rss_mb"] - out["baseline_rss_mb"], 1)
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


# --------------------------------------------------------------------------------------------
# parent


def spawn(spec: Dict) -> Dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "_child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['method']} measurement failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(device: str = "auto", tiny: bool = False, batch: int = 8, seq: int = 256, threads: int = 0,
        carry_on: Optional[Dict] = None) -> Dict:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = TINY if tiny else SMOLLM2_135M
    if tiny:
        batch, seq = min(batch, 2), min(seq, 32)
    arch = carry_on or carry_on_defaults()
    common = {"shape": shape, "batch": batch, "seq": seq, "device": device, "threads": threads, "carry_on": arch}
    results = {m: spawn({**common, "method": m}) for m in METHODS}
    f, c = results["finetune"], results["carry_on"]
    ratio = {"peak_rss": round(c["peak_rss_mb"] / f["peak_rss_mb"], 4), "growth": round(c["growth_mb"] / f["growth_mb"], 4)}
    if "cuda_peak_allocated_mb" in f:
        ratio["cuda_peak_allocated"] = round(c["cuda_peak_allocated_mb"] / f["cuda_peak_allocated_mb"], 4)
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": device,
            "shape": "tiny" if tiny else "SmolLM2-135M", "config": shape, "batch": batch, "seq_len": seq,
            "carry_on_architecture": arch, "results": results, "ratio_carry_on_over_finetune": ratio}


def table(r: Dict) -> str:
    f, c = r["results"]["finetune"], r["results"]["carry_on"]
    gpu = "cuda_peak_allocated_mb" in f
    head = "| step | trainable params | s / step | peak RSS MB | RSS after torch + inputs MB | growth MB |" + (" CUDA peak MB |" if gpu else "")
    lines = [f"{r['shape']} shape, one training step, batch {r['batch']} × {r['seq_len']}, {r['device']} ({r['cpu']}, "
             f"{r['results']['finetune']['threads']} threads, torch {r['torch']})", "", head,
             "|" + " --- |" * (7 if gpu else 6)]
    for label, m in (("full fine-tune (AdamW, all base params)", f), (f"carry-on (width {r['carry_on_architecture']['width']}, "
                                                                       f"{r['carry_on_architecture']['layers']} blocks), frozen head", c)):
        row = f"| {label} | {m['trainable_params']:,} | {m['step_seconds']} | {m['peak_rss_mb']} | {m['baseline_rss_mb']} | {m['growth_mb']} |"
        lines.append(row + (f" {m['cuda_peak_allocated_mb']} |" if gpu else ""))
    ratio = r["ratio_carry_on_over_finetune"]
    row = f"| carry-on / fine-tune | | | {ratio['peak_rss']:.1%} | | {ratio['growth']:.1%} |"
    lines.append(row + (f" {ratio['cuda_peak_allocated']:.1%} |" if gpu else ""))
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "_child":
        print(json.dumps(measure(json.loads(argv[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (a smoke run of the script)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = ap.parse_args(argv)
    r = run(args.device, args.tiny, args.batch, args.seq, args.threads)
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
