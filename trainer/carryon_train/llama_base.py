"""The base model itself in PyTorch, loaded from a model package's body.onnx / head.onnx.

Not needed to train a carry-on (the shards hold the base's states). It exists for the benchmark's
baselines, which must train the base (full fine-tune) or a same-size model from scratch on the same
tokens, and to check that the states in a shard are this base's (tests). It reuses model.py's
LlamaBlock, so base and carry-on run the very same block code. f32 packages only.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from .base import BasePackage
from .model import LlamaBlock, RMSNorm, RotaryTables, attention_allowed
from .onnx_weights import read_initializers


class LlamaLM(nn.Module):
    """Token ids → final-norm hidden states → logits, Llama architecture (interleaved RoPE)."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                 eps: float, rope_theta: float, max_positions: int, tie_embeddings: bool) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, width)
        self.layers = nn.ModuleList(LlamaBlock(width, heads, kv_heads, head_dim, intermediate, eps) for _ in range(layers))
        self.norm = RMSNorm(width, eps)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryTables(head_dim, rope_theta, max_positions)
        self.max_positions = max_positions

    def hidden(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
               layer_outputs: Tuple[int, ...] = ()) -> Tuple[torch.Tensor, Dict[int, torch.Tensor]]:
        x = self.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids)
        allowed = attention_allowed(attention_mask, x.shape[1], x.device)
        extra: Dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.layers):
            x = block(x, cos, sin, allowed)
            if i in layer_outputs:
                extra[i] = x
        return self.norm(x), extra

    def init_weights(self, seed: int, std: float = 0.02) -> None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.randn(p.shape, generator=gen) * std)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix counts once


def load_base(package_dir: str) -> LlamaLM:
    base = BasePackage.open(package_dir)
    c = base.config
    if base.manifest.get("quantization", "f32") != "f32":
        raise ValueError(f"{package_dir}: {base.manifest['quantization']} package; the PyTorch base reads f32 packages only")
    model = LlamaLM(c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"],
                    c["head_dim"], c["intermediate_size"], float(c["rms_norm_eps"]), float(c["rope_theta"]),
                    int(c["max_position_embeddings"]), bool(c["tie_word_embeddings"]))
    body = read_initializers(os.path.join(package_dir, "body.onnx"))
    state: Dict[str, torch.Tensor] = {}
    for name, arr in body.items():
        if not name.startswith("model."):
            continue  # RoPE tables and graph constants
        key = name[len("model."):]
        if key.endswith(".weight_t"):  # the graph stores Wᵀ for MatMul
            key, arr = key[: -len("_t")], arr.T
        state[key] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))
    state["lm_head.weight"] = torch.from_numpy(base.lm_head())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{package_dir}: body.onnx does not fit the Llama layout (missing {missing[:4]}, unexpected {unexpected[:4]})")
    if c["tie_word_embeddings"]:
        model.lm_head.weight = model.embed_tokens.weight  # load_state_dict copied into the tied tensor; keep it tied
    return model
