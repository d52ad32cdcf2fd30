"""The file formats the trainer reads and writes: safetensors, ONNX initializers, harvest shards."""
import os
import tempfile
import unittest

import numpy as np

from carryon_train import safetensors_io as st
from carryon_train.base import BasePackage
from carryon_train.data import Corpus, make_batch
from carryon_train.onnx_weights import dequantize_matmulnbits, read_initializers

from tests import fixtures


class SafetensorsTest(unittest.TestCase):
    def test_roundtrip_every_dtype_aligned(self) -> None:
        arrays = {
            "a": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.array([1, -2], dtype=np.int64),
            "c": np.array([0.5], dtype=np.float16),
            "d": np.array([-1, 2, 3], dtype=np.int8),
            "e": np.array([7], dtype=np.uint8),
            "f": np.zeros((0, 4), dtype=np.float32),
        }
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.safetensors")
            st.save(path, arrays, {"k": "v"})
            header = st.read_header(path)
            self.assertEqual(header.data_start % 8, 0)
            for e in header.entries.values():  # widest first, so every tensor is naturally aligned
                self.assertEqual(e.begin % st.DTYPES[e.dtype].itemsize, 0)
            got, meta = st.load(path)
            self.assertEqual(meta, {"k": "v"})
            for k, v in arrays.items():
                np.testing.assert_array_equal(got[k], v)
                self.assertEqual(got[k].dtype, v.dtype)

    def test_truncated_file_is_refused(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.safetensors")
            st.save(path, {"a": np.ones(10, np.float32)})
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) - 4)
            with self.assertRaises(st.SafetensorsError):
                st.read_header(path)


class ShardTest(unittest.TestCase):
    def test_harvested_shard_reads_and_checks_out(self) -> None:
        corpus = Corpus.open([fixtures.tinystories_shards()], ["final", 2], seq_len=64)
        shard = corpus.shards[0]
        self.assertEqual(st.data_sha256(shard.path), shard.metadata["data_sha256"])
        self.assertEqual(corpus.sequence_count, 200)
        # Windows cover every row once and keep absolute positions.
        self.assertEqual(corpus.rows(), int(shard.metadata["row_count"]))
        self.assertTrue(any(w.position > 0 for w in corpus.windows))
        b = make_batch(corpus, corpus.windows[:4], completion_only=False, max_positions=512)
        self.assertEqual(b.hidden["final"].dtype, np.float32)
        self.assertEqual(set(b.hidden), {"final", 2})
        # Row p's target is the token at p + 1 of the same sequence.
        w = corpus.windows[0]
        ids = np.asarray(shard.tensors["token_ids"][w.begin : w.end])
        tgt = np.asarray(shard.tensors["target_ids"][w.begin : w.end])
        np.testing.assert_array_equal(ids[1:], tgt[:-1])

    def test_int8_shard_decodes_close_to_f16(self) -> None:
        f16 = Corpus.open([fixtures.tinystories_shards("f16")], ["final"], 512)
        i8 = Corpus.open([fixtures.tinystories_shards("int8")], ["final"], 512)
        a = f16.shards[0].rows("final", 0, 500)
        b = i8.shards[0].rows("final", 0, 500)
        rel = np.linalg.norm(a - b) / np.linalg.norm(a)
        self.assertLess(rel, 1.5e-2)  # README: int8 costs about 1% on stories260K

    def test_wrong_base_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, "not this base"):
            Corpus.open([fixtures.tinystories_shards()], ["final"], 512, base_fingerprint="0" * 64)

    def test_missing_layer_is_refused(self) -> None:
        with self.assertRaisesRegex(ValueError, "--layers"):
            Corpus.open([fixtures.tinystories_shards()], ["final", 3], 512)


class OnnxWeightsTest(unittest.TestCase):
    def test_lm_head_is_the_tied_embedding(self) -> None:
        pkg = BasePackage.open(fixtures.stories_package())
        head = pkg.lm_head()
        self.assertEqual(head.shape, (512, 64))
        emb = read_initializers(os.path.join(pkg.dir, "body.onnx"), {"model.embed_tokens.weight"})["model.embed_tokens.weight"]
        np.testing.assert_array_equal(head, emb)  # stories260K ties them; the head holds its own copy

    def test_matmulnbits_dequantization(self) -> None:
        rng = np.random.default_rng(0)
        q = rng.integers(0, 16, (3, 2, 32))  # [rows, blocks, 32] nibbles
        scales = rng.standard_normal((3, 2)).astype(np.float32)
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)  # byte i = elements 2i (low), 2i+1 (high)
        want = ((q - 8) * scales[..., None]).reshape(3, 64)
        np.testing.assert_allclose(dequantize_matmulnbits(packed, scales.reshape(-1), 64), want, rtol=0, atol=1e-6)


if __name__ == "__main__":
    unittest.main()
