#!/usr/bin/env python3
"""Reproduces the trainer's headline figures (not a CI test; ~1 h on 2 CPU cores):

1. GSM8K on stories260K: a ≤ 1 MB carry-on trained on 1,000 GSM8K train problems (question +
   worked answer) vs (a) the base, (c) a from-scratch model with the carry-on's parameter count,
   (d) the base fully fine-tuned on the same data; held-out loss on the whole GSM8K test set, and
   (e) training time and peak memory of each.
2. The same on chat data (FastChat's dummy_conversation.json, 400 conversations to train, 100
   held out; loss on assistant tokens only).
3. A carry-on training step at SmolLM2-135M's shape (hidden 576, vocab 49152, random head) on
   synthetic hidden states, batch 8 × 256: peak memory with the chunked head loss vs unchunked.

Every model sees the same token stream (the harvested shards' rows, the same batches and
schedule). The learning rate of each method is picked from a small grid on 10% of the training
problems held out; the reported model is then retrained on all of them with that rate.

Each training run is a child process, so its peak RSS (os.wait4's ru_maxrss) is its own.

    trainer/python trainer/bench/reproduce.py [--out trainer/bench/out] [--quick] [--only gsm8k,chat,smol]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from typing import Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from carryon_train import node  # noqa: E402

REPO = node.REPO_ROOT
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))

# The ≤ 1 MB carry-on for stories260K (H = 64): 221,728 parameters, 0.94 MB of ONNX.
CARRY_ON = dict(width=96, layers=2, heads=4, intermediate=224)
# Each method's learning-rate grid. GSM8K's carry-on grid has four points (the best, 1e-2, is
# inside it); the others have two, centred on the rates that won the carry-on grid and a 20-step
# smoke run: a full fine-tune step costs ~5× a carry-on step here, and the whole script has to fit
# in an hour on 2 cores.
DATASETS = {
    "gsm8k": dict(steps=400, batch_size=16, lrs={"carry_on": [1e-3, 3e-3, 1e-2, 3e-2], "scratch": [3e-3, 1e-2], "finetune": [5e-4, 2e-3]}),
    "chat": dict(steps=150, batch_size=16, lrs={"carry_on": [3e-3, 1e-2], "scratch": [3e-3, 1e-2], "finetune": [5e-4, 2e-3]}),
}
SEED = 0


# --------------------------------------------------------------------------------------------
# data


def prepare(out: str) -> Dict[str, Dict[str, str]]:
    pkg = os.path.join(out, "stories260K")
    if not os.path.exists(os.path.join(pkg, "carryon-package.json")):
        node.carryon(["import", os.path.join(SHARED, "models/stories260K/stories260K.bin"), pkg])
    data = os.path.join(out, "data")
    os.makedirs(data, exist_ok=True)

    def harvest(name: str, src: str, fmt: str, limit: int = 0) -> str:
        dest = os.path.join(out, "shards", name)
        if not os.path.isdir(dest):
            node.harvest(pkg, src, dest, fmt=fmt, limit=limit or None)
        return dest

    sets = {
        "gsm8k": {
            "train": harvest("gsm8k-train", os.path.join(SHARED, "data/gsm8k/train.jsonl"), "jsonl", 1000),
            "test": harvest("gsm8k-test", os.path.join(SHARED, "data/gsm8k/test.jsonl"), "jsonl"),
        }
    }
    with open(os.path.join(SHARED, "data/fastchat/dummy_conversation.json"), encoding="utf-8") as f:
        convs = json.load(f)
    random.Random(SEED).shuffle(convs)  # the file is grouped by topic
    for split, part in (("train", convs[:400]), ("test", convs[400:])):
        path = os.path.join(data, f"chat-{split}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(part, f)
    sets["chat"] = {split: harvest(f"chat-{split}", os.path.join(data, f"chat-{split}.json"), "chat") for split in ("train", "test")}
    return {"package": {"dir": pkg}, **sets}


# --------------------------------------------------------------------------------------------
# children: one training run each


def child(spec: Dict) -> Dict:
    import torch

    torch.manual_seed(SEED)
    if spec["kind"] == "smol":
        return smol_step(spec)
    if spec["method"] == "carry_on":
        return run_carry_on(spec)
    return run_lm(spec)


def _options(spec: Dict):
    from carryon_train.train import TrainOptions

    return TrainOptions(steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], warmup=max(10, spec["steps"] // 20),
                        seed=SEED, checkpoint_every=0, log_every=25, progress=False)


def run_carry_on(spec: Dict) -> Dict:
    from carryon_train.pipeline import train_carry_on

    final = spec["phase"] == "final"
    r = train_carry_on(spec["package"], [spec["train"]], spec["run_dir"], f"bench-{spec['dataset']}", CARRY_ON, _options(spec),
                       eval_fraction=0.0 if final else 0.1, eval_shards=[spec["test"]] if final else None,
                       alphas=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0) if final else (0.0, 1.0),
                       export=final, resume=False)
    ev = r["eval"]
    out = {"loss": ev["carry_on"]["loss"], "base_loss": ev["base"]["loss"], "best_alpha": ev["best_alpha"],
           "best_alpha_loss": ev["best"]["loss"], "eval_tokens": ev["eval_tokens"], "params": r["parameter_count"],
           "train_seconds": r["train"]["train_seconds"], "train_peak_rss_mb": r["train"].get("peak_rss_mb")}
    if final:
        out["onnx_bytes"] = r["export"]["bytes"]
        out["parity"] = r["export"]["verify"]["maxAbsDiff"]
    return out


def run_lm(spec: Dict) -> Dict:
    import torch
    from baselines import eval_lm, make_scratch, scratch_shape, train_lm
    from carryon_train.base import BasePackage
    from carryon_train.data import Corpus
    from carryon_train.llama_base import load_base

    base = BasePackage.open(spec["package"])
    c = base.config
    corpus = Corpus.open([spec["train"]], ["final"], c["max_position_embeddings"])
    o = _options(spec)
    o.completion_only = corpus.completion_rows() > 0
    final = spec["phase"] == "final"
    train, held = corpus.split(0.0 if final else 0.1, SEED)
    if spec["method"] == "finetune":
        model = load_base(spec["package"])
    else:
        shape = scratch_shape(spec["target_params"], c["vocab_size"], CARRY_ON["layers"], CARRY_ON["heads"],
                              c["max_position_embeddings"], c["rms_norm_eps"], c["rope_theta"])
        model = make_scratch(shape, c["vocab_size"], CARRY_ON["layers"], CARRY_ON["heads"], c["max_position_embeddings"],
                             float(c["rms_norm_eps"]), float(c["rope_theta"]), SEED)
    device = torch.device("cpu")
    out: Dict = {"params": model.parameter_count()}
    if final and spec["method"] == "finetune":  # the untouched base through PyTorch: a cross-check of (a)
        test = Corpus.open([spec["test"]], ["final"], c["max_position_embeddings"])
        out["base_loss_pytorch"] = eval_lm(model, test, test.windows, o.completion_only, device)["loss"]
    seconds = train_lm(model, corpus, train, o)
    out["train_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if final:
        test = Corpus.open([spec["test"]], ["final"], c["max_position_embeddings"])
        ev = eval_lm(model, test, test.windows, o.completion_only, device)
    else:
        ev = eval_lm(model, corpus, held, o.completion_only, device)
    out.update({"loss": ev["loss"], "eval_tokens": ev["tokens"], "train_seconds": round(seconds, 3)})
    return out


def smol_step(spec: Dict) -> Dict:
    """Carry-on training steps at SmolLM2-135M's shape on synthetic states (random head)."""
    import torch
    from carryon_train.loss import head_cross_entropy
    from carryon_train.model import CarryOn, CarryOnConfig, combine
    from carryon_train.train import TrainOptions, make_optimizer

    B, S, H, V = 8, 256, 576, 49152
    cfg = CarryOnConfig(hidden_size=H, vocab_size=V, width=192, layers=2, heads=4, rope_theta=100000.0, max_positions=8192)
    model = CarryOn(cfg, seed=0)
    g = torch.Generator().manual_seed(0)
    head = torch.randn(V, H, generator=g) * 0.02
    x = torch.randn(B, S, H, generator=g) * 3
    targets = torch.randint(0, V, (B * S,), generator=g)
    pos = torch.arange(S).repeat(B, 1)
    opt = make_optimizer(model, TrainOptions(lr=1e-3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(4):
        t0 = time.time()
        delta, gate = model([x], pos)
        z = combine(x, delta, gate, 1.0).reshape(B * S, H)
        loss = head_cross_entropy(z, head, targets, spec["chunk_rows"]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.time() - t0)
    return {"params": model.parameter_count(), "chunk_rows": spec["chunk_rows"], "rss_before_steps_kb": rss_before,
            "seconds_per_step": round(sum(times[1:]) / 3, 3), "loss": float(loss)}


def spawn(spec: Dict, out: str, reuse: bool = False) -> Dict:
    """Runs one child; returns its result plus its own peak RSS. With `reuse`, a run whose result
    file exists (same name: same method, data, phase and learning rate) is not run again."""
    path = os.path.join(out, "runs", f"{spec['name']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if reuse and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        if "peak_rss_mb" in result:
            print(f"  {spec['name']}: reused", flush=True)
            return result
    spec = {**spec, "result": path}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "_child", json.dumps(spec)])
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{spec['name']} failed ({status})")
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    result.update({"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_seconds": round(time.time() - t0, 1)})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"  {spec['name']}: {json.dumps(result)}", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# orchestration


def run_dataset(name: str, paths: Dict[str, str], pkg: str, out: str, quick: bool, reuse: bool = False) -> Dict:
    cfg = DATASETS[name]
    steps = 20 if quick else cfg["steps"]
    common = {"kind": "train", "dataset": name, "package": pkg, "train": paths["train"], "test": paths["test"],
              "steps": steps, "batch_size": cfg["batch_size"]}
    results: Dict = {"steps": steps, "batch_size": cfg["batch_size"]}
    target = None
    for method in ("carry_on", "scratch", "finetune"):
        grid = cfg["lrs"][method][:1] if quick else cfg["lrs"][method]
        select = {}
        for lr in grid:
            spec = {**common, "method": method, "phase": "select", "lr": lr, "name": f"{name}-{method}-select-{lr:g}",
                    "run_dir": os.path.join(out, "work", f"{name}-{method}-select-{lr:g}"), "target_params": target}
            select[lr] = spawn(spec, out, reuse)
        lr = min(select, key=lambda k: select[k]["loss"])
        spec = {**common, "method": method, "phase": "final", "lr": lr, "name": f"{name}-{method}-final-{lr:g}",
                "run_dir": os.path.join(out, "work", f"{name}-{method}-final-{lr:g}"), "target_params": target}
        final = spawn(spec, out, reuse)
        if method == "carry_on":
            target = final["params"]  # the from-scratch model matches it
        results[method] = {"lr": lr, "validation": {f"{k:g}": v["loss"] for k, v in select.items()}, **final}
    results["base"] = {"loss": results["carry_on"]["base_loss"], "loss_pytorch_forward": results["finetune"].get("base_loss_pytorch")}
    return results


def table(results: Dict) -> str:
    import math

    lines = []
    for name in ("gsm8k", "chat"):
        r = results.get(name)
        if not r:
            continue
        lines += [f"### {name} ({r['steps']} steps × batch {r['batch_size']}; held-out tokens: {r['carry_on']['eval_tokens']})", "",
                  "| model | params | lr | held-out loss | ppl | train s | peak RSS MB |", "| --- | --- | --- | --- | --- | --- | --- |"]
        b = r["base"]["loss"]
        lines.append(f"| (a) base | 260,032 (frozen) | – | {b:.4f} | {math.exp(b):.2f} | – | – |")
        c = r["carry_on"]
        lines.append(f"| (b) base + carry-on (α = 1) | {c['params']:,} ({c['onnx_bytes']:,} B ONNX) | {c['lr']:g} | {c['loss']:.4f} | "
                     f"{math.exp(c['loss']):.2f} | {c['train_seconds']:.0f} | {c['peak_rss_mb']} |")
        lines.append(f"| (b') base + carry-on, best α = {c['best_alpha']:g} | | | {c['best_alpha_loss']:.4f} | {math.exp(c['best_alpha_loss']):.2f} | | |")
        for key, label in (("scratch", "(c) from scratch, carry-on's size"), ("finetune", "(d) base fully fine-tuned")):
            m = r[key]
            lines.append(f"| {label} | {m['params']:,} | {m['lr']:g} | {m['loss']:.4f} | {math.exp(m['loss']):.2f} | "
                         f"{m['train_seconds']:.0f} | {m['peak_rss_mb']} |")
        lines.append("")
    s = results.get("smol")
    if s:
        lines += ["### SmolLM2-135M shape (H 576, vocab 49152), carry-on step, batch 8 × 256, synthetic states", "",
                  "| head loss | carry-on params | s / step | peak RSS MB |", "| --- | --- | --- | --- |"]
        for key, label in (("chunked", "chunked (auto: 341 rows)"), ("unchunked", "unchunked (full logits)")):
            lines.append(f"| {label} | {s[key]['params']:,} | {s[key]['seconds_per_step']} | {s[key]['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "_child":
        spec = json.loads(sys.argv[2])
        result = child(spec)
        with open(spec["result"], "w", encoding="utf-8") as f:
            json.dump(result, f)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    ap.add_argument("--quick", action="store_true", help="20 steps, one learning rate: a smoke run of the script")
    ap.add_argument("--only", default="gsm8k,chat,smol")
    ap.add_argument("--reuse", action="store_true", help="keep results of runs already in --out/runs (resume an interrupted benchmark)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import torch

    results: Dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    only = args.only.split(",")
    if "smol" in only:
        print("smol:", flush=True)
        results["smol"] = {
            "chunked": spawn({"kind": "smol", "name": "smol-chunked", "chunk_rows": None}, args.out, args.reuse),
            "unchunked": spawn({"kind": "smol", "name": "smol-unchunked", "chunk_rows": 0}, args.out, args.reuse),
        }
    data = prepare(args.out) if any(d in only for d in DATASETS) else {}
    for name in DATASETS:
        if name in only:
            print(f"{name}:", flush=True)
            results[name] = run_dataset(name, data[name], data["package"]["dir"], args.out, args.quick, args.reuse)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    md = table(results)
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
