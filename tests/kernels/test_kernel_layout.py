"""The quantization type ids and block and tile sizes agree between the C++ kernels and Python, for every type."""

from __future__ import annotations

import dataclasses

import gguf
import pytest
import torch
from random_blocks import random_blocks

from ember import kernels
from ember.kernels.kernel_layout import KernelLayoutError, checked_layout, layout_mismatches, read_layout
from ember.kernels.reference import ACTIVATION_BLOCK, BLOCK_SHAPES
from ember.models.quant.ggml_blocks import block_format

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels not built")

# The tile layout quant_layout.h documents, per type: (bits of one quant, bytes of scales per row).
# Q4_0: fp16 d;  Q4_1: fp16 d, m;  Q4_K: fp32 scale, bias;  Q8_0: fp16 d;  Q6_K: fp32 scale per 16-value half.
DOCUMENTED_TILES = {"Q8_0": (8, 2), "Q4_0": (4, 2), "Q4_1": (4, 4), "Q4_K": (4, 8), "Q6_K": (8, 8)}


@pytest.fixture(scope="module")
def native():
    from ember.kernels.quant_matmul import native_module

    return native_module()


@pytest.fixture(scope="module")
def layout(native):
    return read_layout(native)


def test_python_takes_its_type_ids_from_the_extension(layout) -> None:
    from ember.kernels.quant_matmul import KERNEL_LAYOUT, QTYPE_IDS

    assert KERNEL_LAYOUT == layout
    assert QTYPE_IDS == {name: qtype.id for name, qtype in layout.qtypes.items()}
    assert sorted(QTYPE_IDS.values()) == list(range(len(QTYPE_IDS)))
    assert all(kernels.supports(name) for name in QTYPE_IDS)


def test_every_kernel_type_has_python_block_shapes_that_agree(layout) -> None:
    assert set(layout.qtypes) == set(BLOCK_SHAPES)
    assert layout.block_values == ACTIVATION_BLOCK
    for name, qtype in layout.qtypes.items():
        shape = (qtype.block_values, qtype.block_bytes)
        assert shape == BLOCK_SHAPES[name], name
        fmt = block_format(name)  # the loaders' decoders (models/quant)
        assert shape == (fmt.block_size, fmt.type_size), name
        assert shape == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]], name  # upstream's table
    assert layout_mismatches(layout) == []


def test_the_extension_accepts_exactly_the_ids_it_lists(native, layout) -> None:
    for qtype in layout.qtypes.values():
        assert native.repacked_nbytes(qtype.id, 1, qtype.block_values) > 0
    for unknown in (-1, len(layout.qtypes)):
        with pytest.raises(ValueError, match="unknown quantization type id"):
            native.repacked_nbytes(unknown, 1, 256)


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TILES))
def test_tile_sizes_agree_with_the_documented_layout_and_the_repacked_weights(native, layout, name) -> None:
    qtype = layout.qtypes[name]
    bits, scale_bytes_per_row = DOCUMENTED_TILES[name]
    rows = layout.rows_per_group
    assert rows == 8
    assert qtype.tile_bytes == rows * (layout.block_values * bits // 8 + scale_bytes_per_row)
    for n in (1, rows, 45):  # one partial group, one full group, several groups with a partial one
        k = 2 * qtype.block_values
        expected = -(-n // rows) * (k // layout.block_values) * qtype.tile_bytes
        assert native.repacked_nbytes(qtype.id, n, k) == expected
        prepared = kernels.prepare_weight(random_blocks(name, n, k, seed=n), name, n, k)
        assert prepared.interleaved and prepared.data.dtype == torch.uint8 and prepared.nbytes == expected


def test_a_disagreeing_build_stops_the_import(native, layout) -> None:
    q4_1 = layout.qtypes["Q4_1"]
    wrong_bytes = dataclasses.replace(
        layout, qtypes={**layout.qtypes, "Q4_1": dataclasses.replace(q4_1, block_bytes=18)}
    )
    assert layout_mismatches(wrong_bytes) == [
        "Q4_1: the kernels read blocks of 32 values in 18 bytes, Python checks 32 values in 20 bytes"
    ]
    same_ids = dataclasses.replace(
        layout, qtypes={**layout.qtypes, "Q4_1": dataclasses.replace(q4_1, id=layout.qtypes["Q4_0"].id)}
    )
    assert any("not distinct" in problem for problem in layout_mismatches(same_ids))
    missing = dataclasses.replace(layout, qtypes={k: v for k, v in layout.qtypes.items() if k != "Q6_K"})
    assert any(problem.startswith("types:") for problem in layout_mismatches(missing))

    class Stale:  # a module built before layout() existed
        __name__ = "ember.kernels._quant_kernels"

    with pytest.raises(KernelLayoutError, match="rebuild"):
        checked_layout(Stale())  # type: ignore[arg-type]
    assert checked_layout(native) == layout
