"""Shared test data, built once per test run (unittest runs every module in one process): the
stories260K model package (with block 2's residual stream) and harvested shards, produced by the
gateway's own CLI from ../shared, in a fresh temporary folder so nothing stale is ever reused."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import unittest
from typing import Dict, List

from carryon_train import node

REPO = node.REPO_ROOT
SHARED = os.path.abspath(os.path.join(REPO, "..", "shared"))
STORIES_BIN = os.path.join(SHARED, "models", "stories260K", "stories260K.bin")
TINYSTORIES = os.path.join(SHARED, "data", "tinystories", "tinystories_val.txt")
GSM8K_TRAIN = os.path.join(SHARED, "data", "gsm8k", "train.jsonl")
GSM8K_TEST = os.path.join(SHARED, "data", "gsm8k", "test.jsonl")

_cache: Dict[str, str] = {}
_root: List[str] = []


def workdir() -> str:
    if not _root:
        _root.append(tempfile.mkdtemp(prefix="carryon-trainer-test-"))
        atexit.register(shutil.rmtree, _root[0], True)
    return _root[0]


def _require(*paths: str) -> None:
    for p in paths:
        if not os.path.exists(p):
            raise unittest.SkipTest(f"{p} is missing (the tests read ../shared next to the repo)")
    if shutil.which(os.environ.get("CARRYON_NODE", "node")) is None:
        raise unittest.SkipTest("node is not on PATH")


def stories_package() -> str:
    """stories260K imported with --layers 2 (so 'final' and block 2 can be harvested)."""
    if "pkg" not in _cache:
        _require(STORIES_BIN)
        out = os.path.join(workdir(), "stories260K")
        node.carryon(["import", STORIES_BIN, out, "--layers", "2"])
        _cache["pkg"] = out
    return _cache["pkg"]


def _jsonl_head(src: str, dst: str, start: int, count: int) -> str:
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()[start : start + count]
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return dst


def tinystories_shards(sigma: str = "f16") -> str:
    """200 TinyStories validation paragraphs, layers final + 2."""
    key = f"ts-{sigma}"
    if key not in _cache:
        _require(TINYSTORIES)
        out = os.path.join(workdir(), f"shards-ts-{sigma}")
        node.harvest(stories_package(), TINYSTORIES, out, layers=["final", 2], limit=200, sigma=sigma)
        _cache[key] = out
    return _cache[key]


def gsm8k_shards(split: str, count: int, fmt: str = "jsonl") -> str:
    """The first `count` GSM8K problems of a split (question + worked answer), max 256 tokens."""
    key = f"gsm-{split}-{count}-{fmt}"
    if key not in _cache:
        src = GSM8K_TRAIN if split == "train" else GSM8K_TEST
        _require(src)
        data = _jsonl_head(src, os.path.join(workdir(), f"{key}.jsonl"), 0, count)
        out = os.path.join(workdir(), f"shards-{key}")
        node.harvest(stories_package(), data, out, fmt=fmt, max_tokens=256)
        _cache[key] = out
    return _cache[key]


def base_config() -> Dict:
    with open(os.path.join(stories_package(), "config.json"), encoding="utf-8") as f:
        return json.load(f)


# -- mixture carry-ons: a second base sharing stories260K's tokenizer ------------------------------

STORIES_TOKENIZER = os.path.join(SHARED, "models", "stories260K", "tok512.bin")
# A random-weights llama2.c model of another width (H = 32 vs stories260K's 64), vocabulary 512.
SECOND_SHAPE = dict(dim=32, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=512, seq_len=512)


def write_llama2c_checkpoint(path: str, seed: int, dim: int, hidden_dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
                             vocab_size: int, seq_len: int) -> str:
    """A legacy (version 0) llama2.c checkpoint with random weights and a shared classifier."""
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    head_dim, kv_dim, L = dim // n_heads, dim // n_heads * n_kv_heads, n_layers

    def r(*shape: int, scale: float = 0.1) -> "np.ndarray":
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    parts = [r(vocab_size, dim, scale=0.5), np.ones((L, dim), np.float32), r(L, dim, dim), r(L, kv_dim, dim), r(L, kv_dim, dim),
             r(L, dim, dim), np.ones((L, dim), np.float32), r(L, hidden_dim, dim), r(L, dim, hidden_dim), r(L, hidden_dim, dim),
             np.ones(dim, np.float32), np.zeros(seq_len * head_dim, np.float32)]  # the last: legacy freq_cis, unused
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len))
        for p in parts:
            f.write(p.tobytes())
    return path


def second_package() -> str:
    """A random 2-block base of hidden size 32 with stories260K's tokenizer, imported with --layers 1."""
    if "pkg2" not in _cache:
        _require(STORIES_TOKENIZER)
        ckpt = write_llama2c_checkpoint(os.path.join(workdir(), "second.bin"), 7, **SECOND_SHAPE)
        out = os.path.join(workdir(), "second")
        node.carryon(["import", ckpt, out, "--tokenizer", STORIES_TOKENIZER, "--layers", "1"])
        _cache["pkg2"] = out
    return _cache["pkg2"]


def mixture_shards(count: int = 60, start: int = 0) -> Dict[str, str]:
    """TinyStories paragraphs [start, start + count) harvested by both bases from one file: the primary
    (stories260K, final + 2, f16) in one shard, the second base (final + 1, int8) in several small
    shards, so the two shard lists cut the same sequences at other places."""
    key = f"mix-{start}-{count}"
    if key + "-primary" not in _cache:  # the harvest appends shards to its folder: only once per run
        _require(TINYSTORIES)
        with open(TINYSTORIES, encoding="utf-8") as f:
            paragraphs = [p for p in f.read().split("\n\n") if p.strip()][start : start + count]
        data = os.path.join(workdir(), f"{key}.txt")
        with open(data, "w", encoding="utf-8") as f:
            f.write("\n\n".join(paragraphs) + "\n")
        primary, second = os.path.join(workdir(), f"shards-{key}-primary"), os.path.join(workdir(), f"shards-{key}-second")
        node.harvest(stories_package(), data, primary, layers=["final", 2], max_tokens=256)
        node.carryon(["harvest", "--model", second_package(), "--input", data, "--out", second, "--sigma", "int8",
                      "--layers", "final,1", "--max-tokens", "256", "--max-shard-bytes", "40000"])
        _cache[key + "-primary"], _cache[key + "-second"] = primary, second
    return {"primary": _cache[key + "-primary"], "second": _cache[key + "-second"]}
