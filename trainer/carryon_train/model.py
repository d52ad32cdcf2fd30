"""The carry-on module in PyTorch, mirroring src/carryon/graph.ts operation for operation.

    u = concat(inputs)                      (input_layers order; 'final' = base hidden_states; then, for a
                                             mixture, each secondary base's layers in its input_layers order)
    x = u W_inᵀ (+ E[input_ids])
    L × Llama block: x += attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))
    h = RMSNorm(x) · w_norm
    delta = h W_outᵀ;  gate = sigmoid(h W_gateᵀ + b_gate)

Every detail that changes numbers follows the ONNX graph: interleaved RoPE (pair j = elements
2j, 2j+1) with llama2.c's float32 cos/sin tables, GQA where query head j uses kv head
⌊j / (heads / kv_heads)⌋, scores divided by sqrt(head_dim), masked scores *replaced* by float32's
lowest finite value (so a fully masked row stays finite), RMSNorm as x · 1/sqrt(mean(x²) + eps).
Parity is proven by the export (`carryon carry-on verify`), not assumed.

`LlamaBlock` and `RotaryTables` are also used by llama_base.py (the base model for the benchmark's
full fine-tune): the carry-on block *is* the base's block.

Only torch APIs present since 1.13 are used; scaled_dot_product_attention (2.0+) is used when it
exists and no padding mask is needed, which is the training path.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

InputLayer = Union[str, int]

MAX_SECONDARY_BASES = 4  # the mixture contract (manifest secondary_bases)


def _normalize_layers(layers: Sequence, what: str) -> List[InputLayer]:
    if not layers or len(set(map(str, layers))) != len(layers):
        raise ValueError(f"{what} must be non-empty and not repeat: {list(layers) if layers else layers}")
    return [l if l == "final" else int(l) for l in layers]


def normalize_secondary_bases(entries: Sequence[Dict], primary_fingerprint: Optional[str] = None) -> List[Dict]:
    """The mixture contract's `secondary_bases`: at most 4 entries {fingerprint, hidden_size,
    input_layers}, fingerprints distinct (and not the primary's, when it is known)."""
    out: List[Dict] = []
    if len(entries) > MAX_SECONDARY_BASES:
        raise ValueError(f"at most {MAX_SECONDARY_BASES} secondary bases, got {len(entries)}")
    for j, e in enumerate(entries):
        fp, hs = str(e["fingerprint"]), int(e["hidden_size"])
        if hs <= 0:
            raise ValueError(f"secondary base {j}: hidden_size must be positive, got {hs}")
        out.append({"fingerprint": fp, "hidden_size": hs,
                    "input_layers": _normalize_layers(list(e["input_layers"]), f"secondary base {j} input_layers")})
    fps = [e["fingerprint"] for e in out]
    if len(set(fps)) != len(fps):
        raise ValueError(f"secondary bases must be distinct bases, fingerprints {fps}")
    if primary_fingerprint is not None and primary_fingerprint in fps:
        raise ValueError(f"secondary base {fps.index(primary_fingerprint)} is the primary base itself ({primary_fingerprint[:12]})")
    return out

INIT_STD = 0.02  # as graph.ts (GPT-2/Llama reference init)
_SDPA = getattr(F, "scaled_dot_product_attention", None)


@dataclass
class CarryOnConfig:
    """The carry-on's shape; `to_build_config()` is the JSON `carryon carry-on build --config` reads."""

    hidden_size: int
    vocab_size: int
    width: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 0  # 0: = heads
    intermediate: int = 0  # 0: Llama's 8/3 · width rounded up to 32, as graph.ts
    input_layers: List[InputLayer] = field(default_factory=lambda: ["final"])
    reads_token_ids: bool = False
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_positions: int = 2048
    head_dim: int = 0  # 0: width / heads
    # Mixture carry-ons: [{fingerprint, hidden_size, input_layers}] of the secondary bases, whose
    # states are concatenated after the primary's (in this order); [] for a single-base carry-on.
    secondary_bases: List[Dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kv_heads == 0:
            self.kv_heads = self.heads
        if self.head_dim == 0:
            if self.width % self.heads != 0:
                raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
            self.head_dim = self.width // self.heads
        if self.intermediate == 0:
            self.intermediate = int(math.ceil(8 * self.width / 3 / 32) * 32)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        self.input_layers = _normalize_layers(self.input_layers, "input_layers")
        self.secondary_bases = normalize_secondary_bases(self.secondary_bases)

    @property
    def input_width(self) -> int:
        """in_proj's input size: n·H + Σ_j n_j·H_j."""
        return self.hidden_size * len(self.input_layers) + sum(e["hidden_size"] * len(e["input_layers"]) for e in self.secondary_bases)

    @classmethod
    def for_base(cls, base: Dict, **kw) -> "CarryOnConfig":
        """Takes the base package's config.json: same positions and epsilon as the base, as `carry-on init`."""
        return cls(
            hidden_size=base["hidden_size"],
            vocab_size=base["vocab_size"],
            rope_theta=float(base.get("rope_theta", 10000.0)),
            rms_norm_eps=float(base.get("rms_norm_eps", 1e-5)),
            max_positions=int(base["max_position_embeddings"]),
            **kw,
        )

    def to_build_config(self, carry_on_id: Optional[str] = None, description: Optional[str] = None) -> Dict:
        out: Dict = {
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "input_layers": list(self.input_layers),
            "reads_token_ids": self.reads_token_ids,
            "architecture": {
                "width": self.width,
                "layers": self.layers,
                "heads": self.heads,
                "kv_heads": self.kv_heads,
                "head_dim": self.head_dim,
                "intermediate": self.intermediate,
                "rope_theta": self.rope_theta,
                "rms_norm_eps": self.rms_norm_eps,
                "max_positions": self.max_positions,
            },
        }
        if self.secondary_bases:  # omitted for a single base: the config stays what it always was
            out["secondary_bases"] = [{"fingerprint": e["fingerprint"], "hidden_size": e["hidden_size"],
                                       "input_layers": list(e["input_layers"])} for e in self.secondary_bases]
        if carry_on_id is not None:
            out["id"] = carry_on_id
        if description is not None:
            out["description"] = description
        return out

    def to_dict(self) -> Dict:
        d = asdict(self)
        if not d["secondary_bases"]:  # single base: the dict older checkpoints hold
            del d["secondary_bases"]
        return d


def rope_tables(head_dim: int, theta: float, max_positions: int) -> Tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, head_dim/2] in llama2.c's float32 arithmetic, exactly as graph.ts
    computes them (`1.0f / powf(theta, i / (float)head_size)`, `pos * freq` rounded to float32)."""
    f32 = np.float32
    half = head_dim // 2
    exps = np.array([f32((2 * j) / head_dim) for j in range(half)], dtype=np.float64)
    powed = np.power(np.float64(f32(theta)), exps).astype(f32)
    freqs = (1.0 / powed.astype(np.float64)).astype(f32)
    pos = np.arange(max_positions, dtype=np.float64)[:, None]
    angles = (pos * freqs.astype(np.float64)[None, :]).astype(f32)
    return np.cos(angles.astype(np.float64)).astype(f32), np.sin(angles.astype(np.float64)).astype(f32)


class RotaryTables(nn.Module):
    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        cos, sin = rope_tables(head_dim, theta, max_positions)
        # Not persistent: derived from the config, so checkpoints and exports never carry them.
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """[B, S] → cos, sin [B, S, 1, head_dim/2], broadcasting over heads."""
        return self.cos[position_ids].unsqueeze(2), self.sin[position_ids].unsqueeze(2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Adjacent-pair rotation on [B, S, heads, hd]: (a, b) → (a cos − b sin, a sin + b cos)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x · 1/sqrt(mean(x²) + eps), then · w: the graph's order of operations.
        inv = torch.reciprocal(torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        return (x * inv) * self.weight


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(width, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, width, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: Optional[torch.Tensor]) -> torch.Tensor:
        B, S, _ = h.shape
        q = apply_rope(self.q_proj(h).view(B, S, self.heads, self.head_dim), cos, sin).transpose(1, 2)
        k = apply_rope(self.k_proj(h).view(B, S, self.kv_heads, self.head_dim), cos, sin).transpose(1, 2)
        v = self.v_proj(h).view(B, S, self.kv_heads, self.head_dim).transpose(1, 2)
        group = self.heads // self.kv_heads
        if group > 1:  # query head j uses kv head j // group
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        if allowed is None and _SDPA is not None:
            ctx = _SDPA(q, k, v, is_causal=True)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if allowed is None:
                allowed = _causal(S, h.device)
            # Replaced, not added, and finite: a fully masked row softmaxes to a finite uniform row.
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.o_proj(ctx.transpose(1, 2).reshape(B, S, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, width: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, intermediate, bias=False)
        self.up_proj = nn.Linear(width, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gate_proj(x)
        return self.down_proj(g * torch.sigmoid(g) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """Pre-norm Llama block; parameter names are Hugging Face's, which the TS builder maps 1:1."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(width, eps)
        self.self_attn = Attention(width, heads, kv_heads, head_dim)
        self.post_attention_layernorm = RMSNorm(width, eps)
        self.mlp = MLP(width, intermediate)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, allowed: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed)
        return x + self.mlp(self.post_attention_layernorm(x))


