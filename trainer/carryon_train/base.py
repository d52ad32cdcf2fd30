"""The base model package as the trainer sees it: its config, fingerprint and frozen LM head."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from .onnx_weights import read_lm_head


# A carry-on package's graph file (src/carryon/manifest.ts CARRYON_FILES); early gateways wrote
# `carry-on.onnx`, which is still read.
GRAPH_FILES = ("model.onnx", "carry-on.onnx")
# What a carry-on upload sends besides the manifest: the gateway builds the graph from it.
WEIGHTS_FILE = "weights.safetensors"


def carry_on_graph(package_dir: str) -> str:
    for name in GRAPH_FILES:
        path = os.path.join(package_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{package_dir}: no {' or '.join(GRAPH_FILES)}")


@dataclass
class BasePackage:
    dir: str
    config: Dict
    manifest: Dict

    @classmethod
    def open(cls, path: str) -> "BasePackage":
        def read(name: str) -> Dict:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                return json.load(f)

        if not os.path.exists(os.path.join(path, "carryon-package.json")):
            raise FileNotFoundError(f"{path} is not a model package (no carryon-package.json); build one with `carryon import`")
        return cls(path, read("config.json"), read("carryon-package.json"))

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def extra_layers(self) -> List[int]:
        return list(self.manifest.get("extra_layer_outputs", []))

    def lm_head(self) -> np.ndarray:
        """[vocab, hidden] f32 from head.onnx: the exact matrix the gateway applies (dequantized for
        Q4_0 packages), so the loss is the served model's loss. Read from the package rather than the
        source checkpoint because the package is what the carry-on is bound to (its fingerprint)."""
        w = read_lm_head(os.path.join(self.dir, "head.onnx"), self.hidden_size)
        if w.shape[0] != self.vocab_size:
            raise ValueError(f"head.onnx has {w.shape[0]} rows, config vocab_size is {self.vocab_size}")
        return w
