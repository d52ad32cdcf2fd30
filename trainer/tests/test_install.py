"""`pip install ./trainer` gives a working `carryon-train` without the repository: into a fresh
virtual environment that sees the system's torch (--system-site-packages), offline (--no-index, so
the declared torch and numpy ranges must accept the installed ones, or pip fails), then the console
script's --help and a short train + export run from a folder outside the repo, with no PYTHONPATH
and no CARRYON_REPO, the gateway's CLI found as an installed gateway's `carryon` on PATH."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from tests import fixtures

TRAINER = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _need(ok: bool, why: str) -> None:
    # CI (CARRYON_TRAINER_REQUIRED=1) installs pip and venv: a missing one is a failure there.
    if not ok:
        if os.environ.get("CARRYON_TRAINER_REQUIRED") == "1":
            raise AssertionError(why)
        raise unittest.SkipTest(why)


class InstallTest(unittest.TestCase):
    def test_pip_install_then_console_script_trains_outside_the_repo(self) -> None:
        # Looked up, not imported: importing pip and setuptools in one interpreter trips setuptools' distutils shim.
        probe = subprocess.run([sys.executable, "-c", "import importlib.util as u, sys; "
                                "sys.exit(','.join(m for m in ('pip', 'setuptools', 'wheel', 'venv') if u.find_spec(m) is None) or None)"],
                               capture_output=True, text=True)
        _need(probe.returncode == 0, f"missing {probe.stderr.strip()}: pip, setuptools, wheel and venv are needed (Debian: python3-pip python3-venv)")
        base, shards = fixtures.stories_package(), fixtures.tinystories_shards()
        tmp = tempfile.mkdtemp(prefix="install-", dir=fixtures.workdir())
        # A copy of trainer/ as a fresh checkout has it: the in-tree build (build/, *.egg-info) then
        # never touches the working tree, and concurrent runs do not share it.
        src = os.path.join(tmp, "trainer")
        shutil.copytree(TRAINER, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
        venv = os.path.join(tmp, "venv")
        # --without-pip: the system pip (seen through --system-site-packages) installs into the venv,
        # without ensurepip copying a second pip in (seconds on a loaded machine).
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
        py = os.path.join(venv, "bin", "python")
        # No PIP_* settings from outside (a PIP_FIND_LINKS folder of wheels would let pip install a
        # torch of its own instead of checking the system's against the declared range).
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "CARRYON_REPO", "PYTHONHOME") and not k.startswith("PIP_")}
        env.update(PIP_NO_INPUT="1", PIP_CONFIG_FILE=os.devnull)  # and no pip.conf either
        # Dependencies are resolved, not skipped (no --no-deps): offline, torch and numpy must be
        # found already installed within the ranges pyproject.toml declares.
        pip = subprocess.run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index",
                              "--disable-pip-version-check", src], capture_output=True, text=True, env=env, cwd=tmp)
        self.assertEqual(pip.returncode, 0, pip.stdout[-2000:] + pip.stderr[-3000:])
        done = [l.split()[2:] for l in pip.stdout.splitlines() if l.startswith("Successfully installed")]
        self.assertEqual(len(done), 1, pip.stdout)
        self.assertEqual([p.rsplit("-", 1)[0] for p in done[0]], ["carryon-train"], "pip installed more than the trainer")

        outside = os.path.join(tmp, "elsewhere")
        os.makedirs(outside)
        script = os.path.join(venv, "bin", "carryon-train")
        self.assertTrue(os.access(script, os.X_OK), "no carryon-train console script")
        where = subprocess.run([py, "-c", "import carryon_train.cli, carryon_train.torchrun; print(carryon_train.__file__)"],
                               capture_output=True, text=True, env=env, cwd=outside)
        self.assertEqual(where.returncode, 0, where.stderr[-2000:])
        # The import came from the venv, not from the source tree.
        self.assertTrue(where.stdout.strip().startswith(os.path.realpath(venv)) or where.stdout.strip().startswith(venv), where.stdout)
        helped = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, cwd=outside)
        self.assertEqual(helped.returncode, 0, helped.stderr[-2000:])
        self.assertIn("usage: carryon-train", helped.stdout)
        self.assertIn("train", helped.stdout)
        self.assertTrue(os.access(os.path.join(venv, "bin", "carryon-torchrun"), os.X_OK), "no carryon-torchrun console script")

        # The gateway's `carryon` command on PATH, as `npm install -g` / `npm link` of it leaves it.
        bin_dir = os.path.join(tmp, "gateway-bin")
        os.makedirs(bin_dir)
        os.symlink(os.path.join(fixtures.REPO, "bin", "carryon.js"), os.path.join(bin_dir, "carryon"))
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        run = os.path.join(outside, "run")
        proc = subprocess.run([script, "train", "--base", base, "--shards", shards, "--out", "run", "--id", "installed",
                               "--steps", "3", "--batch-size", "4", "--width", "16", "--layers", "1", "--heads", "2",
                               "--seq-len", "32", "--no-progress"], capture_output=True, text=True, env=env, cwd=outside)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(os.path.realpath(result["report"]), os.path.realpath(os.path.join(run, "report.json")))
        with open(result["report"]) as f:
            report = json.load(f)
        self.assertEqual(report["train"]["steps"], 3)
        self.assertTrue(report["export"]["verify"]["ok"])
        self.assertTrue(os.path.exists(os.path.join(run, "carry-on", "model.onnx")))


if __name__ == "__main__":
    unittest.main()
