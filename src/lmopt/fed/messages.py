"""The wire format of every federated message, so that byte counts are the real payload sizes.

A message is a flat mapping ``name -> value`` where a value is a numpy array (any shape, one of the dtypes
in :data:`DTYPES`), an ``int``, a ``float`` or a ``str``. :func:`encode` writes it to bytes (little endian,
fields in sorted order) and :func:`decode` reads it back, rejecting anything malformed with
:class:`MalformedMessage`. The byte count reported for a message is ``len(encode(message))``: the exact
size of what crosses the network, headers included (a transport's own framing, e.g. Flower's protobuf
envelope, comes on top and is the same for every method).

Layout: ``b"LMF1"``, ``u32`` number of fields, then per field ``u16`` name length, the UTF-8 name, a ``u8``
kind (0 array, 1 int64, 2 float64, 3 str) and the value: arrays as ``u8`` dtype code, ``u8`` ndim,
``u64`` per dimension and the raw elements; ``str`` as ``u32`` length + UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"LMF1"
DTYPES = ("uint8", "uint16", "uint32", "int32", "int64", "float16", "float32", "float64")
Value = np.ndarray | int | float | str


class MalformedMessage(ValueError):
    """A message that cannot be decoded or does not hold the fields a method needs."""


def encode(message: Mapping[str, Value]) -> bytes:
    """Serialise ``message`` (see the module doc); raises ``TypeError`` for an unsupported value."""
    out = [MAGIC, struct.pack("<I", len(message))]
    for name in sorted(message):
        value = message[name]
        raw = name.encode("utf-8")
        out.append(struct.pack("<H", len(raw)) + raw)
        if isinstance(value, np.ndarray):
            if value.dtype.name not in DTYPES:
                raise TypeError(f"field {name!r}: arrays of dtype {value.dtype} cannot be sent; use one of {DTYPES}")
            arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
            out.append(struct.pack("<BBB", 0, DTYPES.index(value.dtype.name), arr.ndim))
            out.append(struct.pack(f"<{arr.ndim}Q", *arr.shape))
            out.append(arr.tobytes())
        elif isinstance(value, bool):
            raise TypeError(f"field {name!r}: send booleans as 0/1 ints")
        elif isinstance(value, (int, np.integer)):
            out.append(struct.pack("<Bq", 1, int(value)))
        elif isinstance(value, (float, np.floating)):
            out.append(struct.pack("<Bd", 2, float(value)))
        elif isinstance(value, str):
            s = value.encode("utf-8")
            out.append(struct.pack("<BI", 3, len(s)) + s)
        else:
            raise TypeError(f"field {name!r}: cannot send a {type(value).__name__} (arrays, int, float, str only)")
    return b"".join(out)


def decode(data: bytes | bytearray | memoryview) -> dict[str, Value]:
    """Read a message written by :func:`encode`; any truncation or bad header raises :class:`MalformedMessage`."""
    buf = memoryview(bytes(data))
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(buf):
            raise MalformedMessage(f"message truncated: needed {n} bytes at offset {pos}, only {len(buf) - pos} left")
        part = buf[pos:pos + n]
        pos += n
        return part

    if bytes(take(4)) != MAGIC:
        raise MalformedMessage("not an lmopt.fed message (bad magic bytes)")
    (count,) = struct.unpack("<I", take(4))
    out: dict[str, Value] = {}
    for _ in range(count):
        (n,) = struct.unpack("<H", take(2))
        try:
            name = bytes(take(n)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("a field name is not valid UTF-8") from exc
        (kind,) = struct.unpack("<B", take(1))
        if kind == 0:
            code, ndim = struct.unpack("<BB", take(2))
            if code >= len(DTYPES):
                raise MalformedMessage(f"field {name!r}: unknown dtype code {code}")
            shape = struct.unpack(f"<{ndim}Q", take(8 * ndim))
            dtype = np.dtype(DTYPES[code]).newbyteorder("<")
            size = int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize
            out[name] = np.frombuffer(bytes(take(size)), dtype=dtype).reshape(shape).astype(dtype.name)
        elif kind == 1:
            (out[name],) = struct.unpack("<q", take(8))
        elif kind == 2:
            (out[name],) = struct.unpack("<d", take(8))
        elif kind == 3:
            (length,) = struct.unpack("<I", take(4))
            out[name] = bytes(take(length)).decode("utf-8", errors="strict")
        else:
            raise MalformedMessage(f"field {name!r}: unknown value kind {kind}")
    if pos != len(buf):
        raise MalformedMessage(f"{len(buf) - pos} unexpected bytes after the last field")
    return out


def field(message: Mapping[str, Value], name: str, kind: type | tuple[type, ...], who: str = "message") -> Any:
    """``message[name]`` checked to be of ``kind`` (``np.ndarray``, ``int``, ``float``, ``str``)."""
    if name not in message:
        raise MalformedMessage(f"{who} lacks the field {name!r} (fields: {sorted(message)})")
    value = message[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kinds):
        raise MalformedMessage(f"{who}: field {name!r} should be {kind}, got {type(value).__name__}")
    return value


def index_dtype(pool_size: int) -> np.dtype:
    """The narrowest unsigned dtype that indexes a pool of ``pool_size`` seeds."""
    return np.dtype("uint16") if pool_size <= 1 << 16 else np.dtype("uint32")
