"""Reference forward pass of a Hugging Face model folder, written independently of the gateway.

Usage: hf_forward.py FOLDER OUT_FILE < ids.json
Reads FOLDER/config.json and its safetensors (model.safetensors, or the shards that
model.safetensors.index.json names), runs the token ids read as a JSON list from stdin through the
model, and writes the logits [len(ids), vocab_size] to OUT_FILE as little-endian float32.

It computes what transformers' modeling_llama / modeling_qwen2 / modeling_qwen3 compute, on the
folder's tensors as they are (the HF layout: rotate-half RoPE, q/k rows as the file has them):
  - RMSNorm: weight * x / sqrt(mean(x^2) + eps);
  - q/k/v projections, with biases for Qwen2 (always) and where attention_bias is true;
  - Qwen3: q_norm / k_norm RMSNorm over each head's head_dim values, after the projection and
    before RoPE;
  - RoPE: inv_freq in float32 as transformers' rope init functions compute it (default, 'linear',
    'llama3' = _compute_llama3_parameters), angles position * inv_freq in float32 (transformers
    runs this part in float32 whatever the model dtype), rotate_half;
  - grouped-query attention (repeat_kv), causal, scaled by head_dim ** -0.5, softmax;
  - o_proj, SwiGLU MLP down(silu(gate(x)) * up(x)), final norm, lm_head or the tied embeddings.
Everything except the RoPE angles runs in float64, so the reference's own rounding is negligible.
Needs only numpy and torch (no transformers, no safetensors package).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def read_safetensors(path):
    """The safetensors format: u64 header length, JSON header, then the raw little-endian tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        raw = np.frombuffer(data, dtype=DTYPES[entry["dtype"]], count=(end - start) // np.dtype(DTYPES[entry["dtype"]]).itemsize, offset=base + start)
        if entry["dtype"] == "BF16":
            # bfloat16 is the top half of a float32.
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(raw.astype(np.float64).reshape(entry["shape"]))
    return out


def read_folder(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(folder, name)))
    return tensors


def inv_freq_of(cfg, head_dim):
    """transformers' ROPE_INIT_FUNCTIONS, in float32 as they run."""
    params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    base = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / params["factor"]
    if rope_type == "llama3":
        # _compute_llama3_parameters, line for line.
        factor = params["factor"]
        low_freq_factor = params["low_freq_factor"]
        high_freq_factor = params["high_freq_factor"]
        old_context_len = params["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    raise SystemExit(f"reference: rope type {rope_type!r} not implemented")


def rms_norm(x, weight, eps):
    return weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(folder, ids):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    arch = cfg["architectures"][0]
    w = read_folder(folder)
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    eps = cfg["rms_norm_eps"]
    qkv_bias = arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias"))
    qk_norm = arch == "Qwen3ForCausalLM"
    seq = len(ids)

    positions = torch.arange(seq, dtype=torch.float32)
    angles = positions[:, None] * inv_freq_of(cfg, head_dim)[None, :]  # float32, as transformers
    emb = torch.cat((angles, angles), dim=-1).double()
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]  # [S, 1, hd], broadcast over heads
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()

    def linear(x, name, bias):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if bias else y

    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = linear(h, p + "self_attn.q_proj", qkv_bias).view(seq, heads, head_dim)
        k = linear(h, p + "self_attn.k_proj", qkv_bias).view(seq, kv_heads, head_dim)
        v = linear(h, p + "self_attn.v_proj", qkv_bias).view(seq, kv_heads, head_dim)
        if qk_norm:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = heads // kv_heads
        k = k.repeat_interleave(group, dim=1)  # repeat_kv: query head h reads kv head h // group
        v = v.repeat_interleave(group, dim=1)
        scores = torch.einsum("shd,thd->hst", q, k) * head_dim**-0.5
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        attn = torch.einsum("hst,thd->shd", probs, v).reshape(seq, heads * head_dim)
        x = x + linear(attn, p + "self_attn.o_proj", False)
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, p + "mlp.gate_proj", False)
        x = x + linear(torch.nn.functional.silu(gate) * linear(h, p + "mlp.up_proj", False), p + "mlp.down_proj", False)
    x = rms_norm(x, w["model.norm.weight"], eps)
    tied = cfg.get("tie_word_embeddings", False)  # LlamaConfig, Qwen2Config, Qwen3Config default
    head = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    return x @ head.T


def main():
    folder, out = sys.argv[1], sys.argv[2]
    ids = json.load(sys.stdin)
    logits = forward(folder, ids)
    logits.numpy().astype("<f4").tofile(out)


if __name__ == "__main__":
    main()