def _causal(S: int, device: torch.device) -> torch.Tensor:
    return torch.ones(S, S, dtype=torch.bool, device=device).tril()


def attention_allowed(attention_mask: Optional[torch.Tensor], S: int, device: torch.device) -> Optional[torch.Tensor]:
    """[B, 1, S, S] bool: causal AND key not padding; None when there is no padding (fast path)."""
    if attention_mask is None or bool(attention_mask.bool().all()):
        return None
    return _causal(S, device)[None, None] & attention_mask.bool()[:, None, None, :]


class CarryOn(nn.Module):
    def __init__(self, config: CarryOnConfig, seed: Optional[int] = 0) -> None:
        super().__init__()
        c = self.config = config
        self.in_proj = nn.Linear(c.input_width, c.width, bias=False)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.width) if c.reads_token_ids else None
        self.layers = nn.ModuleList(
            LlamaBlock(c.width, c.heads, c.kv_heads, c.head_dim, c.intermediate, c.rms_norm_eps) for _ in range(c.layers)
        )
        self.norm = RMSNorm(c.width, c.rms_norm_eps)
        self.out_proj = nn.Linear(c.width, c.hidden_size, bias=False)
        self.gate_proj = nn.Linear(c.width, c.hidden_size, bias=True)
        self.rope = RotaryTables(c.head_dim, c.rope_theta, c.max_positions)
        if seed is not None:
            self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int) -> None:
        """graph.ts's init: matrices N(0, 0.02²), norms 1, W_out = W_gate = b_gate = 0 (so delta = 0
        and the carry-on is exactly the base until trained; the gate starts at 0.5 and gets gradient)."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.startswith(("out_proj.", "gate_proj.")):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_STD)

    def forward(
        self,
        hidden: Sequence[torch.Tensor],
        position_ids: torch.Tensor,
        input_ids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        secondary: Optional[Sequence[Sequence[torch.Tensor]]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """hidden: one [B, S, H] tensor per input layer, in config order → (delta, gate) [B, S, H].
        secondary (mixtures): per secondary base j, one [B, S, H_j] tensor per its input layer, in
        its config order; concatenated after the primary's, as the contract's graph does."""
        c = self.config
        if len(secondary or ()) != len(c.secondary_bases):
            raise ValueError(f"this carry-on reads {len(c.secondary_bases)} secondary bases, got {len(secondary or ())}")
        parts = list(hidden)
        for j, (e, xs) in enumerate(zip(c.secondary_bases, secondary or ())):
            if len(xs) != len(e["input_layers"]):
                raise ValueError(f"secondary base {j}: {len(e['input_layers'])} input layers, got {len(xs)} tensors")
            parts.extend(xs)
        u = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        x = self.in_proj(u)
        if self.embed_tokens is not None:
            if input_ids is None:
                raise ValueError("this carry-on reads token ids: pass input_ids")
            x = x + self.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids)
        allowed = attention_allowed(attention_mask, x.shape[1], x.device)
        for block in self.layers:
            x = block(x, cos, sin, allowed)
        h = self.norm(x)
        return self.out_proj(h), torch.sigmoid(self.gate_proj(h))

    def export_state(self) -> Dict[str, np.ndarray]:
        """Weights named as `carryon carry-on build` expects: `carry_on.` + the parameter name."""
        return {f"carry_on.{k}": v.detach().cpu().float().numpy().copy() for k, v in self.state_dict().items()}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def secondary_inputs(batch, device: torch.device, config: CarryOnConfig) -> Optional[List[List[torch.Tensor]]]:
    """A mixture batch's secondary states in the model's order (None for a single base)."""
    if not config.secondary_bases:
        return None
    return [[torch.from_numpy(states[l]).to(device) for l in e["input_layers"]] for e, states in zip(config.secondary_bases, batch.secondary)]


def combine(x: torch.Tensor, delta: torch.Tensor, gate: torch.Tensor, alpha: float) -> torch.Tensor:
    """What the gateway feeds the LM head: x + α · gate ⊙ delta."""
    return x + alpha * gate * delta
