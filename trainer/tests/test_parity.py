"""The PyTorch module computes what the ONNX graph built by the gateway's TypeScript builder
computes: exported through `carryon carry-on build`, checked by `carryon carry-on verify` in ONNX
Runtime (whole sequence and token by token through the KV cache)."""
import os
import tempfile
import unittest

import numpy as np
import torch

from carryon_train import node
from carryon_train import safetensors_io as st
from carryon_train.export import export_package, make_fixture, write_weights
from carryon_train.model import CarryOn, CarryOnConfig

from tests import fixtures


def randomize(model: CarryOn, seed: int, scale: float = 0.3) -> None:
    """Non-zero everything (out/gate projections included), norms away from 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * scale)


class ParityTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="parity-", dir=fixtures.workdir())
        self.base = fixtures.stories_package()

    def export(self, model: CarryOn, name: str) -> dict:
        return export_package(model, self.base, os.path.join(self.tmp, name, "work"), os.path.join(self.tmp, name, "pkg"), name)

    def test_random_weights_token_ids_two_layers_gqa(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=2, heads=4, kv_heads=2,
                                     input_layers=["final", 2], reads_token_ids=True)
        model = CarryOn(cfg, seed=3)
        randomize(model, 11)
        r = self.export(model, "rand-a")
        self.assertTrue(r["verify"]["ok"], r["verify"])
        self.assertLess(r["verify"]["maxAbsDiff"]["full"]["delta"], 1e-4)
        self.assertLess(r["verify"]["maxAbsDiff"]["incremental"]["delta"], 1e-4)
        self.assertEqual(r["manifest"]["parameter_count"], model.parameter_count())
        self.assertEqual(r["manifest"]["input_layers"], ["final", 2])
        self.assertTrue(r["manifest"]["reads_token_ids"])

    def test_random_weights_single_input_custom_intermediate(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=48, layers=3, heads=3, intermediate=80, input_layers=[2])
        model = CarryOn(cfg, seed=4)
        randomize(model, 12)
        self.assertTrue(self.export(model, "rand-b")["verify"]["ok"])

    def test_a_wrong_fixture_fails_verify(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=1, heads=4)
        model = CarryOn(cfg, seed=5)
        randomize(model, 13)
        r = self.export(model, "tamper")
        fixture = os.path.join(self.tmp, "tamper", "work", "fixture.safetensors")
        t, meta = st.load(fixture, mmap=False)
        t["expected.delta"] = t["expected.delta"].copy()
        t["expected.delta"][0, 5, 7] += 1e-3
        st.save(fixture, t, meta)
        with self.assertRaisesRegex(node.NodeError, "delta"):
            node.verify(r["package"], fixture)

    def test_zero_init_gives_exactly_zero_delta(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=2, heads=4, input_layers=["final", 2], reads_token_ids=True)
        model = CarryOn(cfg, seed=6)
        x = torch.randn(2, 9, 64) * 5
        delta, gate = model([x, x], torch.arange(9).repeat(2, 1), torch.randint(0, 512, (2, 9)))
        self.assertEqual(float(delta.abs().max()), 0.0)
        self.assertTrue(torch.all(gate == 0.5))
        # x + α·g⊙Δx is x bit for bit, for any α: the fresh carry-on is the base.
        self.assertTrue(torch.equal(x + 3.0 * gate * delta, x))
        # The ONNX graph too: exactly 0 (tolerance 0).
        r = self.export(model, "zero")
        fixture = os.path.join(self.tmp, "zero", "work", "fixture.safetensors")
        self.assertEqual(float(np.abs(st.load(fixture)[0]["expected.delta"]).max()), 0.0)
        report = node.verify(r["package"], fixture, tolerance=0.0)
        self.assertEqual(report["maxAbsDiff"]["full"]["delta"], 0)

    @unittest.skipUnless(hasattr(torch.nn.functional, "scaled_dot_product_attention"), "torch < 2.0: no SDPA path")
    def test_sdpa_training_path_equals_the_exported_path(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=2, heads=4, kv_heads=2)
        model = CarryOn(cfg, seed=7)
        randomize(model, 14)
        x = torch.randn(2, 12, 64)
        pos = torch.arange(12).repeat(2, 1)
        fast = model([x], pos)  # no mask: scaled_dot_product_attention
        masked = torch.ones(2, 12, dtype=torch.long)
        masked[1, 0] = 0  # forces the explicit path; compare only row 0
        slow = model([x], pos, attention_mask=masked)
        torch.testing.assert_close(fast[0][0], slow[0][0], rtol=1e-5, atol=1e-5)

    def test_build_refuses_misnamed_weights(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=1, heads=4)
        model = CarryOn(cfg, seed=8)
        weights = os.path.join(self.tmp, "bad.safetensors")
        config = write_weights(model, weights, "bad")
        t, _ = st.load(weights, mmap=False)
        t["carry_on.norm.weigth"] = t.pop("carry_on.norm.weight")
        st.save(weights, t)
        with self.assertRaisesRegex(node.NodeError, "carry_on.norm.weigth' is not a tensor of this architecture"):
            node.build(weights, config, self.base, os.path.join(self.tmp, "bad-pkg"), 1.0, "bad")

    def test_fixture_without_data_uses_random_states(self) -> None:
        cfg = CarryOnConfig.for_base(fixtures.base_config(), width=32, layers=1, heads=4)
        path = make_fixture(CarryOn(cfg, seed=9), os.path.join(self.tmp, "f.safetensors"))
        t, _ = st.load(path)
        self.assertEqual(t["hidden_states"].shape, (2, 24, 64))
        self.assertEqual(int(t["attention_mask"][1, :3].sum()), 0)


if __name__ == "__main__":
    unittest.main()
