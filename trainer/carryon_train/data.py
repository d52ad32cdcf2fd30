"""Harvested shards → training windows → padded batches.

A shard (README "Harvesting hidden states") holds sequences row-wise: row p of a sequence is the
base's state after token p (`token_ids[p]`), and `target_ids[p]` is the token that followed it.
Row index within the sequence is the token's position, so the carry-on sees the same RoPE
positions it will see when served.

Hidden states stay in their stored dtype (memory-mapped f16 / int8 / f32) and are decoded to f32
per batch: a D=576 model's states take 1.2 KB per token in f16, twice that as f32.

Sequences longer than `seq_len` are cut into windows that keep their absolute positions; a window
then attends only to its own tokens, an approximation of serving (where the carry-on sees the
whole prefix) that only matters for sequences longer than `seq_len` (default: the base context).

Mixtures: each secondary base's shards (harvested over the same records with the same options)
are aligned with the primary's *by sequence*, over the whole shard list in order: the k-th sequence
of the secondary must have the k-th primary sequence's length, token_ids, target_ids and
is_completion, row by row. Shard boundaries may differ (a harvest rotates shards by bytes, and
bases of other sizes fill them at other rows). A window then reads the secondary's rows at the same
sequence and positions.
"""
from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import safetensors_io as st

Layer = Union[str, int]


def layer_tensor(layer: Layer) -> str:
    return "hidden.final" if layer == "final" else f"hidden.layer.{layer}"


class ShardError(ValueError):
    pass


@dataclass
class Shard:
    path: str
    metadata: Dict[str, str]
    tensors: Dict[str, np.ndarray]
    offsets: np.ndarray  # seq_offsets [S+1]
    dtype: str  # F16 / I8 / F32

    @property
    def sequences(self) -> int:
        return len(self.offsets) - 1

    def rows(self, layer: Layer, begin: int, end: int) -> np.ndarray:
        """Decoded f32 hidden states of rows [begin, end) (σ undone: int8 rows · scale / 127)."""
        name = layer_tensor(layer)
        x = np.asarray(self.tensors[name][begin:end], dtype=np.float32)
        if self.dtype == "I8":
            x = x * (np.asarray(self.tensors[f"{name}.scale"][begin:end], dtype=np.float32)[:, None] / np.float32(127))
        return x


def find_shards(paths: Sequence[str]) -> List[str]:
    """Files as given; folders searched recursively for *.safetensors (a harvest dir has one per tenant)."""
    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(glob.glob(os.path.join(p, "**", "*.safetensors"), recursive=True)))
        else:
            out.append(p)
    if not out:
        raise ShardError(f"no shards in {list(paths)}")
    return out


def open_shard(path: str, layers: Sequence[Layer], hidden_size: Optional[int] = None, base_fingerprint: Optional[str] = None) -> Shard:
    tensors, meta = st.load(path)
    if meta.get("format") != "carryon-harvest":
        raise ShardError(f"{path}: not a carry-on harvest shard (format {meta.get('format')!r})")
    if meta.get("format_version") != "1":
        raise ShardError(f"{path}: unsupported shard format_version {meta.get('format_version')}")
    if base_fingerprint and meta.get("base_fingerprint") != base_fingerprint:
        raise ShardError(
            f"{path}: harvested from base {meta.get('base_fingerprint', '?')[:12]}, not this base ({base_fingerprint[:12]}); "
            "a carry-on only fits the exact base its states came from"
        )
    D, d = int(meta["hidden_size"]), int(meta["stored_size"])
    sigma = json.loads(meta.get("sigma", "{}"))
    if sigma.get("projection") is not None:
        # The LM head needs the base's D-dim state; a projection (σ never inverts it) loses that.
        if d != D:
            raise ShardError(f"{path}: projected shard (D={D} → d={d}): training needs unprojected states (harvest with no projection)")
        warnings.warn(f"{path}: square projection: the stored states are P·x, trained on as if they were x")
    if hidden_size is not None and D != hidden_size:
        raise ShardError(f"{path}: hidden size {D}, the base has {hidden_size}")
    have = json.loads(meta["layers"])
    for layer in layers:
        if layer not in have:
            raise ShardError(f"{path}: has layers {have}, not {layer!r} (harvest with --layers {','.join(map(str, layers))})")
    return Shard(path, meta, tensors, np.asarray(tensors["seq_offsets"], dtype=np.int64), meta["dtype"])


