"""The training loop: AdamW on the carry-on, frozen base head, resumable checkpoints, JSONL log.

Determinism: the data order is a pure function of (seed, step) (data.BatchOrder), the model has no
dropout, and a checkpoint holds the model, the optimizer, the step and every RNG state, so a run
resumed from step k computes exactly what the uninterrupted run computes (tested on CPU).

Data-parallel (torchrun, distributed.py): the same loop on every process, each on its slice of the
global batch, through DistributedDataParallel; rank 0 alone checkpoints, logs and evaluates.
"""
from __future__ import annotations

import glob
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .atomic import atomic_write, atomic_write_text
from .data import BatchOrder, Corpus, Window, make_batch
from .distributed import Dist, DistError, per_process_batch
from .evaluate import evaluate
from .loss import head_cross_entropy
from .model import CarryOn, combine, secondary_inputs
from .progress import progress


@dataclass
class TrainOptions:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    schedule: str = "cosine"  # or "constant" (after warmup)
    weight_decay: float = 0.01
    betas: Sequence[float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    alpha: float = 1.0  # the α training uses: the manifest's default until the sweep picks another
    chunk_rows: Optional[int] = None  # None: auto (64 MiB of logits per chunk)
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    eval_batch_size: int = 16
    completion_only: bool = False
    device: str = "cpu"
    progress: bool = True


def peak_memory(device: torch.device) -> Dict[str, float]:
    """The process's peak RSS so far (data, torch and training together), and the CUDA allocator's
    peak on a GPU: what a run needed, for report.json."""
    out: Dict[str, float] = {}
    try:
        import resource  # Unix only

        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
    except ImportError:
        pass
    if device.type == "cuda":
        out["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def lr_at(step: int, o: TrainOptions) -> float:
    """Linear warmup, then cosine down to min_lr_ratio · lr (or constant)."""
    if o.warmup > 0 and step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    if o.schedule == "constant":
        return o.lr
    span = max(1, o.steps - o.warmup)
    t = min(1.0, (step - o.warmup) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(model: torch.nn.Module, o: TrainOptions) -> torch.optim.Optimizer:
    # No decay on norms and biases (their scale is the point), decay on matrices.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def to_device(batch, device: torch.device, layers: Sequence) -> Dict[str, torch.Tensor]:
    return {
        "hidden": [torch.from_numpy(batch.hidden[l]).to(device) for l in layers],
        "final": torch.from_numpy(batch.hidden["final"]).to(device),
        "input_ids": torch.from_numpy(batch.token_ids).to(device),
        "targets": torch.from_numpy(batch.target_ids).to(device),
        "positions": torch.from_numpy(batch.position_ids).to(device),
        "mask": torch.from_numpy(batch.loss_mask).to(device),
    }


def _load(path: str, device: torch.device) -> Dict:
    """torch.load of our own checkpoint. It holds NumPy / Python RNG states and plain dicts, which
    torch ≥ 2.6's default `weights_only=True` refuses; torch < 1.13 has no such argument."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except TypeError:
        return torch.load(path, map_location=device)


class Trainer:
    def __init__(self, model: CarryOn, head: torch.Tensor, corpus: Corpus, train: List[Window], held_out: List[Window],
                 options: TrainOptions, run_dir: str, dist: Optional[Dist] = None) -> None:
        self.model, self.corpus, self.o, self.run_dir = model, corpus, options, run_dir
        self.dist = dist or Dist()
        self.device = torch.device(options.device)
        self.model.to(self.device)
        # `net` runs the training forward: the model itself, or its DDP wrapper, whose backward
        # averages the gradients over the processes. Checkpoints, evaluation and export use the bare
        # model, so their names and contents do not depend on the process count.
        self.net: torch.nn.Module = self.model
        if self.dist.enabled:
            per_process_batch(options.batch_size, self.dist.world)
            if len(train) < self.dist.world:
                raise DistError(f"{len(train)} training windows cannot be split over {self.dist.world} processes")
            # broadcast_buffers off: the only buffers are the RoPE tables, the same constants everywhere.
            self.net = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None, broadcast_buffers=False)
        self.head = head.to(self.device).requires_grad_(False)
        self.train_windows, self.held_out = train, held_out
        self.order = BatchOrder(train, options.batch_size, options.seed)
        self.opt = make_optimizer(model, options)
        self.step = 0
        self.elapsed = 0.0
        # The log line being accumulated (losses since the last one): checkpointed with the rest,
        # so a resumed run's log equals an uninterrupted run's.
        self.pending_losses: List[float] = []
        self.pending_tokens = 0
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.log_path = os.path.join(run_dir, "train-log.jsonl")
        self.input_layers = list(model.config.input_layers)
        os.makedirs(run_dir, exist_ok=True)

    # -- checkpoints --------------------------------------------------------------------------

    def state(self) -> Dict:
        return {
            "format": "carryon-train-checkpoint",
            "version": 1,
            "step": self.step,
            # Where the data stream stands, in global batches: BatchOrder is a function of (seed,
            # step, global batch size) alone, so a run with any process count resumes from here.
            "data_position": {"step": self.step, "global_batch_size": self.o.batch_size, "seed": self.o.seed,
                              "written_by_processes": self.dist.world},
            "elapsed_s": self.elapsed,
            "pending_log": {"losses": list(self.pending_losses), "tokens": self.pending_tokens},
            "config": self.model.config.to_dict(),
            "options": asdict(self.o),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def save_checkpoint(self) -> str:
        os.makedirs(self.ckpt_dir, exist_ok=True)
        path = os.path.join(self.ckpt_dir, f"step-{self.step:08d}.pt")
        state = self.state()
        atomic_write(path, lambda f: torch.save(state, f))  # a crash mid-save never leaves a torn "latest" checkpoint
        for old in sorted(glob.glob(os.path.join(self.ckpt_dir, "step-*.pt")))[: -self.o.keep_checkpoints]:
            os.remove(old)
        return path

    def latest_checkpoint(self) -> Optional[str]:
        found = sorted(glob.glob(os.path.join(self.ckpt_dir, "step-*.pt")))
        return found[-1] if found else None

    def load_checkpoint(self, path: str) -> None:
        state = _load(path, self.device)
        if state.get("format") != "carryon-train-checkpoint":
            raise ValueError(f"{path} is not a carry-on training checkpoint")
        if state["config"] != self.model.config.to_dict():
            raise ValueError(f"{path} was written for another carry-on shape: {state['config']}")
        pos = state.get("data_position")
        if pos and (pos["global_batch_size"], pos["seed"]) != (self.o.batch_size, self.o.seed):
            warnings.warn(f"{path}: written with global batch {pos['global_batch_size']} and seed {pos['seed']}, resumed with "
                          f"{self.o.batch_size} and {self.o.seed}: the data order from step {state['step']} on is not the original run's")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
        pending = state.get("pending_log", {})
        self.pending_losses, self.pending_tokens = list(pending.get("losses", [])), int(pending.get("tokens", 0))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu() if hasattr(rng["torch"], "cpu") else rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if self.dist.main:
            self._truncate_log(self.step)

    def _truncate_log(self, step: int) -> None:
        """Drops log lines past the checkpoint, so a resumed run's log reads as one run's."""
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path, encoding="utf-8") as f:
            keep = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= step]
        atomic_write_text(self.log_path, "".join(keep))

    def log(self, entry: Dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    # -- loop ---------------------------------------------------------------------------------

    def train_step(self) -> Dict[str, float]:
        """One optimizer step on the global batch of this step. With several processes each one
        takes its slice of the batch and the update equals the one-process one, up to summation
        order (distributed.py)."""
        self.model.train()
        windows = self.dist.shard(self.order.batch(self.step))  # the whole batch in one process
        batch = make_batch(self.corpus, windows, self.o.completion_only, self.model.config.max_positions)
        total = batch.tokens
        if self.dist.enabled:
            # The global batch's loss-row count, before any backward: it scales every process's
            # loss, and all processes must agree on skipping a step (no collective left half-done).
            total = int(self.dist.all_reduce_sum(torch.tensor([float(total)], dtype=torch.float64, device=self.device)).item())
        if total == 0:  # e.g. no completion rows in these windows: nothing to learn
            self.step += 1
            return {"loss": float("nan"), "tokens": 0, "grad_norm": 0.0}
        t = to_device(batch, self.device, self.input_layers)
        lr = lr_at(self.step, self.o)
        for g in self.opt.param_groups:
            g["lr"] = lr
        ids = t["input_ids"] if self.model.config.reads_token_ids else None
        secondary = secondary_inputs(batch, self.device, self.model.config)
        if secondary is None:
            delta, gate = self.net(t["hidden"], t["positions"], ids)
        else:
            delta, gate = self.net(t["hidden"], t["positions"], ids, None, secondary)
        mask = t["mask"]
        if batch.tokens:
            losses = head_cross_entropy(combine(t["final"][mask], delta[mask], gate[mask], self.o.alpha), self.head,
                                        t["targets"][mask], self.o.chunk_rows)
        if not self.dist.enabled:
            objective = losses.mean()  # mean CE over the batch's loss rows
        elif batch.tokens:
            # DDP divides the summed gradients by the process count: × world / total makes the
            # result the gradient of (all processes' CE rows summed) / total, the one-process mean.
            objective = losses.sum() * (self.dist.world / total)
        else:
            # No loss rows in this slice, some elsewhere: a zero that still reaches every parameter,
            # so this process's backward joins DDP's gradient all-reduce with a zero share.
            objective = (delta.sum() + gate.sum()) * 0.0
        self.opt.zero_grad(set_to_none=True)
        objective.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.o.grad_clip if self.o.grad_clip > 0 else float("inf"))
        self.opt.step()
        self.step += 1
        loss = float(objective.detach())
        if self.dist.enabled:  # Σ over processes of (their CE sum × world / total), ÷ world: the batch mean
            loss = float(self.dist.all_reduce_sum(objective.detach().double().reshape(1)).item()) / self.dist.world
        return {"loss": loss, "tokens": total, "grad_norm": float(norm), "lr": lr}

    def fit(self, stop_at: Optional[int] = None) -> Dict:
        """Trains to `o.steps` (or stops early at `stop_at`, for tests of resuming)."""
        end = min(self.o.steps, stop_at) if stop_at is not None else self.o.steps
        main = self.dist.main  # only rank 0 logs, evaluates, checkpoints and shows progress
        bar = progress(self.o.steps, self.step, "carry-on", self.o.progress and main)
        t0 = time.time()
        try:
            while self.step < end:
                r = self.train_step()
                bar.update(1)
                if r["tokens"]:
                    self.pending_losses.append(r["loss"])
                    self.pending_tokens += r["tokens"]
                if self.step % self.o.log_every == 0 or self.step == self.o.steps:
                    mean = float(np.mean(self.pending_losses)) if self.pending_losses else float("nan")
                    if main:
                        self.log({"step": self.step, "loss": mean, "lr": r.get("lr", 0.0), "grad_norm": r["grad_norm"],
                                  "tokens": self.pending_tokens, "elapsed_s": round(self.elapsed + time.time() - t0, 3)})
                        bar.set_postfix({"loss": f"{mean:.4f}"})
                    self.pending_losses, self.pending_tokens = [], 0
                if main and self.o.eval_every and self.step % self.o.eval_every == 0 and self.held_out:
                    ev = self.evaluate([0.0, self.o.alpha])
                    self.log({"step": self.step, "eval": {str(a): v for a, v in ev["loss"].items()}})
                if self.o.checkpoint_every and self.step % self.o.checkpoint_every == 0:
                    self.elapsed += time.time() - t0
                    t0 = time.time()
                    if main:
                        self.save_checkpoint()
        finally:
            bar.close()
        self.elapsed += time.time() - t0
        return {"steps": self.step, "train_seconds": round(self.elapsed, 3), **peak_memory(self.device)}

    def evaluate(self, alphas: Sequence[float]) -> Dict:
        return evaluate(self.model, self.head, self.corpus, self.held_out, alphas, self.o.eval_batch_size,
                        self.o.completion_only, self.device, self.o.chunk_rows)
