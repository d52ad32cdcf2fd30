"""Data-parallel training: `torchrun --nproc_per_node 2` on CPU (gloo) follows the one-process loss
curve with the same global batch and seed, its export passes the parity check, and its checkpoint
resumed by one process continues the same curve.

Tolerance: relative 1e-4 per logged step on the loss and the gradient norm, exact on the token
count. With the global batch split in two, each process sums CE over its own rows and DDP adds the
two halves, so the gradient is the mean over the same rows as in one process, summed in another
order (two partial sums, and each half padded to its own length, so different matmul shapes):
float32 rounding, about 1e-7 relative per step. AdamW divides by sqrt(v) and so does not damp such
differences, but over 8 steps they stay far below 1e-4 (measured: 1.4e-7 at most); a real error (a wrong loss scale, a
rank training on the wrong rows, an optimizer out of step) moves the loss by percents. The
token count per step is the number of loss rows in the global batch: equal means the processes
together saw exactly the one-process batch."""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

from carryon_train.data import BatchOrder, Corpus, make_batch
from carryon_train.distributed import Dist, DistError, per_process_batch
from carryon_train.pipeline import train_carry_on
from carryon_train.train import TrainOptions

from tests import fixtures

RTOL = 1e-4
STEPS, HALF = 8, 4
ARCH = dict(width=32, layers=2, heads=4, kv_heads=0, intermediate=0, input_layers=["final", 2], reads_token_ids=True)
# The same run as a command line (cli.py maps these flags onto ARCH and options()).
FLAGS = ["--width", "32", "--layers", "2", "--heads", "4", "--layers-in", "final,2", "--token-ids", "--seq-len", "64",
         "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--schedule", "constant", "--log-every", "1",
         "--checkpoint-every", str(HALF), "--seed", "0", "--device", "cpu", "--no-progress"]


def options(steps: int) -> TrainOptions:
    # A constant schedule after warmup: the learning rate at a step does not depend on --steps, so a
    # run of HALF steps and one of STEPS steps agree on their common prefix.
    return TrainOptions(steps=steps, batch_size=8, lr=3e-3, warmup=2, schedule="constant", log_every=1,
                        checkpoint_every=HALF, seed=0, device="cpu", progress=False)


def curve(run_dir: str) -> list:
    with open(os.path.join(run_dir, "train-log.jsonl")) as f:
        return [e for e in map(json.loads, f) if "loss" in e]


class SplitTest(unittest.TestCase):
    def test_global_batch_split(self) -> None:
        self.assertEqual(per_process_batch(8, 2), 4)
        with self.assertRaisesRegex(DistError, "divisible by the 2 processes"):
            per_process_batch(7, 2)
        windows = list(range(8))
        halves = [Dist(rank, 2).shard(windows) for rank in (0, 1)]
        self.assertEqual(halves, [[0, 1, 2, 3], [4, 5, 6, 7]])
        self.assertEqual(Dist().shard(windows), windows)  # one process: the whole batch


class DataParallelTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="ddp-", dir=fixtures.workdir())
        self.base, self.shards = fixtures.stories_package(), fixtures.tinystories_shards()

    def assert_same_curve(self, ref: list, got: list) -> float:
        self.assertEqual([e["step"] for e in got], [e["step"] for e in ref])
        worst = 0.0
        for a, b in zip(ref, got):
            self.assertEqual(b["tokens"], a["tokens"], f"step {a['step']}: not the same rows")
            if a["tokens"] == 0:  # a batch without loss rows: skipped by every process alike
                self.assertTrue(math.isnan(a["loss"]) and math.isnan(b["loss"]), (a, b))
                continue
            for key in ("loss", "grad_norm"):
                rel = abs(b[key] - a[key]) / abs(a[key])
                worst = max(worst, rel)
                self.assertLess(rel, RTOL, f"step {a['step']} {key}: {a[key]} vs {b[key]}")
        return worst

    def torchrun(self, *args: str) -> subprocess.CompletedProcess:
        # carryon_train.torchrun = torchrun, fixed for torch 1.13 on Python ≥ 3.11.
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.run([sys.executable, "-m", "carryon_train.torchrun", "--standalone", "--nproc_per_node", "2",
                               "--monitor_interval", "0.5", "-m", "carryon_train", "train", "--base", self.base, *args],
                              capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        return proc

    def test_two_processes_follow_one_and_resume_on_one(self) -> None:
        # One process, STEPS steps, in this process (the same code path as `carryon-train train`).
        one = os.path.join(self.tmp, "one")
        ref = train_carry_on(self.base, [self.shards], one, "ddp", dict(ARCH), options(STEPS), seq_len=64, export=False)
        ref_curve = curve(one)
        self.assertEqual(len(ref_curve), STEPS)

        # Two processes under torchrun, the first HALF steps, with the export and its parity check.
        two = os.path.join(self.tmp, "two")
        proc = self.torchrun("--shards", self.shards, "--out", two, "--id", "ddp", "--steps", str(HALF), *FLAGS)
        # Rank 0 alone prints the result line, writes the report, the log and the checkpoint.
        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
        self.assertEqual(len(lines), 1, proc.stdout)
        with open(os.path.join(two, "report.json")) as f:
            report = json.load(f)
        self.assertEqual(report["distributed"], {"processes": 2, "global_batch_size": 8, "per_process_batch": 4})
        self.assertTrue(report["export"]["verify"]["ok"], report["export"]["verify"])
        self.assertLess(report["export"]["verify"]["maxAbsDiff"]["full"]["delta"], 1e-4)
        self.assertEqual(sorted(os.listdir(os.path.join(two, "checkpoints"))), [f"step-{HALF:08d}.pt"])
        worst = self.assert_same_curve(ref_curve[:HALF], curve(two))

        # One process resumes the two-process checkpoint and finishes the run: the rest of the curve.
        resumed = train_carry_on(self.base, [self.shards], two, "ddp", dict(ARCH), options(STEPS), seq_len=64, export=False)
        self.assertTrue(resumed["train"]["resumed_from"].endswith(f"step-{HALF:08d}.pt"))
        worst = max(worst, self.assert_same_curve(ref_curve, curve(two)))
        for a in (0.0, 1.0):
            r, g = ref["eval"]["sweep"], resumed["eval"]["sweep"]
            la = next(x["loss"] for x in r if x["alpha"] == a)
            lb = next(x["loss"] for x in g if x["alpha"] == a)
            self.assertLess(abs(la - lb) / la, RTOL, f"held-out loss at α={a}: {la} vs {lb}")
        print(f"\n1 vs 2 processes, {STEPS} steps: max relative difference {worst:.2e} (tolerance {RTOL:g})", file=sys.stderr)

    def test_a_process_without_loss_rows_still_steps(self) -> None:
        # Chat shards train on completion rows only; cut into 16-row windows, many windows are all
        # prompt. With a global batch of 2 over 2 processes, step 1 gives one process no loss row
        # (it must still join the gradient all-reduce, with a zero share) and step 7 gives none to
        # either (both skip it): a process out of step would hang or diverge here.
        chat = fixtures.gsm8k_shards("train", 30, fmt="chat")
        flags = ["--width", "32", "--layers", "1", "--heads", "4", "--seq-len", "16", "--batch-size", "2", "--lr", "3e-3",
                 "--warmup", "2", "--schedule", "constant", "--log-every", "1", "--checkpoint-every", "0", "--no-progress",
                 "--no-export", "--steps", "8", "--device", "cpu"]
        opts = TrainOptions(steps=8, batch_size=2, lr=3e-3, warmup=2, schedule="constant", log_every=1, checkpoint_every=0,
                            device="cpu", progress=False)
        one = os.path.join(self.tmp, "chat-one")
        arch = dict(width=32, layers=1, heads=4, kv_heads=0, intermediate=0, input_layers=["final"], reads_token_ids=False)
        train_carry_on(self.base, [chat], one, "chat", arch, opts, seq_len=16, export=False)
        two = os.path.join(self.tmp, "chat-two")
        self.torchrun("--shards", chat, "--out", two, "--id", "chat", *flags)
        ref = curve(one)
        self.assertIn(0, [e["tokens"] for e in ref], "the data no longer has a step without loss rows")
        # ... and a step where exactly one of the two halves has none (the batch order the run used).
        corpus = Corpus.open([chat], ["final"], 16)
        order = BatchOrder(corpus.split(0.1, 0)[0], 2, 0)
        halves = [[make_batch(corpus, [w], True, 512).tokens for w in order.batch(step)] for step in range(8)]
        self.assertTrue(any(min(h) == 0 < max(h) for h in halves), halves)
        self.assert_same_curve(ref, curve(two))


if __name__ == "__main__":
    unittest.main()
