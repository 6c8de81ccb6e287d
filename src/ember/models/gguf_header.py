"""A bounds check of a GGUF file's header before the gguf package parses it.

gguf's reader trusts the counts a file declares: a 58-byte file claiming an array of 2^60 items made it allocate
until the machine ran out of memory. Every count and length here is checked against the bytes that are actually
left in the file (each item takes at least its smallest encoding), so a hostile or damaged header is a one-line
ModelLoadError and the work done is bounded by the file's size."""

from __future__ import annotations

import mmap
import struct

from ember.models.errors import ModelLoadError

# GGUF value types (gguf.GGUFValueType) -> bytes of one value; strings and arrays have their own minimum.
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_MIN_STRING = 8  # the u64 length of an empty string
_MIN_ARRAY = 12  # item type u32 + count u64 of an empty array
_MIN_KV = _MIN_STRING + 4 + 1  # key, value type, the smallest value
_MIN_TENSOR_INFO = _MIN_STRING + 4 + 4 + 8  # name, n_dims, type, offset (n_dims may be 0)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_NESTING = 4  # llama.cpp writes flat arrays; a deeper nest is no model file


class _HeaderError(Exception):
    pass


class _Cursor:
    """Reads little-endian values from the mapped file, refusing to step past its end."""

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if size > self.left:
            raise _HeaderError(f"the header ends early at byte {self.pos} (file has {len(self.data)} bytes)")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def skip(self, size: int) -> None:
        if size > self.left:
            raise _HeaderError(f"the header ends early at byte {self.pos} (file has {len(self.data)} bytes)")
        self.pos += size

    def count(self, what: str, minimum_each: int) -> int:
        """A u64 count of items each at least `minimum_each` bytes, which must fit in what is left."""
        at = self.pos
        n = self.take("<Q")
        if n * minimum_each > self.left:
            raise _HeaderError(
                f"{what} at byte {at} declares {n} items, more than the {self.left} bytes left in the file can hold"
            )
        return n


def _skip_string(cursor: _Cursor, what: str) -> None:
    cursor.skip(cursor.count(what, 1))


_U64 = struct.Struct("<Q")


def _skip_strings(cursor: _Cursor, count: int) -> None:
    """`count` strings in a row: a vocabulary is ~100k of them, so this loop is kept tight."""
    data, pos, end, unpack = cursor.data, cursor.pos, len(cursor.data), _U64.unpack_from
    for _ in range(count):
        if pos + 8 > end or (pos := pos + 8 + unpack(data, pos)[0]) > end:
            raise _HeaderError(f"a string array runs past the end of the file (file has {end} bytes)")
    cursor.pos = pos


def _skip_value(cursor: _Cursor, value_type: int, depth: int = 0) -> None:
    if value_type in _FIXED_SIZES:
        cursor.skip(_FIXED_SIZES[value_type])
    elif value_type == _STRING:
        _skip_string(cursor, "a string")
    elif value_type == _ARRAY:
        if depth >= _MAX_ARRAY_NESTING:
            raise _HeaderError(f"arrays nested more than {_MAX_ARRAY_NESTING} deep at byte {cursor.pos}")
        item_type = cursor.take("<I")
        if item_type in _FIXED_SIZES:
            cursor.skip(cursor.count("an array", _FIXED_SIZES[item_type]) * _FIXED_SIZES[item_type])
        elif item_type == _STRING:
            _skip_strings(cursor, cursor.count("an array", _MIN_STRING))
        elif item_type == _ARRAY:
            for _ in range(cursor.count("an array", _MIN_ARRAY)):
                _skip_value(cursor, item_type, depth + 1)
        else:
            raise _HeaderError(f"unknown array item type {item_type} at byte {cursor.pos - 4}")
    else:
        raise _HeaderError(f"unknown value type {value_type} at byte {cursor.pos - 4}")


def check_gguf_header(path: str) -> None:
    """ModelLoadError unless every count and length in the header fits inside the file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cursor = _Cursor(data)
            cursor.skip(4)  # the magic, checked by the caller
            version = cursor.take("<I")
            if version not in (2, 3):
                raise _HeaderError(f"GGUF version {version} is not supported (2 and 3 are)")
            tensor_count = cursor.take("<Q")
            kv_count = cursor.count("the metadata", _MIN_KV)
            for _ in range(kv_count):
                _skip_string(cursor, "a metadata key")
                _skip_value(cursor, cursor.take("<I"))
            if tensor_count * _MIN_TENSOR_INFO > cursor.left:
                raise _HeaderError(
                    f"the header declares {tensor_count} tensors, more than the {cursor.left} bytes left can describe"
                )
            for _ in range(tensor_count):
                _skip_string(cursor, "a tensor name")
                n_dims = cursor.take("<I")
                if n_dims > _MAX_DIMS:
                    raise _HeaderError(f"a tensor has {n_dims} dimensions (at most {_MAX_DIMS})")
                cursor.skip(8 * n_dims + 4 + 8)
    except _HeaderError as error:
        raise ModelLoadError(path, f"GGUF header is truncated or corrupt: {error}") from None
    except (OSError, ValueError) as error:  # ValueError: mmap of an empty file
        raise ModelLoadError(path, f"cannot read file: {error}") from None
