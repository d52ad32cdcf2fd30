"""Held-out loss of the base (α = 0) and of base + carry-on at several α, from one carry-on pass
per batch (delta and gate do not depend on α)."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch

from .data import Corpus, Window, eval_batches, make_batch
from .loss import head_cross_entropy
from .model import CarryOn, combine, secondary_inputs

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


@torch.no_grad()
def evaluate(model: CarryOn, head: torch.Tensor, corpus: Corpus, windows: Sequence[Window], alphas: Sequence[float],
             batch_size: int, completion_only: bool, device: torch.device, chunk_rows: Optional[int] = None) -> Dict:
    was_training = model.training
    model.eval()
    sums = {float(a): 0.0 for a in alphas}
    tokens = 0
    layers = list(model.config.input_layers)
    try:
        for ws in eval_batches(windows, batch_size):
            b = make_batch(corpus, ws, completion_only, model.config.max_positions)
            if b.tokens == 0:
                continue
            mask = torch.from_numpy(b.loss_mask).to(device)
            hidden = [torch.from_numpy(b.hidden[l]).to(device) for l in layers]
            ids = torch.from_numpy(b.token_ids).to(device)
            secondary = secondary_inputs(b, device, model.config)
            delta, gate = model(hidden, torch.from_numpy(b.position_ids).to(device), ids if model.config.reads_token_ids else None,
                                None, secondary)
            x = torch.from_numpy(b.hidden["final"]).to(device)[mask]
            d, g = delta[mask], gate[mask]
            tgt = torch.from_numpy(b.target_ids).to(device)[mask]
            for a in sums:
                sums[a] += float(head_cross_entropy(combine(x, d, g, a), head, tgt, chunk_rows).double().sum())
            tokens += b.tokens
    finally:
        model.train(was_training)
    loss = {a: (s / tokens if tokens else float("nan")) for a, s in sums.items()}
    return {"tokens": tokens, "loss": loss, "ppl": {a: _ppl(v) for a, v in loss.items()}}


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def alpha_report(ev: Dict, train_alpha: float = 1.0) -> Dict:
    """base vs carry-on at the trained α, the sweep, and the best α (lowest held-out loss)."""
    loss = ev["loss"]
    best = min(loss, key=lambda a: (loss[a], abs(a - train_alpha)))
    row = lambda a: {"alpha": a, "loss": loss[a], "ppl": ev["ppl"][a]}  # noqa: E731
    return {
        "eval_tokens": ev["tokens"],
        "base": row(0.0) if 0.0 in loss else None,
        "carry_on": row(train_alpha) if train_alpha in loss else None,
        "sweep": [row(a) for a in sorted(loss)],
        "best_alpha": best,
        "best": row(best),
    }
