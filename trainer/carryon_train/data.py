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

Mixtures: when every shard of the primary and of a secondary base names its sequences'
`request_ids` (unique on each side), the secondary is joined with the primary *by request id*: live
shards are written per base independently, so a primary sequence the secondary lacks is left out
(with a warning) and extra secondary sequences are ignored. Without usable ids the secondary's
shards (harvested over the same records with the same options) are aligned *by sequence order*:
its k-th sequence is the primary's k-th. Either way a paired sequence must have the same length,
token_ids, target_ids and is_completion, row by row; shard boundaries may differ, and a window reads
the secondary's rows at the same sequence and positions.
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
    index, first row) of global sequence k in these shards. As open_secondary returns it, `loc` has
    a row per primary sequence, (-1, -1) where a join by request id found no counterpart; Corpus.open
    then keeps the rows of the sequences it uses."""

    shards: List[Shard]
    layers: List[Layer]
    fingerprint: str
    hidden_size: int
    loc: np.ndarray  # [sequences, 2] int64

    def rows(self, layer: Layer, sequence: int, position: int, n: int) -> np.ndarray:
        si, row = (int(v) for v in self.loc[sequence])
        start = row + position
        return self.shards[si].rows(layer, start, start + n)


HINT = "harvest every base over the same data file with the same options (--format, --max-tokens, --limit)"


def _concat(shards: Sequence[Shard], name: str) -> np.ndarray:
    return np.concatenate([np.asarray(sh.tensors[name], dtype=np.int64) for sh in shards]) if shards else np.zeros(0, np.int64)


def _lengths(shards: Sequence[Shard]) -> np.ndarray:
    return np.concatenate([np.diff(sh.offsets) for sh in shards]) if shards else np.zeros(0, np.int64)


def _starts(lengths: np.ndarray) -> np.ndarray:
    """First row of each sequence in the concatenation of sequences of these lengths."""
    return np.cumsum(lengths) - lengths


def _seq_loc(shards: Sequence[Shard]) -> np.ndarray:
    """(shard index, first row) of every sequence of the shards, in order."""
    loc = np.zeros((sum(sh.sequences for sh in shards), 2), np.int64)
    k = 0
    for si, sh in enumerate(shards):
        n = sh.sequences
        loc[k : k + n, 0] = si
        loc[k : k + n, 1] = sh.offsets[:-1]
        k += n
    return loc


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
    p_len, s_len = _lengths(primary), _lengths(shards)
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
            + (f", length {int(s_len[bad])} vs {int(p_len[bad])}" if bad < m else "") + f"; {HINT}")
    for name in ("token_ids", "target_ids", "is_completion"):
        a, b = _concat(primary, name), _concat(shards, name)
        if not np.array_equal(a, b):
            row = int(np.argmax(a != b))
            sp, sr = _where(shards, row)
            pp, pr = _where(primary, row)
            raise ShardError(f"secondary base {j}: shard {sp} row {sr}: {name} differ from the primary's (shard {pp} row {pr}: "
                             f"{int(b[row])} vs {int(a[row])}); {HINT}")
    return _seq_loc(shards)


def _request_ids(sh: Shard) -> List[str]:
    try:
        ids = json.loads(sh.metadata.get("request_ids", "[]"))
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) and len(ids) == sh.sequences else []


def usable_ids(shards: Sequence[Shard]) -> Optional[List[str]]:
    """The request id of every sequence of the shards, in order, or None when a shard lacks a list
    of the right length or an id repeats (then no join by id is possible)."""
    ids: List[str] = []
    for sh in shards:
        got = _request_ids(sh)
        if len(got) != sh.sequences:
            return None
        ids.extend(got)
    return ids if len(set(ids)) == len(ids) else None


def _check_pairs(primary: Sequence[Shard], shards: Sequence[Shard], j: int, p_ids: Sequence[str],
                 p_seq: np.ndarray, s_seq: np.ndarray) -> None:
    """Primary sequence p_seq[k] and secondary sequence s_seq[k] must match row by row; a ShardError
    names the request id, both shards and the first differing row."""
    p_len, s_len = _lengths(primary), _lengths(shards)
    p_start, s_start = _starts(p_len), _starts(s_len)
    bad = np.flatnonzero(p_len[p_seq] != s_len[s_seq])
    if len(bad):
        pi, si = int(p_seq[bad[0]]), int(s_seq[bad[0]])
        sp, sr = _where(shards, int(s_start[si]))
        pp, pr = _where(primary, int(p_start[pi]))
        raise ShardError(f"secondary base {j}: shard {sp} row {sr}: request id {p_ids[pi]} has {int(s_len[si])} rows, the primary's "
                         f"{int(p_len[pi])} (shard {pp} row {pr}); {HINT}")
    # Row indices of every pair, gathered at once: the shards of a long harvest hold millions of rows.
    n = p_len[p_seq]
    first = _starts(n)
    within = np.arange(int(n.sum())) - np.repeat(first, n)
    p_rows, s_rows = np.repeat(p_start[p_seq], n) + within, np.repeat(s_start[s_seq], n) + within
    for name in ("token_ids", "target_ids", "is_completion"):
        a, b = _concat(primary, name)[p_rows], _concat(shards, name)[s_rows]
        if not np.array_equal(a, b):
            i = int(np.argmax(a != b))
            rid = p_ids[int(p_seq[np.searchsorted(first, i, side="right") - 1])]
            sp, sr = _where(shards, int(s_rows[i]))
            pp, pr = _where(primary, int(p_rows[i]))
            raise ShardError(f"secondary base {j}: shard {sp} row {sr}: {name} differ from the primary's (request id {rid}, "
                             f"primary shard {pp} row {pr}: {int(b[i])} vs {int(a[i])}); {HINT}")


def join_secondary(primary: Sequence[Shard], shards: Sequence[Shard], j: int, p_ids: Sequence[str], s_ids: Sequence[str]) -> np.ndarray:
    """Locations in `shards` of each primary sequence by request id, (-1, -1) where the secondary
    lacks it (the gateway writes each base's shards on its own: a key's policy may not name this
    base, a replay may be dropped under load). Sequences only in the secondary are ignored."""
    where = {rid: k for k, rid in enumerate(s_ids)}
    s_of = np.array([where.get(rid, -1) for rid in p_ids], np.int64)
    p_seq = np.flatnonzero(s_of >= 0)
    if not len(p_seq):
        raise ShardError(f"no primary sequence has a counterpart in secondary base {j}'s shards by request id "
                         f"({len(p_ids)} primary, {len(s_ids)} secondary sequences)")
    _check_pairs(primary, shards, j, p_ids, p_seq, s_of[p_seq])
    if len(p_seq) < len(p_ids):
        warnings.warn(f"secondary base {j}: {len(p_ids) - len(p_seq)} of {len(p_ids)} primary sequences have no counterpart "
                      "(by request id) and are left out")
    loc = np.full((len(p_ids), 2), -1, np.int64)
    loc[p_seq] = _seq_loc(shards)[s_of[p_seq]]
    return loc


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
    package is known), its hidden size from their metadata, joined with the primary's by request id
    when both sides' ids are usable, else aligned by sequence order."""
    shards = [open_shard(p, list(layers), hidden_size, fingerprint) for p in find_shards(paths)]
    fps = sorted({sh.metadata.get("base_fingerprint", "") for sh in shards})
    if len(fps) != 1 or not fps[0]:
        raise ShardError(f"secondary base {j}: its shards come from {len(fps)} bases ({[f[:12] for f in fps]}): one base per --secondary-shards")
    sizes = sorted({int(sh.metadata["hidden_size"]) for sh in shards})
    if len(sizes) != 1:
        raise ShardError(f"secondary base {j}: shards of hidden sizes {sizes}")
    p_ids, s_ids = usable_ids(primary), usable_ids(shards)
    if p_ids is not None and s_ids is not None:
        return Secondary(shards, list(layers), fps[0], sizes[0], join_secondary(primary, shards, j, p_ids, s_ids))
    shards = order_like(primary, shards)
    return Secondary(shards, list(layers), fps[0], sizes[0], align_secondary(primary, shards, j))


