"""Opening a GGUF file safely: path checks, parse errors and truncation turned into ModelLoadError, metadata
as plain Python values, and tensor bytes as torch rows."""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Literal

import numpy as np
import torch
from gguf import GGUFReader, ReaderTensor

from ember.models.errors import ModelLoadError
from ember.models.gguf_header import check_gguf_header
from ember.models.quant.ggml_blocks import BLOCK_FORMATS, block_format

GGUF_MAGIC = b"GGUF"


class _PlainArrayReader(GGUFReader):
    """GGUFReader whose reads slice a plain ndarray view of the memory map instead of the np.memmap itself.

    gguf 0.19 slices its np.memmap once per metadata string (~100k times for a vocabulary), and memmap's
    Python-level subclass hooks make that 3x slower than the parse itself. The view shares the same mapping,
    so tensors stay memory-mapped and the parsing logic is the package's own."""

    def _get(
        self, offset: int, dtype: Any, count: int = 1, override_order: Literal["I", "S", "<"] | None = None
    ) -> np.ndarray:
        plain = self.__dict__.get("_plain_data")
        if plain is None:
            plain = self.__dict__["_plain_data"] = self.data.view(np.ndarray)
        count = int(count)
        start = int(offset)
        arr = plain[start : start + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
        return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))


def resolve_gguf_path(path: str) -> str:
    """`path` itself when it is a file; the single *.gguf inside it when it is a directory."""
    if not os.path.exists(path):
        raise ModelLoadError(path, "no such file or directory")
    if not os.path.isdir(path):
        return path
    candidates = sorted(name for name in os.listdir(path) if name.endswith(".gguf"))
    if not candidates:
        raise ModelLoadError(path, "directory contains no .gguf model file")
    if len(candidates) > 1:
        raise ModelLoadError(
            path, f"directory contains several .gguf files ({', '.join(candidates)}); pass one"
        )
    return os.path.join(path, candidates[0])


def open_gguf(path: str) -> GGUFReader:
    """A memory-mapped reader whose every tensor lies inside the file and has a type ember decodes."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(path, f"cannot read file: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(path, f"not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    check_gguf_header(path)  # before gguf's reader, which allocates whatever the header declares
    try:
        reader = _PlainArrayReader(path, "r")
    except Exception as e:  # the gguf package reports damage as ValueError/IndexError/struct errors alike
        raise ModelLoadError(path, f"cannot parse GGUF, the file is truncated or corrupt ({e})") from None
    file_size = os.path.getsize(path)
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > file_size or tensor.data.nbytes != int(tensor.n_bytes):
            raise ModelLoadError(
                path,
                f"file is truncated: tensor {tensor.name} ends at byte {end} but the file has {file_size}",
            )
        if tensor.tensor_type.name not in BLOCK_FORMATS:
            raise ModelLoadError(
                path,
                f"tensor {tensor.name} has unsupported type {tensor.tensor_type.name}; "
                f"supported: {', '.join(BLOCK_FORMATS)}",
            )
    return reader


def read_fields(reader: GGUFReader) -> dict[str, Any]:
    """Every metadata key as a Python value (str, int, float, bool, or a list of them)."""
    return {name: field.contents() for name, field in reader.fields.items()}


def tensor_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """Torch order: GGUF lists dimensions innermost first (ne0 = in_features), so reverse them."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


def tensor_rows(tensor: ReaderTensor, file: BinaryIO) -> torch.Tensor:
    """The tensor's bytes as uint8 [rows, bytes_per_row] (rows = all but the innermost dimension), read from
    `file` (the GGUF, opened for reading) straight into the tensor's own memory. Not copied out of the memory
    map: every page touched there stays in the process's RSS until the reader is dropped, so a load used to
    hold the whole file a second time at its peak (491 MiB for Qwen2.5-0.5B Q4_K_M)."""
    shape = tensor_shape(tensor)
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    n_bytes = int(tensor.n_bytes)
    expected = block_format(tensor.tensor_type.name).bytes_per_row(shape[-1])
    if n_bytes != rows * expected:
        raise ValueError(
            f"tensor {tensor.name}: {n_bytes // max(rows, 1)} bytes per row, expected {expected}"
        )
    out = torch.empty(n_bytes, dtype=torch.uint8)
    file.seek(int(tensor.data_offset))
    if file.readinto(memoryview(out.numpy())) != n_bytes:  # open_gguf checked every tensor fits the file
        raise ValueError(f"tensor {tensor.name}: the file ended inside its data")
    return out.view(rows, expected)
