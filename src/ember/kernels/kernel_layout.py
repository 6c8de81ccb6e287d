"""The quantization type ids and block and tile sizes of the native kernels, read from the extension itself.

csrc/quant_kernels/quant_layout.h is their one definition: Python takes the ids it passes to the kernels from
the built module's `layout()` instead of keeping a copy that could drift. What Python does keep is the raw
GGUF block shape of each type (reference.BLOCK_SHAPES): it checks a weight's bytes before handing the pointer
to C++, so a disagreement would let the kernels read past a buffer. The two are compared when the extension
is loaded, and a mismatch stops the import rather than computing garbage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType

from ember.kernels.reference import ACTIVATION_BLOCK, BLOCK_SHAPES

REBUILD_HINT = "rebuild it: `.venv/bin/pip install -e .` (or `python setup.py build_ext --inplace`)"


@dataclass(frozen=True)
class KernelQType:
    """One quantization type as the kernels know it."""

    id: int  # what Python passes as `qtype_id`
    block_values: int  # values in one raw GGUF block
    block_bytes: int  # bytes of one raw GGUF block
    tile_bytes: int  # bytes of one repacked tile: rows_per_group rows x `KernelLayout.block_values` values


@dataclass(frozen=True)
class KernelLayout:
    rows_per_group: int  # rows interleaved into one tile
    block_values: int  # values per tile row, and per quantized activation block
    qtypes: Mapping[str, KernelQType]  # by GGUF type name


class KernelLayoutError(RuntimeError):
    """The built extension and this Python code disagree on the kernels' layout (a stale or foreign build)."""


def read_layout(native: ModuleType) -> KernelLayout:
    """The layout compiled into `native`; KernelLayoutError when the build predates `layout()`."""
    if not hasattr(native, "layout"):
        raise KernelLayoutError(
            f"{native.__name__} has no layout(): it was built from older sources; {REBUILD_HINT}"
        )
    raw = native.layout()
    qtypes = {name: KernelQType(**fields) for name, fields in raw["qtypes"].items()}
    return KernelLayout(int(raw["rows_per_group"]), int(raw["block_values"]), MappingProxyType(qtypes))


def layout_mismatches(layout: KernelLayout) -> list[str]:
    """Where the kernels' layout disagrees with Python's block shapes and activation block (empty: agreed)."""
    problems = []
    if set(layout.qtypes) != set(BLOCK_SHAPES):
        problems.append(
            f"types: the kernels take {sorted(layout.qtypes)}, Python checks {sorted(BLOCK_SHAPES)}"
        )
    for name, qtype in layout.qtypes.items():
        expected = BLOCK_SHAPES.get(name)
        if expected is not None and (qtype.block_values, qtype.block_bytes) != expected:
            problems.append(
                f"{name}: the kernels read blocks of {qtype.block_values} values in {qtype.block_bytes} bytes, "
                f"Python checks {expected[0]} values in {expected[1]} bytes"
            )
    ids = sorted(qtype.id for qtype in layout.qtypes.values())
    if len(set(ids)) != len(ids):
        problems.append(f"type ids are not distinct: {ids}")
    if layout.block_values != ACTIVATION_BLOCK:
        problems.append(
            f"activation block: the kernels use {layout.block_values} values, Python {ACTIVATION_BLOCK}"
        )
    return problems


def checked_layout(native: ModuleType) -> KernelLayout:
    """`read_layout`, raising KernelLayoutError when it disagrees with Python (called once, on import)."""
    layout = read_layout(native)
    problems = layout_mismatches(layout)
    if problems:
        raise KernelLayoutError(
            f"{native.__name__} disagrees with ember's Python code: {'; '.join(problems)}; {REBUILD_HINT}"
        )
    return layout
