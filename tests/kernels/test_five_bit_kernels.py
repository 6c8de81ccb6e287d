"""Q5_0 and Q5_1 on kernels of their own (the nibble tiles plus a fifth-bit plane, quant_layout.h) instead of a
Q8_0 stand-in: against the fp32 reference on awkward shapes, at the int16 limits of the AVX2 kernel, through a
packed linear, and in the start-up log's list of converted linears."""

from __future__ import annotations

import logging

import gguf
import numpy as np
import pytest
import torch
from fused_models import VARIANTS, build_models
from random_blocks import random_blocks

from ember import kernels
from ember.kernels import prepare_weight, quant_matmul_prepared
from ember.kernels.quant_matmul import KERNEL_LAYOUT
from ember.kernels.reference import reference_quant_matmul
from ember.models.quant.kernel_stand_ins import has_stand_in
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight

pytestmark = pytest.mark.usefixtures("native_kernels")

BACKENDS = list(kernels.supported_isas_here())
FIVE_BIT = ["Q5_0", "Q5_1"]


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def test_the_kernels_take_five_bit_blocks_at_their_own_size() -> None:
    layout = KERNEL_LAYOUT
    assert layout is not None
    for qtype, (raw, tile) in {"Q5_0": (22, 176), "Q5_1": (24, 192)}.items():
        entry = layout.qtypes[qtype]
        assert (entry.block_values, entry.block_bytes, entry.tile_bytes) == (32, raw, tile)
        # 8 rows x 32 values a tile: 5.5 and 6 bits a weight, as in the file (Q8_0, the old stand-in: 8.5)
        assert tile * 8 / 256 == raw * 8 / 32
        assert not has_stand_in(qtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", FIVE_BIT)
@pytest.mark.parametrize(("n", "k"), [(24, 32), (40, 800), (45, 96), (56, 896), (7, 1568)])
def test_five_bit_matmul_matches_the_fp32_reference(backend: str, qtype: str, n: int, k: int) -> None:
    """Odd row-group counts (3, 5, 7; 45 rows: 6 groups, the last one partial; 7 rows: one), K not a multiple of
    256 (800, 96, 896 as in Qwen2.5-0.5B, 1568), M across the 4- and 8-token register tiles."""
    blocks = random_blocks(qtype, n, k, seed=n * k)
    weight = prepare_weight(blocks, qtype, n, k)
    assert KERNEL_LAYOUT is not None
    assert weight.data.numel() == -(-n // 8) * (k // 32) * KERNEL_LAYOUT.qtypes[qtype].tile_bytes
    for m in (1, 3, 8, 17):
        x = torch.randn(m, k)
        y = quant_matmul_prepared(x, weight, num_threads=2, backend=backend)
        same_inputs = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=True)
        # The same int8 activations: only the float summation order differs.
        assert relative_error(y, same_inputs) < 1e-5
        torch.testing.assert_close(y, same_inputs, rtol=1e-4, atol=1e-5 * float(same_inputs.abs().max()))
        fp32 = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=False)
        assert relative_error(y, fp32) < 3e-2  # the activations' per-block rounding, ~1/254 a value


def _extreme_blocks(qtype: str, n: int, k: int) -> torch.Tensor:
    """Every quant 31 (nibbles 0xF, every fifth bit set), d = 1 (and m = 0): the largest products there are."""
    fmt = {"Q5_0": (22, 2), "Q5_1": (24, 4)}[qtype]
    size, qh_offset = fmt
    block = np.zeros(size, dtype=np.uint8)
    block[0:2] = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
    block[qh_offset : qh_offset + 4] = 0xFF
    block[qh_offset + 4 :] = 0xFF
    return torch.from_numpy(np.tile(block, (n, k // 32)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", FIVE_BIT)
def test_largest_quants_times_largest_activations_do_not_overflow(backend: str, qtype: str) -> None:
    """31 * 127 summed over a block is 125984: past int16, where AVX2's maddubs sums live (it widens to int32
    after every 4). Activations all equal quantize to 127 (or -127) exactly."""
    n, k = 24, 96
    blocks = _extreme_blocks(qtype, n, k)
    values = gguf.quants.dequantize(blocks.numpy(), gguf.GGMLQuantizationType[qtype])
    assert float(np.abs(values).max()) == (15.0 if qtype == "Q5_0" else 31.0)
    weight = prepare_weight(blocks, qtype, n, k)
    x = torch.tensor([[1.0] * k, [-1.0] * k, [0.5] * (k // 2) + [-2.0] * (k // 2)])
    y = quant_matmul_prepared(x, weight, num_threads=1, backend=backend)
    expected = reference_quant_matmul(x, blocks, qtype, n, k)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qtype", FIVE_BIT)
def test_a_five_bit_linear_runs_on_its_own_kernel(qtype: str) -> None:
    n, k = 45, 800
    original = PackedWeight(qtype, (n, k), random_blocks(qtype, n, k, seed=k))
    reference = original.dequantize()
    layer = PackedLinear(original)
    assert layer.use_fast_kernel()
    assert (layer.converted_from, layer.qtype) == (None, qtype)
    assert layer.prepared is not None and layer.prepared.qtype == qtype
    # the file's blocks, not a conversion: let go of once tiled, and rebuilt from the tiles byte for byte
    assert layer.weight_data is None and torch.equal(layer.weight.data, original.data)
    for m in (1, 3, 8, 17):
        x = torch.randn(m, k)
        assert relative_error(layer(x), x @ reference.t()) < 3e-2


def test_the_load_log_lists_only_the_formats_still_converted(caplog: pytest.LogCaptureFixture) -> None:
    variant = next(v for v in VARIANTS if v.name == "qwen2-stand-ins")
    with caplog.at_level(logging.INFO, logger="ember.models.loader"):
        kernel, _ = build_models(variant)
    converted = [r.getMessage() for r in caplog.records if "converted at load" in r.getMessage()]
    assert len(converted) == 1
    assert "Q5_0" not in converted[0] and "Q5_1" not in converted[0]
    assert "Q3_K as Q8_0" in converted[0]
    qtypes = {m.qtype for m in kernel.modules() if isinstance(m, PackedLinear)}
    assert {"Q5_0", "Q5_1"} <= qtypes
