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
from .model import LlamaBlock, RMSNorm, RotaryTables, attention_allowed, rope_tables
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


# llama2.c's run.c hard-codes these; a checkpoint with other values would import as another model.
LLAMA2C_ROPE_THETA = 10000.0
LLAMA2C_RMS_EPS = 1e-5


def llama2c_freq_cis(head_dim: int, seq_len: int) -> Tuple[np.ndarray, np.ndarray]:
    """The legacy format's freq_cis_real / freq_cis_imag [seq_len, head_dim/2] (readers skip them;
    written as llama2.c's export computes them, in float32 torch arithmetic)."""
    freqs = 1.0 / (LLAMA2C_ROPE_THETA ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(seq_len * 2).float(), freqs).float()[:seq_len]
    return torch.cos(angles).numpy(), torch.sin(angles).numpy()


def write_llama2c(model: LlamaLM, path: str, seq_len: Optional[int] = None) -> int:
    """Writes `model` as a legacy (version-0) llama2.c checkpoint, the layout stories260K.bin has and
    src/model/llama2c.ts reads: 7 × int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
    vocab_size, seq_len; vocab_size negated when the classifier is not tied to the embedding), then
    f32 weights: embedding, rms_att[l], wq[l], wk[l], wv[l], wo[l], rms_ffn[l], w1[l] (gate), w2[l]
    (down), w3[l] (up), rms_final, freq_cis real + imag, and the classifier only when untied.
    Matrices are PyTorch's [out, in] row-major, Q/K unpermuted (interleaved RoPE), as llama2.c's
    export writes them. Returns the bytes written."""
    layers = list(model.layers)
    attn0 = layers[0].self_attn
    dim = model.embed_tokens.weight.shape[1]
    vocab = model.embed_tokens.weight.shape[0]
    hidden_dim = layers[0].mlp.gate_proj.weight.shape[0]
    heads, kv_heads, head_dim = attn0.heads, attn0.kv_heads, attn0.head_dim
    if heads * head_dim != dim:
        raise ValueError(f"llama2.c needs head_dim = dim / n_heads ({dim} / {heads}), got {head_dim}")
    eps = float(layers[0].input_layernorm.eps)
    if abs(eps - LLAMA2C_RMS_EPS) > 1e-12:
        raise ValueError(f"llama2.c hard-codes RMSNorm eps {LLAMA2C_RMS_EPS}; this model uses {eps}")
    if not torch.equal(model.rope.cos[:2].cpu(), torch.from_numpy(rope_tables(head_dim, LLAMA2C_ROPE_THETA, 2)[0])):
        raise ValueError(f"llama2.c hard-codes RoPE theta {LLAMA2C_ROPE_THETA:g}; this model uses another")
    seq_len = int(seq_len or model.max_positions)
    tied = model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()

    def f32(t: torch.Tensor) -> bytes:
        return np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()

    parts = [np.array([dim, hidden_dim, len(layers), heads, kv_heads, vocab if tied else -vocab, seq_len], dtype="<i4").tobytes(),
             f32(model.embed_tokens.weight)]
    parts += [f32(b.input_layernorm.weight) for b in layers]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        parts += [f32(getattr(b.self_attn, name).weight) for b in layers]
    parts += [f32(b.post_attention_layernorm.weight) for b in layers]
    for name in ("gate_proj", "down_proj", "up_proj"):
        parts += [f32(getattr(b.mlp, name).weight) for b in layers]
    parts.append(f32(model.norm.weight))
    real, imag = llama2c_freq_cis(head_dim, seq_len)
    parts += [np.ascontiguousarray(real, "<f4").tobytes(), np.ascontiguousarray(imag, "<f4").tobytes()]
    if not tied:
        parts.append(f32(model.lm_head.weight))
    data = b"".join(parts)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(data)
