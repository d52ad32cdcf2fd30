"""Training on real stories260K hidden states: the loss falls, the carry-on beats the base on
held-out GSM8K text (the base only knows TinyStories), resuming equals not stopping."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

from carryon_train.base import BasePackage
from carryon_train.data import Corpus
from carryon_train.model import CarryOn, CarryOnConfig
from carryon_train.pipeline import train_carry_on
from carryon_train.train import Trainer, TrainOptions, lr_at

from tests import fixtures

SMALL = dict(width=32, layers=2, heads=4)


def quiet(**kw) -> TrainOptions:
    base = dict(progress=False, checkpoint_every=0, log_every=10)
    base.update(kw)
    return TrainOptions(**base)


class TrainTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="train-", dir=fixtures.workdir())
        self.base = fixtures.stories_package()

    def test_loss_falls_and_beats_the_base_on_held_out_gsm8k(self) -> None:
        train = fixtures.gsm8k_shards("train", 240)
        held = fixtures.gsm8k_shards("test", 40)
        opts = quiet(steps=300, batch_size=8, lr=3e-3, warmup=20)
        r = train_carry_on(self.base, [train], os.path.join(self.tmp, "gsm"), "gsm-test", SMALL, opts,
                           seq_len=256, eval_shards=[held], alphas=(0.0, 0.5, 1.0, 1.5))
        with open(os.path.join(self.tmp, "gsm", "train-log.jsonl")) as f:
            log = [json.loads(l) for l in f if "loss" in l]
        first, last = np.mean([e["loss"] for e in log[:2]]), np.mean([e["loss"] for e in log[-3:]])
        self.assertLess(last, first - 1.0, f"training loss {first:.3f} -> {last:.3f}")
        ev = r["eval"]
        self.assertLess(ev["carry_on"]["loss"], ev["base"]["loss"] - 1.0, ev)
        self.assertEqual(r["default_alpha"], ev["best_alpha"])
        with open(os.path.join(r["export"]["package"], "manifest.json")) as f:
            self.assertEqual(json.load(f)["default_alpha"], ev["best_alpha"])
        self.assertTrue(r["export"]["verify"]["ok"])
        self.assertTrue(os.path.exists(os.path.join(self.tmp, "gsm", "report.json")))

    def test_resume_equals_an_uninterrupted_run(self) -> None:
        shards = fixtures.tinystories_shards()
        cfg = CarryOnConfig.for_base(fixtures.base_config(), input_layers=["final", 2], reads_token_ids=True, **SMALL)
        head = torch.from_numpy(BasePackage.open(self.base).lm_head())
        corpus = Corpus.open([shards], cfg.input_layers, 128)
        train_w, held = corpus.split(0.1, seed=0)

        def trainer(run: str) -> Trainer:
            return Trainer(CarryOn(cfg, seed=1), head, corpus, train_w, held, quiet(steps=24, batch_size=4, checkpoint_every=8), os.path.join(self.tmp, run))

        straight = trainer("straight")
        straight.fit()
        interrupted = trainer("resumed")
        interrupted.fit(stop_at=13)  # checkpoints at 8; steps 9..13 are lost with the process
        resumed = trainer("resumed")
        resumed.load_checkpoint(resumed.latest_checkpoint())
        self.assertEqual(resumed.step, 8)
        resumed.fit()
        for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
            self.assertTrue(torch.equal(a, b), f"{name} differs after resuming")
        self.assertEqual(self.log_without_times("straight"), self.log_without_times("resumed"))

    def log_without_times(self, run: str) -> list:
        with open(os.path.join(self.tmp, run, "train-log.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in f]

    def test_chat_shards_train_on_completion_rows_only(self) -> None:
        shards = fixtures.gsm8k_shards("train", 30, fmt="chat")
        corpus = Corpus.open([shards], ["final"], 256)
        self.assertGreater(corpus.completion_rows(), 0)
        r = train_carry_on(self.base, [shards], os.path.join(self.tmp, "chat"), "chat-test", SMALL, quiet(steps=5, batch_size=4),
                           seq_len=256, export=False)
        self.assertEqual(r["data"]["loss_rows"], "completion")
        self.assertLess(r["eval"]["eval_tokens"], corpus.rows())

    def test_lr_schedule(self) -> None:
        o = TrainOptions(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
        self.assertAlmostEqual(lr_at(0, o), 0.1)
        self.assertAlmostEqual(lr_at(10, o), 1.0)
        self.assertAlmostEqual(lr_at(100, o), 0.1)
        self.assertAlmostEqual(lr_at(50, TrainOptions(steps=100, lr=1.0, warmup=10, schedule="constant")), 1.0)

    def test_cli_text_to_verified_package(self) -> None:
        data = os.path.join(self.tmp, "gsm.jsonl")
        with open(fixtures.GSM8K_TRAIN) as src, open(data, "w") as dst:
            dst.writelines(src.readlines()[:40])
        out = os.path.join(self.tmp, "cli")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.run([sys.executable, "-m", "carryon_train", "train", "--base", self.base, "--text", data, "--out", out,
                               "--id", "cli-test", "--steps", "20", "--batch-size", "4", "--width", "32", "--seq-len", "128",
                               "--no-progress"], capture_output=True, text=True, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertTrue(os.path.exists(os.path.join(result["package"], "model.onnx")))
        with open(result["report"]) as f:
            self.assertTrue(json.load(f)["export"]["verify"]["ok"])


if __name__ == "__main__":
    unittest.main()
