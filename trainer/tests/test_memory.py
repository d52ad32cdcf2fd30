"""bench/memory.py runs: its measurement at a tiny shape, each method in its own child process,
gives positive figures and the fields the benchmark table reads (no ratio is asserted here: the
SmolLM2-shape figures are in docs/benchmarks.md)."""
from __future__ import annotations

import os
import sys
import unittest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


class MemoryBenchTest(unittest.TestCase):
    def test_tiny_shape(self) -> None:
        if BENCH not in sys.path:
            sys.path.insert(0, BENCH)
        import memory  # noqa: E402

        r = memory.run(device="cpu", tiny=True)
        for key in ("cpu", "torch", "device", "shape", "batch", "seq_len", "carry_on_architecture", "results", "ratio_carry_on_over_finetune"):
            self.assertIn(key, r)
        self.assertEqual((r["batch"], r["seq_len"], r["shape"]), (2, 32, "tiny"))
        self.assertEqual(r["carry_on_architecture"]["width"], 64)  # the trainer CLI's default
        for method in memory.METHODS:
            m = r["results"][method]
            self.assertEqual(m["method"], method)
            for key in ("peak_rss_mb", "baseline_rss_mb", "growth_mb", "trainable_params", "step_seconds", "loss"):
                self.assertIn(key, m)
            self.assertGreater(m["peak_rss_mb"], 0)
            self.assertGreater(m["baseline_rss_mb"], 0)
            self.assertGreaterEqual(m["peak_rss_mb"], m["baseline_rss_mb"])
            self.assertGreater(m["trainable_params"], 0)
        self.assertGreater(r["ratio_carry_on_over_finetune"]["peak_rss"], 0)
        self.assertIn("carry-on / fine-tune", memory.table(r))


if __name__ == "__main__":
    unittest.main()
