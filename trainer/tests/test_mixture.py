"""Mixture carry-ons (the contract in models/README.md): the carry-on reads the hidden states of the
primary base (stories260K, H = 64) and of a secondary base sharing its tokenizer (a random 2-block
base, H = 32, fixtures.second_package), harvested over the same records.

The gateway's `carry-on build` / `verify` of a mixture is the TypeScript side's; until it lands,
these tests train with export=False and check the export's files (config, weights, fixture)
against the contract's names and shapes directly."""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

from carryon_train import safetensors_io as st
from carryon_train.base import BasePackage
from carryon_train.data import Corpus, ShardError, make_batch
from carryon_train.export import FIXTURE_LEN, export_package, write_export_files
from carryon_train.model import CarryOn, CarryOnConfig
from carryon_train.pipeline import train_carry_on
from carryon_train.train import TrainOptions, _load

from tests import fixtures
from tests.test_parity import randomize

ARCH = dict(width=32, layers=1, heads=4, kv_heads=0, intermediate=0, input_layers=["final", 2], reads_token_ids=False)
FP_A, FP_B = "a" * 64, "b" * 64


def options(steps: int, **kw) -> TrainOptions:
    o = dict(steps=steps, batch_size=8, lr=3e-3, warmup=2, schedule="constant", log_every=1, checkpoint_every=0, seed=0,
             device="cpu", progress=False)
    return TrainOptions(**{**o, **kw})


def curve(run_dir: str) -> list:
    with open(os.path.join(run_dir, "train-log.jsonl")) as f:
        return [e for e in map(json.loads, f) if "loss" in e]


