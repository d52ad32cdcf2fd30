"""Minimal safetensors reader/writer on NumPy (the `safetensors` pip package is not required).

Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes of
JSON header ({name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}), then the data
section. Offsets are relative to the data section. This mirrors src/harvest/safetensors.ts: the
writer sorts tensors widest dtype first so every tensor is naturally aligned in the file.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from .atomic import atomic_write

DTYPES: Dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# The reference reader refuses larger headers; so do we, before allocating anything.
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    pass


@dataclass
class Entry:
    dtype: str
    shape: Tuple[int, ...]
    begin: int  # absolute file offset
    end: int


@dataclass
class Header:
    entries: Dict[str, Entry]
    metadata: Dict[str, str]
    data_start: int
    file_bytes: int


def read_header(path: str) -> Header:
    """Parses and validates the header (dtypes, sizes, contiguous data, exact file size)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise SafetensorsError(f"{path}: header length {n} does not fit a {size}-byte file")
        raw = json.loads(f.read(n).decode("utf-8"))
    if not isinstance(raw, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries: Dict[str, Entry] = {}
    for name, e in raw.items():
        dtype = e.get("dtype")
        if dtype not in DTYPES:
            raise SafetensorsError(f"{path}: {name}: unsupported dtype {dtype}")
        shape = tuple(int(d) for d in e["shape"])
        b, end = (int(o) for o in e["data_offsets"])
        want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
        if end - b != want:
            raise SafetensorsError(f"{path}: {name}: {end - b} bytes for {dtype}{list(shape)} (want {want})")
        entries[name] = Entry(dtype, shape, data_start + b, data_start + end)
    covered = 0
    for e in sorted(entries.values(), key=lambda e: e.begin):
        if e.begin - data_start != covered:
            raise SafetensorsError(f"{path}: gap or overlap in the data section")
        covered = e.end - data_start
    if data_start + covered != size:
        raise SafetensorsError(f"{path}: file is {size} bytes, header promises {data_start + covered}")
    return Header(entries, dict(metadata), data_start, size)


def load(path: str, names: Optional[Iterable[str]] = None, mmap: bool = True) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Tensors (read-only memory maps by default: shards can be large) and the metadata."""
    header = read_header(path)
    wanted = header.entries.keys() if names is None else names
    out: Dict[str, np.ndarray] = {}
    for name in wanted:
        e = header.entries.get(name)
        if e is None:
            raise SafetensorsError(f"{path}: no tensor {name}")
        dt = DTYPES[e.dtype]
        count = int(np.prod(e.shape, dtype=np.int64))
        if count == 0:
            out[name] = np.zeros(e.shape, dt)
        elif mmap:
            out[name] = np.memmap(path, dtype=dt, mode="r", offset=e.begin, shape=e.shape)
        else:
            with open(path, "rb") as f:
                f.seek(e.begin)
                out[name] = np.frombuffer(f.read(e.end - e.begin), dtype=dt).reshape(e.shape).copy()
    return out, header.metadata


def save(path: str, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes atomically (temp file, fsync, rename): a reader never sees a torn file."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    names = {k: _dtype_name(k, v.dtype) for k, v in arrays.items()}
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: Dict[str, object] = {}
    if metadata:
        for k, v in metadata.items():
            if not isinstance(v, str):
                raise SafetensorsError(f"metadata {k}: values must be strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for k in order:
        a = arrays[k]
        header[k] = {"dtype": names[k], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    def write(f) -> None:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k in order:
            f.write(arrays[k].astype(DTYPES[names[k]], copy=False).tobytes())

    atomic_write(path, write)


def _dtype_name(name: str, dt: np.dtype) -> str:
    le = dt.newbyteorder("<") if dt.itemsize > 1 else dt
    for k, v in DTYPES.items():
        if v == le:
            return k
    raise SafetensorsError(f"{name}: dtype {dt} is not supported")


def data_sha256(path: str) -> str:
    """sha256 of the data section: what harvest shards record as `data_sha256` (and the ETag)."""
    import hashlib

    header = read_header(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(header.data_start)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()