@dataclass
class Secondary:
    """One secondary base's shards, aligned with the primary corpus by sequence: `loc[k]` = (shard
    index, first row) of global sequence k in these shards."""

    shards: List[Shard]
    layers: List[Layer]
    fingerprint: str
    hidden_size: int
    loc: np.ndarray  # [sequences, 2] int64

    def rows(self, layer: Layer, sequence: int, position: int, n: int) -> np.ndarray:
        si, row = (int(v) for v in self.loc[sequence])
        start = row + position
        return self.shards[si].rows(layer, start, start + n)


def _concat(shards: Sequence[Shard], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(sh.tensors[name], dtype=np.int64) for sh in shards]) if shards else np.zeros(0, np.int64)


def _where(shards: Sequence[Shard], row: int) -> Tuple[str, int]:
    """(shard path, row within it) of a row of the shards' concatenation."""
    for sh in shards:
        n = int(sh.offsets[-1])
        if row < n:
            return sh.path, row
        row -= n
    return (shards[-1].path if shards else "?"), row


def align_secondary(primary: Sequence[Shard], shards: List[Shard], j: int) -> np.ndarray:
    """Checks that `shards` hold the primary's sequences (same lengths, token_ids, target_ids,
    is_completion, row by row) and returns their locations; a ShardError names the first
    differing shard and row."""
    p_len = np.concatenate([np.diff(sh.offsets) for sh in primary]) if primary else np.zeros(0, np.int64)
    s_len = np.concatenate([np.diff(sh.offsets) for sh in shards])
    hint = "harvest every base over the same data file with the same options (--format, --max-tokens, --limit)"
    if len(p_len) != len(s_len) or not np.array_equal(p_len, s_len):
        m = min(len(p_len), len(s_len))
        diff = p_len[:m] != s_len[:m]
        bad = int(np.argmax(diff)) if diff.any() else m  # the first sequence that differs (or is missing)
        s_row, p_row = int(s_len[:bad].sum()), int(p_len[:bad].sum())
        sp, sr = _where(shards, s_row)
        pp, pr = _where(primary, p_row)
        raise ShardError(
            f"secondary base {j}: shard {sp} row {sr}: seq_offsets differ from the primary's at sequence {bad} (primary shard {pp} "
            f"row {pr}): {len(s_len)} sequences vs the primary's {len(p_len)}"
            + (f", length {int(s_len[bad])} vs {int(p_len[bad])}" if bad < m else "") + f"; {hint}")
    for name in ("token_ids", "target_ids", "is_completion"):
        a, b = _concat(primary, name), _concat(shards, name)
        if not np.array_equal(a, b):
            row = int(np.argmax(a != b))
            sp, sr = _where(shards, row)
            pp, pr = _where(primary, row)
            raise ShardError(f"secondary base {j}: shard {sp} row {sr}: {name} differ from the primary's (shard {pp} row {pr}: "
                             f"{int(b[row])} vs {int(a[row])}); {hint}")
    loc = np.zeros((len(s_len), 2), np.int64)
    k = 0
    for si, sh in enumerate(shards):
        n = sh.sequences
        loc[k : k + n, 0] = si
        loc[k : k + n, 1] = sh.offsets[:-1]
        k += n
    return loc


def _request_ids(sh: Shard) -> List[str]:
    try:
        ids = json.loads(sh.metadata.get("request_ids", "[]"))
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) and len(ids) == sh.sequences else []


def order_like(primary: Sequence[Shard], shards: List[Shard]) -> List[Shard]:
    """The secondary's shards in the primary's sequence order, by the records' request ids (a
    harvest names its shards by creation time, in milliseconds, so a file listing may not give the
    writing order). Without usable ids (missing or repeated), the listing order stays."""
    where: Dict[str, int] = {}
    for sh in primary:
        for rid in _request_ids(sh):
            if rid in where:
                return shards
            where[rid] = len(where)
    keys = []
    for sh in shards:
        ids = _request_ids(sh)
        if not ids or ids[0] not in where:
            return shards
        keys.append(where[ids[0]])
    return [sh for _, sh in sorted(zip(keys, shards), key=lambda t: t[0])]


