"""bench/finetune_base.py and the llama2.c writer it uses (llama_base.write_llama2c): the fine-tuned
base is a llama2.c checkpoint the gateway imports, whose logits through the gateway's engine equal
the PyTorch model's, and whose fingerprint is not stories260K's."""
from __future__ import annotations

import os
import sys
import unittest

import numpy as np
import torch

from carryon_train import node
from carryon_train.llama_base import LlamaLM, load_base, write_llama2c

from . import fixtures

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
TOKENIZER = os.path.join(fixtures.SHARED, "models", "stories260K", "tok512.bin")


def _bench_module():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import finetune_base  # noqa: E402

    return finetune_base


class Llama2cWriterTest(unittest.TestCase):
    def test_stories260k_round_trip_is_byte_identical_in_the_weights(self) -> None:
        pkg = fixtures.stories_package()
        model = load_base(pkg)
        out = os.path.join(fixtures.workdir(), "rewritten-stories260K.bin")
        write_llama2c(model, out)
        with open(out, "rb") as f:
            ours = f.read()
        with open(fixtures.STORIES_BIN, "rb") as f:
            theirs = f.read()
        self.assertEqual(len(ours), len(theirs))
        weights = 28 + 4 * model.parameter_count()  # header + weights; then the (skipped) freq_cis tables
        self.assertEqual(ours[:weights], theirs[:weights])
        a, b = np.frombuffer(ours[weights:], "<f4"), np.frombuffer(theirs[weights:], "<f4")
        self.assertLess(float(np.abs(a - b).max()), 1e-6)  # float rounding of the RoPE tables only

    def test_untied_classifier_imports_with_its_own_head(self) -> None:
        if not os.path.exists(TOKENIZER):
            raise unittest.SkipTest(f"{TOKENIZER} is missing")
        m = LlamaLM(512, 32, 2, 4, 2, 8, 96, 1e-5, 10000.0, 64, False)
        m.init_weights(3)
        path = os.path.join(fixtures.workdir(), "untied.bin")
        write_llama2c(m, path)
        with open(path, "rb") as f:
            header = np.frombuffer(f.read(28), "<i4")
        self.assertEqual(header.tolist(), [32, 96, 2, 4, 2, -512, 64])
        pkg = os.path.join(fixtures.workdir(), "untied")
        node.carryon(["import", path, pkg, "--tokenizer", TOKENIZER])
        back = load_base(pkg)
        self.assertNotEqual(back.lm_head.weight.data_ptr(), back.embed_tokens.weight.data_ptr())  # untied
        for (name, a), b in zip(m.state_dict().items(), back.state_dict().values()):
            self.assertTrue(torch.equal(a, b), name)

    def test_refuses_what_llama2c_cannot_express(self) -> None:
        m = LlamaLM(512, 32, 1, 4, 4, 8, 64, 1e-6, 10000.0, 16, True)
        with self.assertRaisesRegex(ValueError, "eps"):
            write_llama2c(m, os.path.join(fixtures.workdir(), "bad.bin"))
        m = LlamaLM(512, 32, 1, 4, 4, 8, 64, 1e-5, 500000.0, 16, True)
        with self.assertRaisesRegex(ValueError, "theta"):
            write_llama2c(m, os.path.join(fixtures.workdir(), "bad.bin"))


class FinetuneBaseTest(unittest.TestCase):
    def test_tiny_finetune_imports_with_logit_parity(self) -> None:
        fixtures.stories_package()  # skips without ../shared or node
        fb = _bench_module()
        work = os.path.join(fixtures.workdir(), "finetune-base")
        out = os.path.join(work, "tiny.bin")
        pkg = os.path.join(work, "tiny-pkg")
        r = fb.run(fb.build_parser().parse_args(["--out", out, "--work", work, "--import-to", pkg, "--steps", "2", "--limit", "16",
                                                 "--batch-size", "4", "--eval-records", "8", "--parity-records", "2"]))
        self.assertEqual(r["train_records"], {**r["train_records"], "first": 2000, "count": 16})
        self.assertTrue(os.path.exists(out))
        im = r["import"]
        self.assertTrue(im["fingerprint_differs_from_stories260K"])
        self.assertNotEqual(im["fingerprint"], r["base_fingerprint"])
        self.assertTrue(im["weights_round_trip_exact"])
        self.assertGreater(im["rows"], 100)
        self.assertLessEqual(im["max_abs_logit_diff"], 1e-4)
        losses = r["held_out_loss"]
        self.assertTrue(np.isfinite(losses["base"]) and np.isfinite(losses["finetuned"]))
        self.assertNotEqual(losses["base"], losses["finetuned"])


if __name__ == "__main__":
    unittest.main()
