"""Baselines for the reproduce script: a whole language model (the base fine-tuned, or a
same-size model from scratch) trained on exactly the carry-on's token stream: the same shards'
token_ids / target_ids / loss rows / positions, the same batches (BatchOrder), the same optimiser
and schedule. Only the model differs."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence

import torch

from carryon_train.data import BatchOrder, Corpus, Window, eval_batches, make_batch
from carryon_train.llama_base import LlamaLM
from carryon_train.loss import head_cross_entropy
from carryon_train.model import CarryOnConfig
from carryon_train.train import TrainOptions, lr_at, make_optimizer


def lm_loss(model: LlamaLM, corpus: Corpus, windows: Sequence[Window], completion_only: bool, device: torch.device) -> torch.Tensor:
    b = make_batch(corpus, windows, completion_only, model.max_positions)
    ids = torch.from_numpy(b.token_ids).to(device)
    mask = torch.from_numpy(b.loss_mask).to(device)
    h, _ = model.hidden(ids, torch.from_numpy(b.position_ids).to(device))
    tgt = torch.from_numpy(b.target_ids).to(device)[mask]
    return head_cross_entropy(h[mask], model.lm_head.weight, tgt)  # per row


def train_lm(model: LlamaLM, corpus: Corpus, train: List[Window], o: TrainOptions, log: Optional[list] = None) -> float:
    """Trains in place; returns training seconds."""
    device = torch.device(o.device)
    model.to(device).train()
    opt = make_optimizer(model, o)
    order = BatchOrder(train, o.batch_size, o.seed)
    t0 = time.time()
    for step in range(o.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, o)
        losses = lm_loss(model, corpus, order.batch(step), o.completion_only, device)
        if losses.numel() == 0:
            continue
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        if log is not None and (step + 1) % o.log_every == 0:
            log.append({"step": step + 1, "loss": float(loss.detach())})
    return time.time() - t0


@torch.no_grad()
def eval_lm(model: LlamaLM, corpus: Corpus, windows: Sequence[Window], completion_only: bool, device: torch.device, batch_size: int = 16) -> Dict:
    model.eval()
    total, n = 0.0, 0
    for ws in eval_batches(windows, batch_size):
        losses = lm_loss(model, corpus, ws, completion_only, device)
        total += float(losses.double().sum())
        n += losses.numel()
    return {"loss": total / n, "tokens": n}


def scratch_shape(target_params: int, vocab: int, layers: int, heads: int, max_positions: int, eps: float, theta: float) -> Dict:
    """Width / intermediate of a from-scratch LM (own embedding and untied head) whose parameter
    count is closest to `target_params`, with the carry-on's depth and head count."""
    best = None
    for width in range(8 * heads, 513, 2 * heads):
        if (width // heads) % 2:
            continue
        for inter in range(32, 8 * width + 1, 16):
            m = CarryOnConfig(hidden_size=width, vocab_size=vocab, width=width, layers=layers, heads=heads, intermediate=inter)
            block = 2 * width + 4 * width * width + 3 * width * inter
            count = 2 * vocab * width + layers * block + width
            if best is None or abs(count - target_params) < abs(best["params"] - target_params):
                best = {"width": width, "intermediate": inter, "params": count, "head_dim": m.head_dim}
    assert best is not None
    return best


def make_scratch(shape: Dict, vocab: int, layers: int, heads: int, max_positions: int, eps: float, theta: float, seed: int) -> LlamaLM:
    m = LlamaLM(vocab, shape["width"], layers, heads, heads, shape["head_dim"], shape["intermediate"], eps, theta, max_positions, False)
    m.init_weights(seed)
    assert m.parameter_count() == shape["params"], (m.parameter_count(), shape)
    return m
