"""Reader for CTranslate2 `model.bin` files (format version 6), without CTranslate2.

Layout, little-endian, as found by inspecting the bundled Whisper tiny.en file:
    u32 format version | str spec name | u32 spec revision
    u32 number of variables, then per variable:
        str name | u8 rank | u32 x rank shape | u8 dtype | u32 byte count | raw bytes
    u32 number of aliases, then per alias: str alias | str target variable
where `str` is a u16 byte length followed by that many bytes (NUL-terminated UTF-8).
Scalars (rank 0) hold spec options such as `decoder/num_heads`.
The reader checks that it consumed the file exactly, so a layout change fails loudly.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import EncoderError

SUPPORTED_VERSIONS = (6,)
# CTranslate2's DataType enum values; byte counts are cross-checked against shape x itemsize.
_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BF16 = 5  # numpy has no bfloat16: read as int16 bits, reinterpret in torch


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]  # alias name -> variable it shares storage with (e.g. tied embeddings)

    def get(self, name: str) -> torch.Tensor:
        return self.variables[self.aliases.get(name, name)]

    def scalar(self, name: str) -> int | float:
        return self.variables[name].item()


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise EncoderError(f"{self.path} is truncated at byte {self.pos}; re-install the package that ships it")
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def bytes(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise EncoderError(f"{self.path} is truncated at byte {self.pos}; re-install the package that ships it")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def string(self) -> str:
        return bytes(self.bytes(self.unpack("H"))).rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 model.bin into CPU tensors (kept in their stored dtype)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EncoderError(f"could not read the CTranslate2 model {path}: {exc}") from exc
    cur = _Cursor(data, path)
    version = cur.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise EncoderError(f"{path} is CTranslate2 format version {version}; this reader supports {SUPPORTED_VERSIONS}")
    spec, revision = cur.string(), cur.unpack("I")

    variables: dict[str, torch.Tensor] = {}
    for _ in range(cur.unpack("I")):
        name = cur.string()
        rank = cur.unpack("B")
        shape = tuple(cur.unpack("I") for _ in range(rank))
        code, nbytes = cur.unpack("B"), cur.unpack("I")
        raw = cur.bytes(nbytes)
        if code == _BF16:
            np_dtype = np.dtype("<i2")
        elif code in _DTYPES:
            np_dtype = _DTYPES[code]
        else:
            raise EncoderError(f"{path}: variable {name!r} has unsupported CTranslate2 dtype code {code}")
        numel = int(np.prod(shape)) if shape else 1
        if numel * np_dtype.itemsize != nbytes:
            raise EncoderError(f"{path}: variable {name!r} of shape {shape} has {nbytes} bytes, "
                               f"expected {numel * np_dtype.itemsize}")
        # copy(): the tensors must own their memory, not the bytes object of the whole file
        tensor = torch.from_numpy(np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy())
        variables[name] = tensor.view(torch.bfloat16) if code == _BF16 else tensor

    aliases = {}
    for _ in range(cur.unpack("I")):
        alias, target = cur.string(), cur.string()
        if target not in variables:
            raise EncoderError(f"{path}: alias {alias!r} points to unknown variable {target!r}")
        aliases[alias] = target
    if cur.pos != len(data):
        raise EncoderError(f"{path}: {len(data) - cur.pos} unread bytes after the last alias; "
                           "not a CTranslate2 version-6 model this reader understands")
    return CT2Model(spec, revision, variables, aliases)
