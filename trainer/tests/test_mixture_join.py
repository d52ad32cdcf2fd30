"""Mixture shards joined with the primary's by request id (live harvests write each base's shards on
their own, so a secondary may lack some primary sequences, hold others, and list them in another
order), and the order alignment that remains for shards without usable ids.

Synthetic shards, written here: sequence k's secondary state at position p is (k·1000 + p, -k), so
a batch shows which sequence and row it read."""
import json
import os
import shutil
import tempfile
import unittest
import warnings
from typing import Optional, Sequence

import numpy as np

from carryon_train import safetensors_io as st
from carryon_train.data import Corpus, ShardError, make_batch

FP_P, FP_S = "p" * 64, "s" * 64
H_P, H_S = 4, 2


def length(k: int) -> int:
    return 3 + (k * 7) % 11  # 3..13 rows: windows of 8 cut some sequences in two


def tokens(k: int) -> np.ndarray:
    return (k * 31 + np.arange(length(k) + 1) * 7) % 97


def write_shard(path: str, seqs: Sequence[int], fp: str, H: int, ids: bool = True, prefix: str = "chatcmpl-") -> str:
    """A carry-on harvest shard holding sequences `seqs` in that order (F32, layer final only)."""
    t = [tokens(k) for k in seqs]
    n = [length(k) for k in seqs]
    pos = np.concatenate([np.arange(m) for m in n]) if seqs else np.zeros(0, np.int64)
    key = np.repeat(np.asarray(seqs, np.int64), n)
    hidden = np.zeros((len(pos), H), np.float32)
    hidden[:, 0] = key * 1000 + pos
    hidden[:, 1] = -key
    tensors = {"hidden.final": hidden,
               "token_ids": np.concatenate([x[:-1] for x in t]).astype(np.int32),
               "target_ids": np.concatenate([x[1:] for x in t]).astype(np.int32),
               "is_completion": (pos % 3 == 0).astype(np.uint8),
               "seq_offsets": np.concatenate([[0], np.cumsum(n)]).astype(np.int64)}
    meta = {"format": "carryon-harvest", "format_version": "1", "base_fingerprint": fp, "hidden_size": str(H),
            "stored_size": str(H), "layers": json.dumps(["final"]), "dtype": "F32"}
    if ids:
        meta["request_ids"] = json.dumps([f"{prefix}{k}#0" for k in seqs])
    st.save(path, tensors, meta)
    return path


class JoinTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mixture-join-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def shards(self, name: str, parts: Sequence[Sequence[int]], fp: str, H: int, **kw) -> str:
        folder = os.path.join(self.tmp, name)
        os.makedirs(folder)
        for i, seqs in enumerate(parts):
            write_shard(os.path.join(folder, f"{i:03d}.safetensors"), seqs, fp, H, **kw)
        return folder

    def primary(self, seqs: Sequence[int] = range(20), **kw) -> str:
        seqs = list(seqs)
        half = len(seqs) // 2
        return self.shards("primary", [seqs[:half], seqs[half:]], FP_P, H_P, **kw)

    def corpus(self, primary: str, *secondaries: str) -> Corpus:
        return Corpus.open([primary], ["final"], 8, H_P, FP_P, [{"paths": [s], "layers": ["final"]} for s in secondaries])

    def check_rows(self, corpus: Corpus, want_seqs: Optional[Sequence[int]] = None) -> None:
        """Every window's secondary rows are (k·1000 + p, -k) of the primary sequence k it cuts."""
        b = make_batch(corpus, corpus.windows, False, 512)
        for i, w in enumerate(corpus.windows):
            n = w.end - w.begin
            k = int(corpus.shards[w.shard].rows("final", w.begin, w.begin + 1)[0, 1]) * -1
            np.testing.assert_array_equal(b.secondary[0]["final"][i, :n, 0], k * 1000 + w.position + np.arange(n))
            np.testing.assert_array_equal(b.secondary[0]["final"][i, :n, 1], np.full(n, -k))
        if want_seqs is not None:
            seen = [int(corpus.shards[w.shard].rows("final", w.begin, w.begin + 1)[0, 1]) * -1 for w in corpus.windows if w.position == 0]
            self.assertEqual(seen, list(want_seqs))

    def test_join_reorders_across_other_shards_and_ignores_extras(self) -> None:
        primary = self.primary()
        aligned = self.shards("aligned", [range(0, 7), range(7, 20)], FP_S, H_S)
        rng = np.random.default_rng(3)
        live = [int(k) for k in rng.permutation(list(range(20)) + [50, 51, 52, 53])]  # 4 sequences only the secondary has
        joined = self.shards("joined", [live[:5], live[5:11], live[11:17], live[17:]], FP_S, H_S)
        ref, got = self.corpus(primary, aligned), self.corpus(primary, joined)
        self.assertEqual(got.sequence_count, 20)
        self.assertEqual(got.windows, ref.windows)
        want, have = make_batch(ref, ref.windows, False, 512), make_batch(got, got.windows, False, 512)
        np.testing.assert_array_equal(have.secondary[0]["final"], want.secondary[0]["final"])
        np.testing.assert_array_equal(have.token_ids, want.token_ids)
        self.check_rows(got, range(20))

    def test_primary_sequences_missing_from_the_secondary_are_left_out(self) -> None:
        primary = self.primary()
        gone = {3, 10, 17}
        second = self.shards("second", [[k for k in range(20) if k not in gone][::-1], [60]], FP_S, H_S)
        full = self.corpus(primary, self.shards("full", [range(20)], FP_S, H_S))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            corpus = self.corpus(primary, second)
        self.assertEqual([str(w.message) for w in seen],
                         ["secondary base 0: 3 of 20 primary sequences have no counterpart (by request id) and are left out"])
        self.assertEqual(corpus.sequence_count, 17)
        self.assertEqual(len(corpus.secondaries[0].loc), 17)
        self.assertEqual(len(corpus.windows), len(full.windows) - sum(-(-length(k) // 8) for k in gone))
        self.assertEqual(sorted({w.sequence for w in corpus.windows}), list(range(17)))  # renumbered densely
        self.check_rows(corpus, [k for k in range(20) if k not in gone])
        train, ev = corpus.split(0.25, 0)
        self.assertEqual(len(train) + len(ev), len(corpus.windows))

        # Two secondaries: a sequence is kept only where both have it, and each warns for its own.
        other = self.shards("other", [[k for k in range(20) if k != 5]], FP_S.replace("s", "t"), H_S)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            both = self.corpus(primary, second, other)
        self.assertEqual(len(seen), 2)
        self.assertIn("secondary base 1: 1 of 20", str(seen[1].message))
        self.assertEqual(both.sequence_count, 16)
        b = make_batch(both, both.windows, False, 512)
        np.testing.assert_array_equal(b.secondary[0]["final"], b.secondary[1]["final"])  # same sequences, same rows
        self.check_rows(both, [k for k in range(20) if k not in gone | {5}])

    def test_absorb_held_out_joined_shards(self) -> None:
        corpus = self.corpus(self.primary(range(10)), self.shards("second", [range(9, -1, -1)], FP_S, H_S))
        held_p = self.shards("held-primary", [range(20, 26)], FP_P, H_P)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            held = self.corpus(held_p, self.shards("held-second", [[25, 24, 22, 21, 20]], FP_S, H_S))
        ws = corpus.absorb(held)
        self.assertEqual(corpus.sequence_count, 10)
        self.assertEqual(sorted({w.sequence for w in ws}), list(range(10, 15)))
        self.assertEqual(len(corpus.secondaries[0].loc), 15)
        b = make_batch(corpus, ws, False, 512)
        for i, w in enumerate(ws):
            k = -int(corpus.shards[w.shard].rows("final", w.begin, w.begin + 1)[0, 1])
            self.assertNotEqual(k, 23)
            n = w.end - w.begin
            np.testing.assert_array_equal(b.secondary[0]["final"][i, :n, 0], k * 1000 + w.position + np.arange(n))

    def test_a_joined_pair_that_differs_is_refused(self) -> None:
        primary = self.primary()
        second = self.shards("second", [range(19, -1, -1)], FP_S, H_S)
        path = os.path.join(second, "000.safetensors")
        t, meta = st.load(path, mmap=False)
        t = {k: np.array(v) for k, v in t.items()}
        row = int(np.diff(t["seq_offsets"])[:5].sum()) + 2  # sequence 14 (the 6th), its row 2
        t["token_ids"][row] += 1
        st.save(path, t, meta)
        with self.assertRaises(ShardError) as cm:
            self.corpus(primary, second)
        msg = str(cm.exception)
        self.assertIn(f"shard {path} row {row}: token_ids differ", msg)
        self.assertIn("request id chatcmpl-14#0", msg)
        self.assertIn(os.path.join(primary, "001.safetensors"), msg)

        # Another length under the same id.
        third = self.shards("third", [range(20)], FP_S, H_S)
        path = os.path.join(third, "000.safetensors")
        t, meta = st.load(path, mmap=False)
        t = {k: np.array(v) for k, v in t.items()}
        t["seq_offsets"][5:] -= 1  # sequence 4 loses its last row (to sequence 5)
        t["seq_offsets"][-1] += 1
        st.save(path, t, meta)
        with self.assertRaisesRegex(ShardError, r"request id chatcmpl-4#0 has \d+ rows, the primary's \d+ \(shard .*000.safetensors row \d+\)"):
            self.corpus(primary, third)

    def test_no_overlap_is_refused(self) -> None:
        primary = self.primary()
        second = self.shards("second", [range(20)], FP_S, H_S, prefix="offline:other.jsonl#")
        with self.assertRaisesRegex(ShardError, "no primary sequence has a counterpart in secondary base 0's shards by request id"):
            self.corpus(primary, second)
        # Each secondary overlaps the primary, but no sequence is in both.
        a = self.shards("a", [range(10)], FP_S, H_S)
        b = self.shards("b", [range(10, 20)], FP_S.replace("s", "t"), H_S)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with self.assertRaisesRegex(ShardError, "no primary sequence has a counterpart in every secondary base's shards"):
                self.corpus(primary, a, b)

    def test_without_usable_ids_shards_align_by_order(self) -> None:
        primary = self.primary()
        # The secondary's ids missing, or the primary's repeated: order alignment, extra sequences refused.
        plain = self.shards("plain", [range(8), range(8, 20)], FP_S, H_S, ids=False)
        self.check_rows(self.corpus(primary, plain), range(20))
        extra = self.shards("extra", [range(21)], FP_S, H_S, ids=False)
        with self.assertRaisesRegex(ShardError, "seq_offsets differ from the primary's at sequence 20 .*21 sequences vs the primary's 20"):
            self.corpus(primary, extra)
        shuffled = self.shards("shuffled", [range(19, -1, -1)], FP_S, H_S, ids=False)
        with self.assertRaisesRegex(ShardError, "secondary base 0: shard .* row 0: seq_offsets differ"):
            self.corpus(primary, shuffled)
        repeated = self.shards("repeated", [range(10), range(10)], FP_P, H_P)  # sequences 0..9 twice
        with self.assertRaisesRegex(ShardError, "seq_offsets differ from the primary's at sequence 10"):
            self.corpus(repeated, self.shards("ids", [range(10)], FP_S, H_S))


if __name__ == "__main__":
    unittest.main()
