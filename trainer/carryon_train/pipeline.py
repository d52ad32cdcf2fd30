"""Shards in, verified carry-on package + report out: the whole of `carryon_train train`."""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .atomic import atomic_write_json
from .base import BasePackage, carry_on_graph
from .data import Corpus
from .distributed import Dist
from .evaluate import DEFAULT_ALPHAS, alpha_report
from .export import export_package
from .model import MAX_SECONDARY_BASES, CarryOn, CarryOnConfig, normalize_secondary_bases
from .train import Trainer, TrainOptions

MAX_ALPHA = 4.0  # src/carryon/manifest.ts


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device")
    return name


def configure_torch(device: str, threads: Optional[int]) -> None:
    if threads:
        torch.set_num_threads(threads)
    # Parity with the f32 ONNX graph: no TF32 matmuls on Ampere+ (guarded: absent on CPU-only builds).
    cuda_backend = getattr(torch.backends, "cuda", None)
    if device.startswith("cuda") and cuda_backend is not None and hasattr(cuda_backend, "matmul"):
        cuda_backend.matmul.allow_tf32 = False
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.allow_tf32 = False


def _secondary_specs(base: BasePackage, secondaries: Sequence[Dict], with_eval_shards: bool) -> Tuple[List[Dict], List[Dict]]:
    """Corpus.open's secondary specs (training and held-out shards) from train_carry_on's entries,
    checking each secondary package (when given) against the primary: same vocabulary, the layers."""
    specs: List[Dict] = []
    eval_specs: List[Dict] = []
    if len(secondaries) > MAX_SECONDARY_BASES:
        raise ValueError(f"at most {MAX_SECONDARY_BASES} secondary bases, got {len(secondaries)}")
    for j, entry in enumerate(secondaries):
        layers = list(entry.get("layers") or ["final"])
        spec: Dict = {"paths": list(entry["shards"]), "layers": layers}
        if entry.get("base"):
            sb = BasePackage.open(entry["base"])
            if sb.fingerprint == base.fingerprint:
                raise ValueError(f"secondary base {j} ({entry['base']}) is the primary base itself")
            if sb.vocab_size != base.vocab_size:
                raise ValueError(f"secondary base {j} ({entry['base']}): vocabulary {sb.vocab_size}, the primary's is {base.vocab_size}: "
                                 "a mixture's bases must share the tokenizer")
            for l in layers:
                if l != "final" and l not in sb.extra_layers:
                    raise ValueError(f"secondary base {j} input layer {l}: {entry['base']} does not output it (has {sb.extra_layers})")
            spec.update(fingerprint=sb.fingerprint, hidden_size=sb.hidden_size)
        specs.append(spec)
        if with_eval_shards:
            if not entry.get("eval_shards"):
                raise ValueError(f"held-out shards (--eval-shards) of a mixture need the secondary base {j}'s aligned ones too")
            eval_specs.append({**spec, "paths": list(entry["eval_shards"])})
    return specs, eval_specs