def open_secondary(primary: Sequence[Shard], paths: Sequence[str], layers: Sequence[Layer], j: int,
                   hidden_size: Optional[int] = None, fingerprint: Optional[str] = None) -> Secondary:
    """Secondary base j's shards: one base (its shards' base_fingerprint, or `fingerprint` when its
    package is known), its hidden size from their metadata, aligned with the primary's."""
    shards = order_like(primary, [open_shard(p, list(layers), hidden_size, fingerprint) for p in find_shards(paths)])
    fps = sorted({sh.metadata.get("base_fingerprint", "") for sh in shards})
    if len(fps) != 1 or not fps[0]:
        raise ShardError(f"secondary base {j}: its shards come from {len(fps)} bases ({[f[:12] for f in fps]}): one base per --secondary-shards")
    sizes = sorted({int(sh.metadata["hidden_size"]) for sh in shards})
    if len(sizes) != 1:
        raise ShardError(f"secondary base {j}: shards of hidden sizes {sizes}")
    return Secondary(shards, list(layers), fps[0], sizes[0], align_secondary(primary, shards, j))


@dataclass(frozen=True)
class Window:
    shard: int
    begin: int  # first row in the shard
    end: int
    position: int  # position of the first row (0 unless a long sequence was cut)
    sequence: int  # global sequence index (train/eval split is by sequence)


