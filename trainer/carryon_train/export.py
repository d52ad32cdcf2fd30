"""Export: trained weights → carry-on package through the gateway's own builder, then a parity
check of the package in ONNX Runtime against this module's outputs. The export is only declared
done when `carryon carry-on verify` passes (max |Δ| ≤ tolerance, whole sequence and through the
KV cache)."""
from __future__ import annotations

import copy
import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch

from . import node
from .atomic import atomic_write_json
from . import safetensors_io as st
from .data import Corpus, Window
from .model import CarryOn

DEFAULT_TOLERANCE = 1e-4
FIXTURE_LEN = 24
FIXTURE_LEFT_PAD = 3


def write_weights(model: CarryOn, path: str, carry_on_id: Optional[str] = None, description: Optional[str] = None) -> str:
    """weights.safetensors + config.json (the two inputs of `carryon carry-on build`); returns the config path."""
    st.save(path, model.export_state(), {"format": "carryon-carry-on-weights", "format_version": "1"})
    cfg_path = os.path.splitext(path)[0] + ".config.json"
    atomic_write_json(cfg_path, model.config.to_build_config(carry_on_id, description))
    return cfg_path


def input_name(layer, secondary: Optional[int] = None) -> str:
    """Graph input / fixture tensor name of an input layer: `hidden_states`, `hidden_states.layer.{k}`,
    and for secondary base j `secondary.{j}.hidden_states` / `secondary.{j}.hidden_states.layer.{k}`."""
    name = "hidden_states" if layer == "final" else f"hidden_states.layer.{layer}"
    return name if secondary is None else f"secondary.{secondary}.{name}"


@torch.no_grad()
def make_fixture(model: CarryOn, path: str, corpus: Optional[Corpus] = None, windows: Optional[List[Window]] = None, seed: int = 0) -> str:
    """Two sequences of FIXTURE_LEN tokens: real held-out states when there are any (else random
    ones), random token ids, and the second row left-padded (its first FIXTURE_LEFT_PAD keys
    masked, positions starting at 0 at its first real token, as the engine feeds padded batches).
    A mixture's fixture also holds each secondary base's states (`secondary.{j}.…`)."""
    c = model.config
    m = copy.deepcopy(model).cpu().float().eval()
    rng = np.random.default_rng(seed)
    B, S, H = 2, min(FIXTURE_LEN, c.max_positions), c.hidden_size
    hidden = {l: rng.standard_normal((B, S, H)).astype(np.float32) for l in c.input_layers}
    # Drawn after the primary's, so a single-base fixture is what it always was.
    sec = [{l: rng.standard_normal((B, S, e["hidden_size"])).astype(np.float32) for l in e["input_layers"]} for e in c.secondary_bases]
    if corpus is not None and windows:
        ws = [w for w in windows if w.end - w.begin >= S][:B]
        for b, w in enumerate(ws):
            for l in c.input_layers:
                hidden[l][b] = corpus.shards[w.shard].rows(l, w.begin, w.begin + S)
            for src, states in zip(corpus.secondaries, sec):
                for l in states:
                    states[l][b] = src.rows(l, w.sequence, w.position, S)
    ids = rng.integers(0, c.vocab_size, (B, S)).astype(np.int64)
    mask = np.ones((B, S), np.int64)
    mask[1, :FIXTURE_LEFT_PAD] = 0
    pos = np.tile(np.arange(S, dtype=np.int64), (B, 1))
    pos[1] = np.maximum(np.arange(S) - FIXTURE_LEFT_PAD, 0)
    secondary = [[torch.from_numpy(states[l]) for l in e["input_layers"]] for e, states in zip(c.secondary_bases, sec)] or None
    delta, gate = m([torch.from_numpy(hidden[l]) for l in c.input_layers], torch.from_numpy(pos),
                    torch.from_numpy(ids) if c.reads_token_ids else None, torch.from_numpy(mask), secondary)
    tensors: Dict[str, np.ndarray] = {input_name(l): hidden[l] for l in c.input_layers}
    for j, (e, states) in enumerate(zip(c.secondary_bases, sec)):
        tensors.update({input_name(l, j): states[l] for l in e["input_layers"]})
    tensors.update({"position_ids": pos, "attention_mask": mask, "expected.delta": delta.numpy(), "expected.gate": gate.numpy()})
    if c.reads_token_ids:
        tensors["input_ids"] = ids
    st.save(path, tensors, {"format": "carryon-verify-fixture"})
    return path


def write_export_files(model: CarryOn, work_dir: str, carry_on_id: Optional[str] = None, description: Optional[str] = None,
                       corpus: Optional[Corpus] = None, windows: Optional[List[Window]] = None) -> Dict[str, str]:
    """The export's files, without the gateway: weights.safetensors, weights.config.json (the
    inputs of `carryon carry-on build`) and fixture.safetensors (the input of `verify`)."""
    os.makedirs(work_dir, exist_ok=True)
    weights = os.path.join(work_dir, "weights.safetensors")
    cfg = write_weights(model, weights, carry_on_id, description)
    fixture = make_fixture(model, os.path.join(work_dir, "fixture.safetensors"), corpus, windows)
    return {"weights": weights, "config": cfg, "fixture": fixture}


def export_package(model: CarryOn, base_dir: str, work_dir: str, out_dir: str, carry_on_id: str, alpha: float = 1.0,
                   description: str = "", corpus: Optional[Corpus] = None, windows: Optional[List[Window]] = None,
                   tolerance: float = DEFAULT_TOLERANCE) -> Dict:
    """Builds `out_dir` (model.onnx + manifest.json) and verifies it; returns manifest + verify report."""
    files = write_export_files(model, work_dir, carry_on_id, description, corpus, windows)
    try:
        node.build(files["weights"], files["config"], base_dir, out_dir, alpha, carry_on_id, description)
        report = node.verify(out_dir, files["fixture"], tolerance)
    except node.NodeError as e:
        if not model.config.secondary_bases:
            raise
        # A gateway from before mixture carry-ons ignores secondary_bases and refuses in_proj's width.
        raise node.NodeError(f"{e}\nthis is a mixture carry-on ({len(model.config.secondary_bases)} secondary bases): the gateway's "
                             f"`carry-on build` / `verify` must support secondary_bases (models/README.md); the export's files are in "
                             f"{os.path.abspath(work_dir)} (weights, config, fixture) and the trained model in the run's checkpoints") from None

    with open(os.path.join(out_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    return {"manifest": manifest, "verify": report, "package": os.path.abspath(out_dir)}