def train_carry_on(
    base_dir: str,
    shards: Sequence[str],
    run_dir: str,
    carry_on_id: str,
    arch: Dict,
    options: TrainOptions,
    seq_len: Optional[int] = None,
    eval_fraction: float = 0.1,
    eval_shards: Optional[Sequence[str]] = None,
    loss_rows: str = "auto",
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    description: str = "",
    export: bool = True,
    resume: bool = True,
    init_seed: Optional[int] = None,
    dist: Optional[Dist] = None,
    secondaries: Sequence[Dict] = (),
) -> Dict:
    """Trains, evaluates (base vs carry-on, α sweep), exports + verifies; writes run_dir/report.json.
    With `dist` (torchrun), every process trains its slice of each batch; rank 0 alone then
    evaluates, exports and writes the report, and the other ranks return {"rank", "train"}.

    A mixture carry-on: `secondaries` holds one entry per secondary base, in order:
    {"shards": paths, "layers": input layers (default ["final"]), "base": its package folder
    (optional: then its fingerprint, hidden size, vocabulary and layers are checked against the
    shards), "eval_shards": held-out shards aligned with `eval_shards` (needed with them)}."""
    dist = dist or Dist()
    os.makedirs(run_dir, exist_ok=True)
    base = BasePackage.open(base_dir)
    config = CarryOnConfig.for_base(base.config, **arch)
    for l in config.input_layers:
        if l != "final" and l not in base.extra_layers:
            raise ValueError(f"input layer {l}: the base package does not output it (has {base.extra_layers}); re-import with --layers {l}")
    seq_len = seq_len or config.max_positions
    specs, eval_specs = _secondary_specs(base, secondaries, bool(eval_shards))
    corpus = Corpus.open(shards, config.input_layers, seq_len, base.hidden_size, base.fingerprint, specs)
    if corpus.secondaries:
        # Each secondary's fingerprint and hidden size come from its shards' metadata.
        config.secondary_bases = normalize_secondary_bases(
            [{"fingerprint": sec.fingerprint, "hidden_size": sec.hidden_size, "input_layers": sec.layers} for sec in corpus.secondaries],
            base.fingerprint)
    if eval_shards:
        eval_corpus = Corpus.open(eval_shards, config.input_layers, seq_len, base.hidden_size, base.fingerprint, eval_specs)
        train_w, _ = corpus.split(0.0, options.seed)
        # One corpus object for batches: append the eval shards' windows with shifted shard indexes.
        held = corpus.absorb(eval_corpus)
    else:
        train_w, held = corpus.split(eval_fraction, options.seed)

    completion_rows = corpus.completion_rows()
    if loss_rows == "auto":
        options.completion_only = completion_rows > 0  # chat data: learn the responses
    else:
        options.completion_only = loss_rows == "completion"
        if options.completion_only and completion_rows == 0:
            raise ValueError("--loss-rows completion: these shards have no completion rows (harvest with --format chat)")

    torch.manual_seed(options.seed)
    model = CarryOn(config, seed=options.seed if init_seed is None else init_seed)
    head = torch.from_numpy(base.lm_head())
    trainer = Trainer(model, head, corpus, train_w, held, options, run_dir, dist)
    # Every process loads the checkpoint rank 0 found (same file, so the same state everywhere;
    # rank 0 only writes new ones once training has started).
    resumed_from = dist.broadcast(trainer.latest_checkpoint() if resume and dist.main else None)
    if resumed_from:
        trainer.load_checkpoint(resumed_from)
    t0 = time.time()
    summary = trainer.fit()
    if not dist.main:
        return {"rank": dist.rank, "train": summary}
    if options.checkpoint_every and trainer.step % options.checkpoint_every != 0:
        trainer.save_checkpoint()  # the final state, so `--resume` after completion is a no-op

    report: Dict = {
        "carry_on_id": carry_on_id,
        "base": {"dir": os.path.abspath(base_dir), "fingerprint": base.fingerprint},
        **({"secondary_bases": [{"fingerprint": sec.fingerprint, "hidden_size": sec.hidden_size, "input_layers": sec.layers,
                                 "shards": len(sec.shards), "dir": os.path.abspath(spec["base"]) if spec.get("base") else None}
                                for sec, spec in zip(corpus.secondaries, secondaries)]} if corpus.secondaries else {}),
        "config": config.to_build_config(),
        "parameter_count": model.parameter_count(),
        "data": {
            "shards": len(corpus.shards),
            "train_windows": len(train_w),
            "train_rows": corpus.rows(train_w),
            "eval_windows": len(held),
            "loss_rows": "completion" if options.completion_only else "all",
        },
        "train": {**summary, "options": asdict(options), "resumed_from": resumed_from},
        "distributed": {"processes": dist.world, "global_batch_size": options.batch_size,
                        "per_process_batch": options.batch_size // dist.world},
    }
    alphas = sorted({float(a) for a in alphas} | {0.0, float(options.alpha)})
    if held:
        ev = trainer.evaluate([a for a in alphas if a <= MAX_ALPHA])
        report["eval"] = alpha_report(ev, float(options.alpha))
        best = report["eval"]["best_alpha"]
        if best == 0.0:
            warnings.warn("the carry-on does not lower held-out loss at any α > 0: default_alpha = 0 (serves the base)")
    else:
        warnings.warn("no held-out data: default_alpha stays at the training α")
        best = float(options.alpha)
    report["default_alpha"] = best

    if export:
        exp = export_package(model, base_dir, os.path.join(run_dir, "export"), os.path.join(run_dir, "carry-on"), carry_on_id,
                             best, description, corpus, held or train_w)
        report["export"] = {"package": exp["package"], "sha256": exp["manifest"]["sha256"],
                            "bytes": os.path.getsize(carry_on_graph(exp["package"])), "verify": exp["verify"]}
    report["wall_seconds"] = round(time.time() - t0, 3)
    atomic_write_json(os.path.join(run_dir, "report.json"), report)
    return report
