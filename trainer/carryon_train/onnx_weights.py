"""Reads initializers (weights) out of an ONNX file with a minimal protobuf decoder.

Why not the `onnx` package: the trainer needs exactly one thing from the base package, the frozen
LM head in head.onnx (and, for the benchmark's full fine-tune, the body's weights), and the wire
format of the few messages involved is small and frozen. Decoding it here keeps the trainer's
dependencies at torch + numpy and works with any onnx version (or none).

Messages read (onnx.proto3): ModelProto.graph = 7; GraphProto.initializer = 5;
TensorProto: dims = 1, data_type = 2, float_data = 4, int32_data = 5, int64_data = 7, name = 8,
raw_data = 9, double_data = 10, external_data = 13, data_location = 14.
"""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Set, Tuple

import numpy as np

_ONNX_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("u1"),
    3: np.dtype("i1"),
    6: np.dtype("<i4"),
    7: np.dtype("<i8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f8"),
}


class OnnxReadError(ValueError):
    pass


def _varint(buf: memoryview, i: int) -> Tuple[int, int]:
    shift = 0
    out = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise OnnxReadError("varint too long")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value): int for varint/fixed, memoryview for length-delimited."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield field, wire, v
        elif wire == 1:
            yield field, wire, buf[i : i + 8]
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            yield field, wire, buf[i : i + length]
            i += length
        elif wire == 5:
            yield field, wire, buf[i : i + 4]
            i += 4
        else:
            raise OnnxReadError(f"unsupported wire type {wire}")
        if i > n:
            raise OnnxReadError("truncated message")


def _signed(v: int) -> int:
    """int64 fields are two's complement varints."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: memoryview) -> list:
    out, i = [], 0
    while i < len(buf):
        v, i = _varint(buf, i)
        out.append(_signed(v))
    return out


def _tensor(buf: memoryview) -> Tuple[str, np.ndarray]:
    name = ""
    dims: list = []
    dtype = 0
    raw: Optional[memoryview] = None
    floats: list = []
    ints: list = []
    for field, wire, v in _fields(buf):
        if field == 1:
            dims.extend(_packed_varints(v) if wire == 2 else [_signed(v)])  # type: ignore[arg-type]
        elif field == 2:
            dtype = int(v)  # type: ignore[arg-type]
        elif field == 8:
            name = bytes(v).decode("utf-8")  # type: ignore[arg-type]
        elif field == 9:
            raw = v  # type: ignore[assignment]
        elif field == 4:
            floats.append(np.frombuffer(bytes(v), "<f4"))  # packed (wire 2) or one fixed32 (wire 5)  # type: ignore[arg-type]
        elif field in (5, 7):
            ints.extend(_packed_varints(v) if wire == 2 else [_signed(v)])  # type: ignore[arg-type]
        elif field in (13, 14) and (wire == 2 or v):
            raise OnnxReadError(f"initializer {name or '?'} uses external data, which is not supported")
    if dtype not in _ONNX_DTYPES:
        raise OnnxReadError(f"initializer {name}: unsupported ONNX data type {dtype}")
    dt = _ONNX_DTYPES[dtype]
    shape = tuple(int(d) for d in dims)
    if raw is not None:
        arr = np.frombuffer(bytearray(raw), dt)  # bytearray: a writable copy
    elif floats:
        arr = np.concatenate(floats).astype(dt)
    else:
        arr = np.array(ints, dtype=np.int64).astype(dt)
    if arr.size != int(np.prod(shape, dtype=np.int64)):
        raise OnnxReadError(f"initializer {name}: {arr.size} values for shape {list(shape)}")
    return name, arr.reshape(shape)


def read_initializers(path: str, names: Optional[Set[str]] = None) -> Dict[str, np.ndarray]:
    """Initializers of the main graph, by name (all, or only `names`)."""
    with open(path, "rb") as f:
        data = memoryview(f.read())
    graph = None
    for field, wire, v in _fields(data):
        if field == 7 and wire == 2:
            graph = v
    if graph is None:
        raise OnnxReadError(f"{path}: no graph")
    out: Dict[str, np.ndarray] = {}
    for field, wire, v in _fields(graph):  # type: ignore[arg-type]
        if field == 5 and wire == 2:
            # Peek at the name first so unwanted (possibly huge) tensors are never copied.
            if names is not None:
                nm = _tensor_name(v)  # type: ignore[arg-type]
                if nm not in names:
                    continue
            name, arr = _tensor(v)  # type: ignore[arg-type]
            out[name] = arr
    return out


def _tensor_name(buf: memoryview) -> str:
    for field, _wire, v in _fields(buf):
        if field == 8:
            return bytes(v).decode("utf-8")  # type: ignore[arg-type]
    return ""


def dequantize_matmulnbits(qweight: np.ndarray, scales: np.ndarray, cols: int) -> np.ndarray:
    """MatMulNBits 4-bit, block 32, no zero points (so 8): byte i of a block holds elements 2i (low
    nibble) and 2i + 1 (high); value = (q - 8) * scale. Returns [rows, cols] float32."""
    rows, blocks, _ = qweight.shape
    lo = (qweight & 0x0F).astype(np.int8)
    hi = (qweight >> 4).astype(np.int8)
    q = np.stack([lo, hi], axis=-1).reshape(rows, blocks, 32).astype(np.float32) - 8.0
    w = q * scales.reshape(rows, blocks, 1).astype(np.float32)
    return w.reshape(rows, blocks * 32)[:, :cols]


def read_lm_head(head_onnx: str, hidden_size: int) -> np.ndarray:
    """The base's LM head as an f32 [vocab, hidden] matrix, from the package's head.onnx.

    An f32 package stores it as `lm_head.weight` [vocab, hidden] (Gemm with transB); a Q4_0 one as
    MatMulNBits `lm_head.qweight` + `lm_head.scales`, dequantized here exactly as ONNX Runtime reads it.
    """
    inits = read_initializers(head_onnx, {"lm_head.weight", "lm_head.qweight", "lm_head.scales"})
    if "lm_head.weight" in inits:
        w = inits["lm_head.weight"].astype(np.float32)
    elif "lm_head.qweight" in inits and "lm_head.scales" in inits:
        w = dequantize_matmulnbits(inits["lm_head.qweight"], inits["lm_head.scales"], hidden_size)
    else:
        raise OnnxReadError(f"{head_onnx}: no lm_head.weight or lm_head.qweight/scales initializer")
    if w.ndim != 2 or w.shape[1] != hidden_size:
        raise OnnxReadError(f"{head_onnx}: LM head has shape {list(w.shape)}, expected [vocab, {hidden_size}]")
    return np.ascontiguousarray(w)
