"""Runs the gateway's own CLI (`node bin/carryon.js ...`) for harvesting, building and verifying:
the trainer never re-implements the ONNX graph or the shard writer, so it cannot drift from them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import List, Optional, Tuple

# The checkout this package sits in when it runs from the repository (trainer/carryon_train/..);
# an installed copy (site-packages) has no gateway next to it and finds it as gateway_command says.
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class NodeError(RuntimeError):
    pass


def _has_cli(root: str) -> bool:
    return os.path.exists(os.path.join(root, "bin", "carryon.js"))


def repo_root() -> str:
    """The gateway checkout: $CARRYON_REPO, else the one this package sits in."""
    root = os.environ.get("CARRYON_REPO", REPO_ROOT)
    if not _has_cli(root):
        raise NodeError(f"{root} has no bin/carryon.js: set CARRYON_REPO to the gateway checkout")
    return root


def gateway_command() -> Tuple[List[str], Optional[str]]:
    """(argv prefix, cwd) that runs the gateway's CLI. In order: $CARRYON_REPO (a checkout); the
    checkout this package sits in (running from the repo); a `carryon` on PATH (the gateway's npm
    bin, e.g. after `npm install -g` or `npm link` of the checkout), which is how an installed
    trainer on a training node finds it. `node` is $CARRYON_NODE or node."""
    node = os.environ.get("CARRYON_NODE", "node")
    if os.environ.get("CARRYON_REPO") or _has_cli(REPO_ROOT):
        return [node, "bin/carryon.js"], repo_root()
    found = shutil.which("carryon")
    if found:
        # Run the script's target through $CARRYON_NODE rather than its `#!/usr/bin/env node` line.
        return [node, os.path.realpath(found)], None
    raise NodeError("the gateway's CLI is needed (harvest, and the export's build + parity check): set CARRYON_REPO "
                    "to a gateway checkout with node_modules installed, or put its `carryon` command on PATH")


def carryon(args: List[str], check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    """The gateway's `carryon ARGS` (paths in ARGS should be absolute)."""
    prefix, cwd = gateway_command()
    cmd = [*prefix, *args]
    try:
        proc = subprocess.run(cmd, cwd=cwd, text=True, capture_output=capture)
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