class Corpus:
    """Every sequence of some shards, cut into windows of at most `seq_len` rows."""

    def __init__(self, shards: List[Shard], layers: Sequence[Layer], seq_len: int) -> None:
        self.shards, self.layers, self.seq_len = shards, list(layers), seq_len
        self.secondaries: List[Secondary] = []  # mixtures: aligned shards of each secondary base
        self.windows: List[Window] = []
        seq = 0
        for si, sh in enumerate(shards):
            for i in range(sh.sequences):
                b, e = int(sh.offsets[i]), int(sh.offsets[i + 1])
                for start in range(b, e, seq_len):
                    self.windows.append(Window(si, start, min(start + seq_len, e), start - b, seq))
                seq += 1
        self.sequence_count = seq

    @classmethod
    def open(cls, paths: Sequence[str], layers: Sequence[Layer], seq_len: int, hidden_size: Optional[int] = None, base_fingerprint: Optional[str] = None,
             secondaries: Sequence[Dict] = ()) -> "Corpus":
        """`secondaries` (mixtures): per secondary base, {"paths", "layers"} and optionally the
        expected "hidden_size" / "fingerprint" (from its package)."""
        need = list(dict.fromkeys(["final", *layers]))  # the loss always needs the final state
        corpus = cls([open_shard(p, need, hidden_size, base_fingerprint) for p in find_shards(paths)], need, seq_len)
        for j, spec in enumerate(secondaries):
            corpus.secondaries.append(open_secondary(corpus.shards, spec["paths"], spec["layers"], j,
                                                     spec.get("hidden_size"), spec.get("fingerprint")))
        return corpus

    def absorb(self, other: "Corpus") -> List[Window]:
        """Appends another corpus (held-out shards) to this one's shards and returns its windows,
        renumbered: one corpus object then makes the batches of both."""
        if len(other.secondaries) != len(self.secondaries):
            raise ShardError(f"held-out shards have {len(other.secondaries)} secondary bases, training shards {len(self.secondaries)}")
        offset, seq0 = len(self.shards), self.sequence_count
        self.shards.extend(other.shards)
        for j, (mine, theirs) in enumerate(zip(self.secondaries, other.secondaries)):
            if (theirs.fingerprint, theirs.hidden_size) != (mine.fingerprint, mine.hidden_size):
                raise ShardError(f"secondary base {j}: held-out shards are of base {theirs.fingerprint[:12]}, training shards of {mine.fingerprint[:12]}")
            loc = theirs.loc.copy()
            loc[:, 0] += len(mine.shards)
            mine.shards.extend(theirs.shards)
            mine.loc = np.concatenate([mine.loc, loc])
        return [Window(w.shard + offset, w.begin, w.end, w.position, w.sequence + seq0) for w in other.windows]

    def completion_rows(self) -> int:
        return sum(int(sh.metadata.get("completion_rows", "0")) for sh in self.shards)

    def split(self, eval_fraction: float, seed: int) -> Tuple[List[Window], List[Window]]:
        """Held-out split by whole sequences (so no sequence is in both), seeded."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.sequence_count)
        n_eval = int(round(self.sequence_count * eval_fraction))
        if eval_fraction > 0 and self.sequence_count > 1:
            n_eval = min(max(n_eval, 1), self.sequence_count - 1)
        held = set(order[:n_eval].tolist())
        train = [w for w in self.windows if w.sequence not in held]
        ev = [w for w in self.windows if w.sequence in held]
        return train, ev

    def rows(self, windows: Sequence[Window] = ()) -> int:
        return sum(w.end - w.begin for w in (windows or self.windows))


@dataclass
class Batch:
    hidden: Dict[Layer, np.ndarray]  # [B, L, H] f32 per layer
    token_ids: np.ndarray  # [B, L] int64
    target_ids: np.ndarray  # [B, L] int64
    position_ids: np.ndarray  # [B, L] int64
    loss_mask: np.ndarray  # [B, L] bool: real row, and a completion row when training on completions
    secondary: List[Dict[Layer, np.ndarray]] = field(default_factory=list)  # mixtures: per secondary base, [B, L, H_j] per layer

    @property
    def tokens(self) -> int:
        return int(self.loss_mask.sum())


def make_batch(corpus: Corpus, windows: Sequence[Window], completion_only: bool, max_positions: int) -> Batch:
    """Right-padded batch: causal attention means real rows never see the padding, so no mask."""
    B, L = len(windows), max(w.end - w.begin for w in windows)
    H = int(corpus.shards[0].metadata["stored_size"])
    hidden = {layer: np.zeros((B, L, H), np.float32) for layer in corpus.layers}
    tok = np.zeros((B, L), np.int64)
    tgt = np.zeros((B, L), np.int64)
    pos = np.zeros((B, L), np.int64)
    mask = np.zeros((B, L), bool)
    secondary = [{layer: np.zeros((B, L, sec.hidden_size), np.float32) for layer in sec.layers} for sec in corpus.secondaries]
    for b, w in enumerate(windows):
        sh, n = corpus.shards[w.shard], w.end - w.begin
        for layer in corpus.layers:
            hidden[layer][b, :n] = sh.rows(layer, w.begin, w.end)
        for sec, out in zip(corpus.secondaries, secondary):
            for layer in sec.layers:
                out[layer][b, :n] = sec.rows(layer, w.sequence, w.position, n)
        tok[b, :n] = sh.tensors["token_ids"][w.begin : w.end]
        tgt[b, :n] = sh.tensors["target_ids"][w.begin : w.end]
        keep = np.ones(n, bool)
        if completion_only:
            keep = np.asarray(sh.tensors["is_completion"][w.begin : w.end]) != 0
        mask[b, :n] = keep
        # Padding positions continue the count (clamped to the table): their outputs are never used.
        pos[b] = np.minimum(w.position + np.arange(L), max_positions - 1)
    return Batch(hidden, tok, tgt, pos, mask, secondary)


class BatchOrder:
    """Deterministic epochs of length-bucketed batches: epoch e shuffles the windows with a
    generator seeded by (seed, e), sorts each pool of POOL_BATCHES batches' worth by length (so a
    batch pads little), cuts the pools into batches and shuffles the batches. The stream is a pure
    function of (seed, step), so it resumes exactly without being stored."""

    POOL_BATCHES = 32

    def __init__(self, windows: Sequence[Window], batch_size: int, seed: int) -> None:
        if not windows:
            raise ShardError("no training windows")
        self.windows, self.batch_size, self.seed = list(windows), batch_size, seed
        self.lengths = np.array([w.end - w.begin for w in self.windows])
        # Full batches only (a short last batch would weigh its rows more); all windows if fewer.
        self.per_epoch = max(1, len(self.windows) // batch_size)
        self._epoch: Tuple[int, List[np.ndarray]] = (-1, [])

    def _batches(self, epoch: int) -> List[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.windows))
        bs, pool = self.batch_size, self.batch_size * self.POOL_BATCHES
        batches: List[np.ndarray] = []
        for p in range(0, len(perm), pool):
            idx = perm[p : p + pool]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches.extend(idx[i : i + bs] for i in range(0, len(idx), bs) if len(idx[i : i + bs]) == bs)
        if not batches:
            batches = [perm]
        return [batches[i] for i in rng.permutation(len(batches))]

    def batch(self, step: int) -> List[Window]:
        """Windows of global step `step` (0-based)."""
        epoch, i = divmod(step, self.per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return [self.windows[j] for j in self._epoch[1][i]]


def eval_batches(windows: Sequence[Window], batch_size: int) -> Iterator[List[Window]]:
    # Sorted by length so padding is small; evaluation order does not matter.
    ws = sorted(windows, key=lambda w: w.end - w.begin)
    for i in range(0, len(ws), batch_size):
        yield ws[i : i + batch_size]
