"""Runs the gateway's own CLI (`node bin/carryon.js ...`) for harvesting, building and verifying:
the trainer never re-implements the ONNX graph or the shard writer, so it cannot drift from them."""
from __future__ import annotations

import json
import os
import subprocess
from typing import List, Optional

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class NodeError(RuntimeError):
    pass


def repo_root() -> str:
    root = os.environ.get("CARRYON_REPO", REPO_ROOT)
    if not os.path.exists(os.path.join(root, "bin", "carryon.js")):
        raise NodeError(f"{root} has no bin/carryon.js: set CARRYON_REPO to the gateway checkout")
    return root


def carryon(args: List[str], check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    """`node bin/carryon.js ARGS` from the repo root (paths in ARGS should be absolute)."""
    cmd = [os.environ.get("CARRYON_NODE", "node"), "bin/carryon.js", *args]
    try:
        proc = subprocess.run(cmd, cwd=repo_root(), text=True, capture_output=capture)
    except FileNotFoundError as err:
        raise NodeError(f"cannot run node ({err}); set CARRYON_NODE") from err
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd[1:])} failed ({proc.returncode}):\n{(proc.stderr or '')[-4000:]}{(proc.stdout or '')[-2000:]}")
    return proc


def harvest(model_dir: str, input_file: str, out_dir: str, fmt: Optional[str] = None, layers: Optional[List] = None,
            max_tokens: Optional[int] = None, limit: Optional[int] = None, sigma: str = "f16") -> str:
    args = ["harvest", "--model", os.path.abspath(model_dir), "--input", os.path.abspath(input_file), "--out", os.path.abspath(out_dir), "--sigma", sigma]
    if fmt:
        args += ["--format", fmt]
    if layers:
        args += ["--layers", ",".join(map(str, layers))]
    if max_tokens:
        args += ["--max-tokens", str(max_tokens)]
    if limit:
        args += ["--limit", str(limit)]
    return carryon(args).stdout


def build(weights: str, config: str, base_dir: str, out_dir: str, alpha: float, carry_on_id: str, description: str = "") -> str:
    return carryon([
        "carry-on", "build", "--weights", os.path.abspath(weights), "--config", os.path.abspath(config),
        "--base", os.path.abspath(base_dir), "--out", os.path.abspath(out_dir), "--alpha", repr(float(alpha)),
        "--id", carry_on_id, "--description", description,
    ]).stdout


def verify(package_dir: str, fixture: str, tolerance: float = 1e-4) -> dict:
    """The verify report (parsed); raises NodeError when parity fails."""
    proc = carryon(["carry-on", "verify", os.path.abspath(package_dir), "--fixture", os.path.abspath(fixture), "--tolerance", repr(tolerance)], check=False)
    lines = [l for l in (proc.stdout or "").splitlines() if l.startswith("{")]
    if not lines:
        raise NodeError(f"carry-on verify gave no report ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(lines[-1])
    if proc.returncode != 0 or not report.get("ok"):
        raise NodeError(f"carry-on verify failed: {report.get('problems')}")
    return report