@dataclass(frozen=True)
class Window:
    shard: int
    begin: int  # first row in the shard
    end: int
    position: int  # position of the first row (0 unless a long sequence was cut)
    sequence: int  # global sequence index (train/eval split is by sequence)


class Corpus:
    """Every sequence of some shards (or those `keep` marks, in the shards' sequence order), cut into
    windows of at most `seq_len` rows; sequences are numbered densely over the kept ones."""

    def __init__(self, shards: List[Shard], layers: Sequence[Layer], seq_len: int, keep: Optional[np.ndarray] = None) -> None:
        self.shards, self.layers, self.seq_len = shards, list(layers), seq_len
        self.secondaries: List[Secondary] = []  # mixtures: aligned shards of each secondary base
        self.windows: List[Window] = []
        seq, k = 0, 0
        for si, sh in enumerate(shards):
            for i in range(sh.sequences):
                if keep is None or keep[k]:
                    b, e = int(sh.offsets[i]), int(sh.offsets[i + 1])
                    for start in range(b, e, seq_len):
                        self.windows.append(Window(si, start, min(start + seq_len, e), start - b, seq))
                    seq += 1
                k += 1
        self.sequence_count = seq

    @classmethod
    def open(cls, paths: Sequence[str], layers: Sequence[Layer], seq_len: int, hidden_size: Optional[int] = None, base_fingerprint: Optional[str] = None,
             secondaries: Sequence[Dict] = ()) -> "Corpus":
        """`secondaries` (mixtures): per secondary base, {"paths", "layers"} and optionally the
        expected "hidden_size" / "fingerprint" (from its package)."""
        need = list(dict.fromkeys(["final", *layers]))  # the loss always needs the final state
        shards = [open_shard(p, need, hidden_size, base_fingerprint) for p in find_shards(paths)]
        secs = [open_secondary(shards, spec["paths"], spec["layers"], j, spec.get("hidden_size"), spec.get("fingerprint"))
                for j, spec in enumerate(secondaries)]
        # A sequence is trained on only where every secondary has its states.
        keep = np.ones(sum(sh.sequences for sh in shards), bool)
        for sec in secs:
            keep &= sec.loc[:, 0] >= 0
        if keep.size and not keep.any():
            raise ShardError("no primary sequence has a counterpart in every secondary base's shards by request id")
        for sec in secs:
            sec.loc = sec.loc[keep]
        corpus = cls(shards, need, seq_len, keep)
        corpus.secondaries = secs
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
