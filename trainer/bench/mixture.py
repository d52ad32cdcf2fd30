#!/usr/bin/env python3
"""Mixture carry-ons on GSM8K (issue 18, "Show that it helps"); not a CI test.

Two bases that share stories260K's 512-token tokenizer:
  A  stories260K itself (tiny stories),
  B  stories260K fully fine-tuned on GSM8K training problems the carry-ons never see
     (trainer/bench/finetune_base.py writes it as a llama2.c checkpoint; --finetuned).
Each carry-on trains on the same 1,000 GSM8K training problems (records 0..999 of train.jsonl,
question + worked answer), harvested through each base with the same options, so the shards are
aligned row by row, with the same architecture, optimiser, schedule, steps and seed:

  1. a carry-on on A alone         (reads A's final state; A's head)
  2. a carry-on on B alone         (reads B's final state; B's head)
  3. a mixture, primary A + B      (reads both; A's head)
  4. a mixture, primary B + A      (reads both; B's head)

Held-out loss on GSM8K test problems (--eval records of test.jsonl) at α = 1 and at the best α
of a sweep, next to each primary base alone. Every training run is a child process; its peak RSS
is the trainer's own record (ru_maxrss of that process, after training). The mixtures' W_in is wider (n·H + H₂ columns), so they have
W·H more parameters than the single-base ones (6,144 at W = 96, H = 64); the table says so.

    trainer/python trainer/bench/mixture.py --finetuned /tmp/ft/stories-gsm8k.bin [--out DIR] [--steps 400]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from carryon_train import node  # noqa: E402
from memory import cpu_model  # noqa: E402

REPO = node.REPO_ROOT
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
STORIES = os.path.join(SHARED, "models/stories260K")
# The ≤ 1 MB carry-on of trainer/bench/reproduce.py, with its best learning rate on GSM8K.
ARCH = ["--width", "96", "--layers", "2", "--heads", "4", "--intermediate", "224"]


def prepare(out: str, finetuned: str, train: int, held_out: int) -> Dict[str, Dict[str, str]]:
    pkgs = {"A": os.path.join(out, "base-A"), "B": os.path.join(out, "base-B")}
    sources = {"A": os.path.join(STORIES, "stories260K.bin"), "B": os.path.abspath(finetuned)}
    data = os.path.join(out, "data")
    os.makedirs(data, exist_ok=True)
    test = os.path.join(data, "gsm8k-test.jsonl")
    with open(os.path.join(SHARED, "data/gsm8k/test.jsonl"), encoding="utf-8") as f, open(test, "w", encoding="utf-8") as g:
        g.writelines(f.readlines()[:held_out])
    shards: Dict[str, Dict[str, str]] = {}
    for name, pkg in pkgs.items():
        if not os.path.exists(os.path.join(pkg, "carryon-package.json")):
            node.carryon(["import", sources[name], pkg, "--tokenizer", os.path.join(STORIES, "tok512.bin")])
        shards[name] = {}
        for split, src, limit in (("train", os.path.join(SHARED, "data/gsm8k/train.jsonl"), train), ("test", test, None)):
            dest = os.path.join(out, "shards", f"{name}-{split}")
            if not os.path.isdir(dest):
                node.harvest(pkg, src, dest, fmt="jsonl", limit=limit)
            shards[name][split] = dest
    shards["packages"] = pkgs
    return shards


def train(out: str, label: str, primary: str, secondary: List[str], s: Dict, args: argparse.Namespace) -> Dict:
    run = os.path.join(out, "runs", label)
    cmd = [sys.executable, "-m", "carryon_train", "train", "--base", s["packages"][primary], "--shards", s[primary]["train"],
           "--eval-shards", s[primary]["test"], "--out", run, "--id", label, *ARCH, "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--seed", "0", "--no-progress", "--no-resume",
           "--device", "cpu", "--alphas", "0,0.25,0.5,0.75,1,1.25,1.5,2", "--threads", str(args.threads)]
    for name in secondary:
        cmd += ["--secondary-shards", s[name]["train"], "--secondary-eval-shards", s[name]["test"], "--secondary-base", s["packages"][name]]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed:\n{proc.stderr[-3000:]}")
    with open(os.path.join(run, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    ev = report["eval"]
    return {
        "label": label, "primary": primary, "secondary": secondary,
        "base_loss": ev["base"]["loss"], "loss": ev["carry_on"]["loss"], "best_alpha": ev["best_alpha"], "best_alpha_loss": ev["best"]["loss"],
        "eval_tokens": ev["eval_tokens"], "params": report["parameter_count"],
        "onnx_bytes": (report.get("export") or {}).get("bytes"),
        "parity": (report.get("export") or {}).get("verify", {}).get("maxAbsDiff"),
        "train_seconds": report["train"]["train_seconds"],
        # The training process's own peak (the trainer records ru_maxrss of itself after training).
        "peak_rss_mb": report["train"].get("peak_rss_mb"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finetuned", required=True, help="stories260K fine-tuned on GSM8K (llama2.c .bin, finetune_base.py)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "mixture"))
    p.add_argument("--train", type=int, default=1000, help="GSM8K train records each carry-on sees (from the first)")
    p.add_argument("--eval", type=int, default=500, help="GSM8K test records held out")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0: torch's choice)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    s = prepare(args.out, args.finetuned, args.train, args.eval)
    rows = [
        train(args.out, "a-alone", "A", [], s, args),
        train(args.out, "b-alone", "B", [], s, args),
        train(args.out, "mix-a-plus-b", "A", ["B"], s, args),
        train(args.out, "mix-b-plus-a", "B", ["A"], s, args),
    ]
    print(f"CPU: {cpu_model()}; {args.train} GSM8K train problems, {args.eval} held out; {args.steps} steps × {args.batch_size}, lr {args.lr}, {args.threads or 'default'} threads")
    print("| carry-on | reads | head | base alone | carry-on α=1 | best α (loss) | params | ONNX bytes | peak RSS MB | train s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        reads = " + ".join([r["primary"], *r["secondary"]])
        print(f"| {r['label']} | {reads} | {r['primary']} | {r['base_loss']:.4f} | {r['loss']:.4f} | {r['best_alpha']} ({r['best_alpha_loss']:.4f}) "
              f"| {r['params']:,} | {r['onnx_bytes'] or '-'} | {r['peak_rss_mb'] or 0:.0f} | {r['train_seconds']:.0f} |")
    with open(os.path.join(args.out, "mixture.json"), "w", encoding="utf-8") as f:
        json.dump({"cpu": cpu_model(), "args": vars(args), "rows": rows, "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
