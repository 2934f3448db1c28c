"""safetensors without loading tensors: read a file's header (names, dtypes, shapes, metadata) and write a file
one tensor at a time.

The header is enough to classify a file (`detect.detect_component_kind` and `detect.detect_family` only look at
key names and shapes), so listings and the merger's family check never read weights. The streaming writer lets
the checkpoint merger hold one merged tensor in memory at a time instead of the whole model.

Format (huggingface/safetensors): 8-byte little-endian header length N, N bytes of UTF-8 JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the tensor bytes,
back to back, offsets relative to the end of the header, covering the data exactly.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library enforces
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


class SafetensorsHeaderError(ValueError):
    """The file is not a well-formed safetensors file (the message says what is wrong)."""


@dataclass(frozen=True)
class TensorInfo:
    """What the header says about one tensor; `shape` makes it usable where detect.py expects a tensor."""

    dtype: torch.dtype
    shape: torch.Size
    begin: int
    end: int


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensors by name, `__metadata__`) of a safetensors file, reading only its header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise SafetensorsHeaderError(f"{path.name}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or length + 8 > size:
            raise SafetensorsHeaderError(f"{path.name}: header length {length} does not fit the file")
        raw = file.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise SafetensorsHeaderError(f"{path.name}: header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path.name}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _tensor_info(path.name, name, entry) for name, entry in header.items()}
    data_size = size - 8 - length
    if any(info.end > data_size for info in tensors.values()):
        raise SafetensorsHeaderError(f"{path.name}: tensor data runs past the end of the file (truncated?)")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _tensor_info(file_name: str, name: str, entry: object) -> TensorInfo:
    try:
        dtype = DTYPES_BY_NAME[entry["dtype"]]  # type: ignore[index]
        begin, end = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
        shape = torch.Size(int(x) for x in entry["shape"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise SafetensorsHeaderError(f"{file_name}: bad header entry for {name!r}") from None
    return TensorInfo(dtype, shape, begin, end)


def tensor_bytes(tensor: Tensor) -> memoryview:
    """The tensor's little-endian bytes (CPU, contiguous; every dtype, 0-d included)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def byte_size(dtype: torch.dtype, shape: torch.Size | tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * torch.empty((), dtype=dtype).element_size()


class StreamingWriter:
    """Write a safetensors file whose layout (names, dtypes, shapes) is known up front, tensor by tensor.

    Usage: `with StreamingWriter(path, layout, metadata) as writer: for name in writer.order: writer.write(name, t)`.
    The file is written to a temporary name in the same folder and moved into place (os.replace) only when every
    tensor was written, so a failed or interrupted write never leaves a half file under the final name.
    """

    def __init__(self, path: str | os.PathLike[str], layout: Mapping[str, tuple[torch.dtype, torch.Size]],
                 metadata: Mapping[str, str]) -> None:
        bad = [key for key, value in metadata.items() if not isinstance(key, str) or not isinstance(value, str)]
        if bad:
            raise TypeError(f"safetensors metadata must be str → str; offending keys: {bad}")
        self.path = Path(path)
        self.order = sorted(layout)
        self._layout = dict(layout)
        self._metadata = dict(metadata)
        self._temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file = None
        self._next = 0

    def _header(self) -> bytes:
        header: dict[str, object] = {"__metadata__": self._metadata} if self._metadata else {}
        offset = 0
        for name in self.order:
            dtype, shape = self._layout[name]
            size = byte_size(dtype, shape)
            header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        return raw + b" " * (-len(raw) % 8)  # the library pads the header to 8-byte alignment

    def __enter__(self) -> StreamingWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self._header()
        self._file = open(self._temporary, "wb")
        self._file.write(struct.pack("<Q", len(header)) + header)
        return self

    def write(self, name: str, tensor: Tensor) -> None:
        """The next tensor, in `order`; dtype and shape must be what the layout promised."""
        assert self._file is not None, "use StreamingWriter in a with block"
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected:
            raise ValueError(f"tensors must be written in order: expected {expected!r}, got {name!r}")
        dtype, shape = self._layout[name]
        if tensor.dtype != dtype or tensor.shape != shape:
            raise ValueError(f"{name}: layout says {dtype} {tuple(shape)}, got {tensor.dtype} {tuple(tensor.shape)}")
        self._file.write(tensor_bytes(tensor))
        self._next += 1

    def __exit__(self, kind, error, traceback) -> None:
        assert self._file is not None
        self._file.close()
        if error is None and self._next != len(self.order):
            self._temporary.unlink(missing_ok=True)
            raise ValueError(f"only {self._next} of {len(self.order)} tensors were written")
        if error is None:
            os.replace(self._temporary, self.path)
        else:
            self._temporary.unlink(missing_ok=True)