class ConcatOrderTest(unittest.TestCase):
    """The model alone: in_proj's input is [primary layers] + [secondary 0 layers] + [secondary 1 …]."""

    def configs(self):
        base = fixtures.base_config() if os.path.exists(fixtures.STORIES_BIN) else {
            "hidden_size": 64, "vocab_size": 512, "max_position_embeddings": 512}
        single = CarryOnConfig.for_base(base, width=32, layers=2, heads=4, input_layers=["final", 2])
        mixture = CarryOnConfig.for_base(base, width=32, layers=2, heads=4, input_layers=["final", 2], secondary_bases=[
            {"fingerprint": FP_A, "hidden_size": 32, "input_layers": ["final", 1]},
            {"fingerprint": FP_B, "hidden_size": 16, "input_layers": [3]}])
        return single, mixture

    def inputs(self, H: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        B, S = 2, 10
        primary = [torch.randn(B, S, H, generator=g) for _ in range(2)]
        secondary = [[torch.randn(B, S, 32, generator=g) for _ in range(2)], [torch.randn(B, S, 16, generator=g)]]
        pos = torch.arange(S).repeat(B, 1)
        return primary, secondary, pos

    def test_in_proj_width_and_concat_order(self) -> None:
        _, cfg = self.configs()
        H = cfg.hidden_size
        self.assertEqual(cfg.input_width, 2 * H + 2 * 32 + 16)
        model = CarryOn(cfg, seed=1)
        self.assertEqual(tuple(model.in_proj.weight.shape), (32, 2 * H + 2 * 32 + 16))
        self.assertEqual(tuple(model.out_proj.weight.shape), (H, 32))  # delta / gate: the primary's width
        self.assertEqual(tuple(model.gate_proj.weight.shape), (H, 32))
        primary, secondary, pos = self.inputs(H)
        seen = []
        model.in_proj.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        model(primary, pos, secondary=secondary)
        want = torch.cat([primary[0], primary[1], secondary[0][0], secondary[0][1], secondary[1][0]], dim=-1)
        self.assertTrue(torch.equal(seen[0], want))
        with self.assertRaisesRegex(ValueError, "2 secondary bases, got 1"):
            model(primary, pos, secondary=secondary[:1])
        with self.assertRaisesRegex(ValueError, "secondary base 1: 1 input layers, got 2"):
            model(primary, pos, secondary=[secondary[0], secondary[0]])

    def test_zeroed_secondary_weights_give_the_single_base_model(self) -> None:
        single_cfg, cfg = self.configs()
        H = cfg.hidden_size
        single, mixture = CarryOn(single_cfg, seed=2), CarryOn(cfg, seed=3)
        randomize(single, 5)
        state = dict(single.state_dict())
        w = torch.zeros(32, cfg.input_width)
        w[:, : 2 * H] = state["in_proj.weight"]  # the primary's columns come first
        state["in_proj.weight"] = w
        mixture.load_state_dict(state)
        primary, secondary, pos = self.inputs(H, seed=4)
        mask = torch.ones(2, 10, dtype=torch.int64)
        mask[1, :3] = 0
        for m in (None, mask):
            d0, g0 = single(primary, pos, None, m)
            d1, g1 = mixture(primary, pos, None, m, secondary)
            self.assertLess(float((d0 - d1).abs().max()), 1e-6)
            self.assertLess(float((g0 - g1).abs().max()), 1e-6)
        # …and with the secondary's columns non-zero the output moves: they are read.
        with torch.no_grad():
            mixture.in_proj.weight[:, 2 * H :] = 0.5
        d2, _ = mixture(primary, pos, secondary=secondary)
        self.assertGreater(float((single(primary, pos)[0] - d2).abs().max()), 1e-3)

    def test_config_validation_and_single_base_dicts(self) -> None:
        single, cfg = self.configs()
        self.assertNotIn("secondary_bases", single.to_build_config())
        self.assertNotIn("secondary_bases", single.to_dict())  # checkpoints of single bases stay as they were
        self.assertEqual(cfg.to_build_config()["secondary_bases"], [
            {"fingerprint": FP_A, "hidden_size": 32, "input_layers": ["final", 1]},
            {"fingerprint": FP_B, "hidden_size": 16, "input_layers": [3]}])
        base = {"hidden_size": 64, "vocab_size": 512, "max_position_embeddings": 512}
        with self.assertRaisesRegex(ValueError, "distinct"):
            CarryOnConfig.for_base(base, secondary_bases=[{"fingerprint": FP_A, "hidden_size": 8, "input_layers": ["final"]}] * 2)
        with self.assertRaisesRegex(ValueError, "at most 4"):
            CarryOnConfig.for_base(base, secondary_bases=[{"fingerprint": c * 64, "hidden_size": 8, "input_layers": ["final"]} for c in "abcde"])
        with self.assertRaisesRegex(ValueError, "not repeat"):
            CarryOnConfig.for_base(base, secondary_bases=[{"fingerprint": FP_A, "hidden_size": 8, "input_layers": [1, 1]}])


class MixtureDataTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mixture-", dir=fixtures.workdir())
        self.base, self.second = fixtures.stories_package(), fixtures.second_package()
        self.shards = fixtures.mixture_shards()

    def corpus(self, second=None, layers=("final", 1), **spec) -> Corpus:
        return Corpus.open([self.shards["primary"]], ["final", 2], 64, 64, BasePackage.open(self.base).fingerprint,
                           [{"paths": [second or self.shards["second"]], "layers": list(layers), **spec}])

    def test_aligned_by_sequence_across_other_shard_boundaries(self) -> None:
        corpus = self.corpus()
        sec = corpus.secondaries[0]
        self.assertEqual(len(corpus.shards), 1)
        self.assertGreater(len(sec.shards), 1)  # the second base's harvest rotated shards elsewhere
        self.assertEqual(sec.fingerprint, BasePackage.open(self.second).fingerprint)
        self.assertEqual(sec.hidden_size, 32)
        # A batch's secondary rows are the secondary shards' rows of the same sequence and positions.
        b = make_batch(corpus, corpus.windows[:6], False, 512)
        self.assertEqual(set(b.secondary[0]), {"final", 1})
        for i, w in enumerate(corpus.windows[:6]):
            n = w.end - w.begin
            si, row = sec.loc[w.sequence]
            got = b.secondary[0][1][i, :n]
            np.testing.assert_array_equal(got, sec.shards[si].rows(1, row + w.position, row + w.position + n))
            self.assertEqual(b.secondary[0]["final"].shape[-1], 32)
            self.assertFalse(np.any(b.secondary[0]["final"][i, n:]))  # padding stays zero
            np.testing.assert_array_equal(sec.shards[si].tensors["token_ids"][row + w.position : row + w.position + n], b.token_ids[i, :n])

    def test_misaligned_shards_are_refused(self) -> None:
        # One token id changed in the secondary's third shard: named with its row.
        bad = os.path.join(self.tmp, "bad-tokens")
        shutil.copytree(self.shards["second"], bad)
        files = sorted(glob.glob(os.path.join(bad, "**", "*.safetensors"), recursive=True))
        victim = sorted(files, key=lambda p: st.load(p)[1]["created_at"])[2]
        t, meta = st.load(victim, mmap=False)
        t = {k: np.array(v) for k, v in t.items()}
        t["token_ids"][5] = (int(t["token_ids"][5]) + 1) % 512
        st.save(victim, t, meta)
        with self.assertRaises(ShardError) as cm:
            self.corpus(bad)
        msg = str(cm.exception)
        self.assertIn(f"shard {victim} row 5: token_ids differ", msg)
        self.assertIn("same data file", msg)

        # A secondary shard missing: the shards join by request id, its sequences are left out.
        fewer = os.path.join(self.tmp, "fewer")
        shutil.copytree(self.shards["second"], fewer)
        victim = sorted(glob.glob(os.path.join(fewer, "**", "*.safetensors"), recursive=True))[0]
        lost = len(json.loads(st.load(victim)[1]["request_ids"]))
        os.remove(victim)
        with self.assertWarnsRegex(UserWarning, f"secondary base 0: {lost} of 60 primary sequences have no counterpart"):
            self.assertEqual(self.corpus(fewer).sequence_count, 60 - lost)
        # Records of another data file: their request ids name that file, so none joins.
        other = fixtures.mixture_shards(count=60, start=1)
        with self.assertRaisesRegex(ShardError, "no primary sequence has a counterpart in secondary base 0's shards by request id"):
            self.corpus(other["second"])
        # A layer the secondary's shards lack; a package that is not the shards' base.
        with self.assertRaisesRegex(ShardError, "not 2"):
            self.corpus(layers=("final", 2))
        with self.assertRaisesRegex(ShardError, "not this base"):
            self.corpus(fingerprint=BasePackage.open(self.base).fingerprint)

    def test_the_primary_as_its_own_secondary_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, "primary base itself"):
            train_carry_on(self.base, [self.shards["primary"]], os.path.join(self.tmp, "self"), "mix", dict(ARCH), options(1),
                           seq_len=64, export=False, secondaries=[{"shards": [self.shards["primary"]], "layers": ["final"]}])


class MixtureTrainTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mixture-train-", dir=fixtures.workdir())
        self.base, self.second = fixtures.stories_package(), fixtures.second_package()
        self.shards = fixtures.mixture_shards()
        self.secondaries = [{"shards": [self.shards["second"]], "layers": ["final", 1], "base": self.second}]

    def test_mixture_trains_evaluates_and_writes_contract_export_files(self) -> None:
        run = os.path.join(self.tmp, "run")
        report = train_carry_on(self.base, [self.shards["primary"]], run, "mix", dict(ARCH), options(100, checkpoint_every=100),
                                seq_len=64, export=False, secondaries=self.secondaries)
        c = curve(run)
        first, last = np.mean([e["loss"] for e in c[:10]]), np.mean([e["loss"] for e in c[-10:]])
        self.assertLess(last, first - 0.2, (first, last))  # measured: 1.35 → 0.95
        fp2 = BasePackage.open(self.second).fingerprint
        want = [{"fingerprint": fp2, "hidden_size": 32, "input_layers": ["final", 1]}]
        self.assertEqual(report["config"]["secondary_bases"], want)
        self.assertEqual(report["secondary_bases"][0]["fingerprint"], fp2)
        # Held-out evaluation and the α sweep ran on the mixture's inputs.
        ev = report["eval"]
        self.assertLess(ev["best"]["loss"], ev["base"]["loss"])
        self.assertEqual(report["default_alpha"], ev["best_alpha"])

        # The export's files, as `carryon carry-on build` / `verify` will read them.
        model = CarryOn(CarryOnConfig.for_base(fixtures.base_config(), **ARCH, secondary_bases=want), seed=None)
        ckpt = sorted(glob.glob(os.path.join(run, "checkpoints", "*.pt")))[-1]
        model.load_state_dict(_load(ckpt, torch.device("cpu"))["model"])
        corpus = Corpus.open([self.shards["primary"]], ["final", 2], 64, 64, None,
                             [{"paths": [self.shards["second"]], "layers": ["final", 1]}])
        files = write_export_files(model, os.path.join(run, "export"), "mix", "", corpus, corpus.windows)
        with open(files["config"]) as f:
            cfg = json.load(f)
        self.assertEqual(cfg["secondary_bases"], want)
        self.assertEqual(cfg["hidden_size"], 64)
        self.assertEqual(cfg["input_layers"], ["final", 2])
        weights, meta = st.load(files["weights"])
        self.assertEqual(meta["format"], "carryon-carry-on-weights")
        W = ARCH["width"]
        self.assertEqual(weights["carry_on.in_proj.weight"].shape, (W, 2 * 64 + 2 * 32))
        self.assertEqual(weights["carry_on.out_proj.weight"].shape, (64, W))
        self.assertEqual(weights["carry_on.gate_proj.weight"].shape, (64, W))
        self.assertEqual(weights["carry_on.gate_proj.bias"].shape, (64,))
        fx, _ = st.load(files["fixture"])
        S = FIXTURE_LEN
        self.assertEqual({k: fx[k].shape for k in fx if "hidden_states" in k}, {
            "hidden_states": (2, S, 64), "hidden_states.layer.2": (2, S, 64),
            "secondary.0.hidden_states": (2, S, 32), "secondary.0.hidden_states.layer.1": (2, S, 32)})
        # Real held-out states of both bases at the same tokens, and the expected outputs are the
        # model's on exactly those inputs (in the contract's concatenation order).
        w = [w for w in corpus.windows if w.end - w.begin >= S][0]
        np.testing.assert_array_equal(fx["secondary.0.hidden_states.layer.1"][0], corpus.secondaries[0].rows(1, w.sequence, w.position, S))
        np.testing.assert_array_equal(fx["hidden_states"][0], corpus.shards[w.shard].rows("final", w.begin, w.begin + S))
        with torch.no_grad():
            t = lambda k: torch.from_numpy(np.array(fx[k]))  # noqa: E731
            d, g = model([t("hidden_states"), t("hidden_states.layer.2")], t("position_ids"), None, t("attention_mask"),
                         [[t("secondary.0.hidden_states"), t("secondary.0.hidden_states.layer.1")]])
        np.testing.assert_allclose(d.numpy(), fx["expected.delta"], atol=1e-6)
        np.testing.assert_allclose(g.numpy(), fx["expected.gate"], atol=1e-6)

    def test_export_builds_and_passes_parity(self) -> None:
        """The whole export of a random mixture: the gateway builds it and ONNX Runtime agrees."""
        want = [{"fingerprint": BasePackage.open(self.second).fingerprint, "hidden_size": 32, "input_layers": ["final", 1]}]
        model = CarryOn(CarryOnConfig.for_base(fixtures.base_config(), **ARCH, secondary_bases=want), seed=3)
        randomize(model, 21)
        corpus = Corpus.open([self.shards["primary"]], ["final", 2], 64, 64, None,
                             [{"paths": [self.shards["second"]], "layers": ["final", 1]}])
        out = os.path.join(self.tmp, "parity")
        r = export_package(model, self.base, os.path.join(out, "work"), os.path.join(out, "pkg"), "mix", 1.0, "", corpus, corpus.windows)
        self.assertTrue(r["verify"]["ok"], r["verify"])
        self.assertEqual(r["manifest"]["secondary_bases"], want)

    def test_cli_flags_and_held_out_shards(self) -> None:
        held = fixtures.mixture_shards(count=12, start=60)
        run = os.path.join(self.tmp, "cli")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        args = [sys.executable, "-m", "carryon_train", "train", "--base", self.base, "--shards", self.shards["primary"],
                "--secondary-shards", self.shards["second"], "--secondary-layers", "final,1", "--secondary-base", self.second,
                "--eval-shards", held["primary"], "--secondary-eval-shards", held["second"],
                "--out", run, "--id", "mix", "--width", "32", "--layers", "1", "--heads", "4", "--layers-in", "final,2",
                "--seq-len", "64", "--batch-size", "8", "--steps", "6", "--no-progress", "--no-export", "--device", "cpu"]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        with open(os.path.join(run, "report.json")) as f:
            report = json.load(f)
        self.assertEqual(report["config"]["secondary_bases"][0]["input_layers"], ["final", 1])
        self.assertGreater(report["eval"]["eval_tokens"], 0)
        # Flags given a different number of times than --secondary-shards are refused.
        i = args.index("--secondary-layers")
        bad = subprocess.run(args[:i] + ["--secondary-layers", "final", "--secondary-layers", "1"] + args[i + 2 :],
                             capture_output=True, text=True, env=env, timeout=600)
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("--secondary-layers given 2 times, --secondary-shards 1 times", bad.stderr)

    def test_two_processes_follow_one(self) -> None:
        """torchrun slices each global batch by windows; every slice carries its secondary states."""
        one = os.path.join(self.tmp, "one")
        train_carry_on(self.base, [self.shards["primary"]], one, "mix", dict(ARCH), options(4), seq_len=64, export=False,
                       secondaries=self.secondaries)
        two = os.path.join(self.tmp, "two")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.run([sys.executable, "-m", "carryon_train.torchrun", "--standalone", "--nproc_per_node", "2",
                               "--monitor_interval", "0.5", "-m", "carryon_train", "train", "--base", self.base,
                               "--shards", self.shards["primary"], "--secondary-shards", self.shards["second"],
                               "--secondary-layers", "final,1", "--secondary-base", self.second, "--out", two, "--id", "mix",
                               "--width", "32", "--layers", "1", "--heads", "4", "--layers-in", "final,2", "--seq-len", "64",
                               "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", "--schedule", "constant", "--log-every", "1",
                               "--checkpoint-every", "0", "--steps", "4", "--seed", "0", "--device", "cpu", "--no-progress",
                               "--no-export"], capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        ref, got = curve(one), curve(two)
        self.assertEqual([e["tokens"] for e in got], [e["tokens"] for e in ref])
        for a, b in zip(ref, got):
            for key in ("loss", "grad_norm"):
                self.assertLess(abs(a[key] - b[key]) / abs(a[key]), 1e-4, (a, b))


if __name__ == "__main__":
    unittest.main()
