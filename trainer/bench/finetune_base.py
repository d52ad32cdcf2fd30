#!/usr/bin/env python3
"""A second base model for the carry-on benchmarks: stories260K fully fine-tuned on GSM8K.

Same tokenizer (tok512.bin), same shape, other weights: a base that "knows" GSM8K, for comparing
a carry-on on stories260K with one on a base that already learned the task.

Data (which records, so nothing the carry-on benchmark uses is seen):
- training: `../shared/data/gsm8k/train.jsonl` records `--skip` (2000) to the end (5,473 problems).
  reproduce.py trains its carry-on on records 0..999 and holds out the whole test set, so
  records 0..1999 and test.jsonl are never seen by this fine-tune.
- held-out loss: the first `--eval-records` (300) problems of `test.jsonl`.
Text and tokens are the gateway's own: the records go through `carryon harvest` (GSM8K record →
"question\\nanswer", BOS, stories260K's tokenizer, at most 512 tokens), and the fine-tune reads the
harvested shards' token ids exactly as bench/baselines.py does (same batches, AdamW, schedule).

Output: a legacy llama2.c checkpoint (the layout of stories260K.bin) that the gateway imports:

    trainer/python trainer/bench/finetune_base.py --out /tmp/stories260K-gsm8k.bin [--steps 40]
    node bin/carryon.js import /tmp/stories260K-gsm8k.bin /tmp/stories260K-gsm8k \\
        --tokenizer ../shared/models/stories260K/tok512.bin --name stories260K-gsm8k

With `--import-to DIR` the script runs that import itself and checks parity: the imported
package's logits (hidden states from the gateway's engine on a few GSM8K problems, times the
package's head.onnx) against the PyTorch model's, and its fingerprint against stories260K's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from carryon_train import node  # noqa: E402

REPO = node.REPO_ROOT
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
STORIES_BIN = os.path.join(SHARED, "models/stories260K/stories260K.bin")
TOKENIZER = os.path.join(SHARED, "models/stories260K/tok512.bin")
GSM8K = os.path.join(SHARED, "data/gsm8k")


def import_package(bin_path: str, out_dir: str, name: Optional[str] = None) -> Dict:
    """`carryon import BIN OUT --tokenizer tok512.bin`; returns the package manifest."""
    if not os.path.exists(os.path.join(out_dir, "carryon-package.json")):
        args = ["import", os.path.abspath(bin_path), os.path.abspath(out_dir), "--tokenizer", TOKENIZER]
        node.carryon(args + (["--name", name] if name else []))
    with open(os.path.join(out_dir, "carryon-package.json"), encoding="utf-8") as f:
        return json.load(f)


def records(path: str, skip: int, limit: int, dest: str) -> int:
    """Writes records [skip, skip + limit) of a JSONL file (limit 0: to the end) to `dest`."""
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f if l.strip()]
    part = lines[skip : skip + limit] if limit else lines[skip:]
    with open(dest, "w", encoding="utf-8") as f:
        f.writelines(part)
    return len(part)


def harvest(pkg: str, src: str, dest: str, sigma: str = "int8") -> str:
    """The gateway's offline harvest (its tokenization and record formatting). Only the token ids
    are used for the fine-tune, so the states are stored small (int8) unless parity needs them."""
    if not os.path.isdir(dest):
        node.harvest(pkg, src, dest, fmt="jsonl", sigma=sigma)
    return dest


def logits_parity(model, pkg: str, shard_dir: str) -> Dict:
    """Max |logits| difference between the gateway (its engine's hidden states in a `--sigma none`
    harvest of `pkg`, through the package's head.onnx) and the PyTorch model, over every row."""
    import torch
    from carryon_train.base import BasePackage
    from carryon_train.data import Corpus

    base = BasePackage.open(pkg)
    head = torch.from_numpy(base.lm_head())
    corpus = Corpus.open([shard_dir], ["final"], int(base.config["max_position_embeddings"]), base.hidden_size, base.fingerprint)
    worst_logit, worst_hidden, rows = 0.0, 0.0, 0
    model.eval()
    with torch.no_grad():
        for w in corpus.windows:
            sh = corpus.shards[w.shard]
            ids = torch.from_numpy(np.asarray(sh.tensors["token_ids"][w.begin : w.end], dtype=np.int64))[None]
            pos = torch.arange(w.position, w.position + ids.shape[1])[None]
            h_torch, _ = model.hidden(ids, pos)
            h_gw = torch.from_numpy(np.array(sh.rows("final", w.begin, w.end)))
            worst_hidden = max(worst_hidden, float((h_torch[0] - h_gw).abs().max()))
            worst_logit = max(worst_logit, float((h_torch[0] @ model.lm_head.weight.t() - h_gw @ head.t()).abs().max()))
            rows += ids.shape[1]
    return {"max_abs_logit_diff": worst_logit, "max_abs_hidden_diff": worst_hidden, "rows": rows, "sequences": corpus.sequence_count}


def run(args: argparse.Namespace) -> Dict:
    import torch
    from baselines import eval_lm, train_lm
    from carryon_train.data import Corpus
    from carryon_train.llama_base import load_base, write_llama2c
    from carryon_train.train import TrainOptions

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = os.path.abspath(args.work)
    os.makedirs(os.path.join(work, "data"), exist_ok=True)
    t0 = time.time()
    pkg = os.path.join(work, "stories260K")
    stories = import_package(STORIES_BIN, pkg)
    tag = f"{args.skip}-{args.limit or 'end'}"
    train_src = os.path.join(work, "data", f"gsm8k-train-{tag}.jsonl")
    n_train = records(os.path.join(GSM8K, "train.jsonl"), args.skip, args.limit, train_src)
    test_src = os.path.join(work, "data", f"gsm8k-test-0-{args.eval_records}.jsonl")
    n_test = records(os.path.join(GSM8K, "test.jsonl"), 0, args.eval_records, test_src)
    train_dir = harvest(pkg, train_src, os.path.join(work, "shards", f"train-{tag}"))
    test_dir = harvest(pkg, test_src, os.path.join(work, "shards", f"test-0-{args.eval_records}"))
    prep_s = time.time() - t0

    model = load_base(pkg)
    ctx = model.max_positions
    corpus = Corpus.open([train_dir], ["final"], ctx)
    test = Corpus.open([test_dir], ["final"], ctx)
    device = torch.device("cpu")
    base_eval = eval_lm(model, test, test.windows, False, device)
    o = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=max(1, min(10, args.steps // 10)),
                     seed=args.seed, checkpoint_every=0, log_every=max(1, args.steps // 10), progress=False)
    log: List[Dict] = []
    train_s = train_lm(model, corpus, corpus.windows, o, log)
    tuned_eval = eval_lm(model, test, test.windows, False, device)
    out_bin = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out_bin), exist_ok=True)
    size = write_llama2c(model, out_bin)
    result: Dict = {
        "out": out_bin, "bytes": size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "train_records": {"file": "gsm8k/train.jsonl", "first": args.skip, "count": n_train, "tokens": corpus.rows()},
        "held_out": {"file": "gsm8k/test.jsonl", "first": 0, "count": n_test, "tokens": base_eval["tokens"]},
        "held_out_loss": {"base": base_eval["loss"], "finetuned": tuned_eval["loss"]},
        "train_log": log, "prepare_seconds": round(prep_s, 1), "train_seconds": round(train_s, 1),
        "base_fingerprint": stories["fingerprint"],
    }
    if args.import_to:
        manifest = import_package(out_bin, args.import_to, args.name)
        reloaded = load_base(args.import_to)
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()))
        parity_src = os.path.join(work, "data", "parity.jsonl")
        records(os.path.join(GSM8K, "test.jsonl"), 0, args.parity_records, parity_src)
        with tempfile.TemporaryDirectory() as tmp:
            shards = harvest(args.import_to, parity_src, os.path.join(tmp, "shards"), sigma="none")
            parity = logits_parity(model, args.import_to, shards)
        result["import"] = {"package": os.path.abspath(args.import_to), "fingerprint": manifest["fingerprint"],
                            "fingerprint_differs_from_stories260K": manifest["fingerprint"] != stories["fingerprint"],
                            "weights_round_trip_exact": same, **parity}
    return result


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "stories260K-gsm8k.bin"), help="the llama2.c checkpoint to write")
    ap.add_argument("--work", default=os.path.join(HERE, "out", "finetune-base"), help="package, data and shards (reused)")
    ap.add_argument("--import-to", help="also import the checkpoint into this package folder and check parity")
    ap.add_argument("--name", default="stories260K-gsm8k", help="package name for --import-to")
    ap.add_argument("--skip", type=int, default=2000, help="first train.jsonl record used (0-based)")
    ap.add_argument("--limit", type=int, default=0, help="train.jsonl records used from --skip (0: to the end)")
    ap.add_argument("--eval-records", type=int, default=300, help="test.jsonl problems for the held-out loss")
    ap.add_argument("--parity-records", type=int, default=4, help="test.jsonl problems for the logits parity check")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3, help="reproduce.py's best full fine-tune rate on GSM8K")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON only")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    r = run(args)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    tr, ho = r["train_records"], r["held_out"]
    print(f"fine-tuned on train.jsonl records {tr['first']}..{tr['first'] + tr['count'] - 1} ({tr['count']} problems, "
          f"{tr['tokens']} tokens): {r['steps']} steps × {r['batch_size']} windows, lr {r['lr']:g}, {r['train_seconds']} s")
    print(f"held-out loss on test.jsonl records 0..{ho['count'] - 1} ({ho['tokens']} tokens): "
          f"base {r['held_out_loss']['base']:.4f}, fine-tuned {r['held_out_loss']['finetuned']:.4f}")
    print(f"wrote {r['out']} ({r['bytes']} bytes, llama2.c legacy format)")
    if "import" in r:
        im = r["import"]
        print(f"imported -> {im['package']} (fingerprint {im['fingerprint'][:16]}…, differs from stories260K: "
              f"{im['fingerprint_differs_from_stories260K']}); weights round-trip exactly: {im['weights_round_trip_exact']}; "
              f"logits parity over {im['rows']} rows: max |Δ| {im['max_abs_logit_diff']:.3g} (hidden {im['max_abs_hidden_diff']:.3g})")
    else:
        print(f"import: node bin/carryon.js import {r['out']} PKG_DIR --tokenizer {TOKENIZER} --name stories260K-gsm8k")
    return 0


if __name__ == "__main__":
    sys.exit(main())
