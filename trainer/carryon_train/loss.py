"""Next-token cross-entropy through the frozen LM head, in row chunks.

The logits of a batch are [rows, vocab]: 2048 rows × 49152 vocab is 400 MB in f32, and autograd
would keep that (and the softmax) alive until backward. `head_cross_entropy` never materialises
more than one chunk of logits (see _ChunkedHeadCE for how the gradient is obtained).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

# Bytes of f32 logits one chunk may hold when chunk_rows is "auto".
DEFAULT_CHUNK_BYTES = 64 << 20


def auto_chunk_rows(vocab: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    return max(16, budget_bytes // (4 * vocab))


class _ChunkedHeadCE(torch.autograd.Function):
    """Per-row CE through a head W, one chunk of rows at a time.

    Frozen head (the carry-on case): row i's gradient is grad_loss_i · (softmax_i − onehot_i) W, and
    the factor after grad_loss_i does not depend on it, so forward computes G = (P − Y) W chunk by
    chunk while the logits are at hand and saves only G ([N, H], the size of z); backward is
    grad_loss[:, None] · G. Same FLOPs as unchunked autograd, logits memory of one chunk.
    Trainable head (the benchmark's baselines): W's gradient needs the per-row upstream gradient
    inside the sum over rows, so backward recomputes each chunk's logits instead (+50% FLOPs).
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:  # type: ignore[override]
        n = z.shape[0]
        fused = ctx.needs_input_grad[0] and not ctx.needs_input_grad[1]
        losses = z.new_empty(n)
        lse = z.new_empty(n)
        g = torch.empty_like(z) if fused else None
        rows = torch.arange(min(chunk, max(n, 1)), device=z.device)
        for i in range(0, n, chunk):
            logits = z[i : i + chunk] @ weight.t()
            t = targets[i : i + chunk]
            lse_c = torch.logsumexp(logits, dim=-1)
            lse[i : i + chunk] = lse_c
            losses[i : i + chunk] = lse_c - logits.gather(1, t[:, None]).squeeze(1)
            if g is not None:
                p = logits.sub_(lse_c[:, None]).exp_()  # softmax, in place: the logits are done
                p[rows[: p.shape[0]], t] -= 1
                g[i : i + chunk] = p @ weight
        if fused:
            ctx.save_for_backward(g)
        else:
            ctx.save_for_backward(z, weight, targets, lse)
        ctx.fused, ctx.chunk = fused, chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):  # type: ignore[override]
        if ctx.fused:
            (g,) = ctx.saved_tensors
            return grad_losses[:, None] * g, None, None, None
        z, weight, targets, lse = ctx.saved_tensors
        chunk = ctx.chunk
        want_z, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_z = torch.empty_like(z) if want_z else None
        grad_w = torch.zeros_like(weight) if want_w else None
        for i in range(0, z.shape[0], chunk):
            zc = z[i : i + chunk]
            p = torch.exp(zc @ weight.t() - lse[i : i + chunk, None])  # softmax
            p[torch.arange(p.shape[0], device=p.device), targets[i : i + chunk]] -= 1
            p *= grad_losses[i : i + chunk, None]
            if grad_z is not None:
                grad_z[i : i + chunk] = p @ weight
            if grad_w is not None:
                grad_w += p.t() @ zc
        return grad_z, grad_w, None, None


def head_cross_entropy(z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: Optional[int] = None) -> torch.Tensor:
    """Per-row CE of softmax(z Wᵀ) at `targets`; z [N, H], W [V, H], targets [N] → [N].
    `chunk_rows` None = auto (DEFAULT_CHUNK_BYTES of logits); 0 = unchunked (reference)."""
    if chunk_rows == 0:
        return F.cross_entropy(z @ weight.t(), targets, reduction="none")
    chunk = chunk_rows or auto_chunk_rows(weight.shape[0])
    return _ChunkedHeadCE.apply(z, weight, targets, chunk)


def masked_rows(batch_tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] → [rows where mask, ...]: only the rows the loss counts go through the head."""
    return batch_tensor[mask]


def loss_sum(z: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: Optional[int] = None) -> Tuple[torch.Tensor, int]:
    losses = head_cross_entropy(z, weight, targets, chunk_rows)
    return losses.sum(), int(targets.shape[0])
