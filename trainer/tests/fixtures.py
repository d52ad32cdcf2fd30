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
