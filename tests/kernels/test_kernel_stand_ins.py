"""Block formats the int8 kernels lack run on a Q8_0 stand-in made at load: Q5_0 exactly, the rest requantized.
Each checked against the fp32 reference of the file's own blocks, on awkward shapes."""

from __future__ import annotations

import pytest
import torch
from random_blocks import random_blocks

from ember.models.quant.kernel_stand_ins import kernel_stand_in
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight

pytestmark = pytest.mark.usefixtures("native_kernels")


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize(("qtype", "k"), [("Q5_0", 800), ("Q5_0", 96), ("Q5_1", 800), ("Q5_1", 1536)])
def test_q5_legacy_types_run_on_the_kernel(qtype: str, k: int) -> None:
    n = 45  # not a multiple of the 8-row tile
    original = PackedWeight(qtype, (n, k), random_blocks(qtype, n, k, seed=k))
    stand_in = kernel_stand_in(original)
    if qtype == "Q5_0":  # d * (q - 16) is a Q8_0 value: nothing changes
        assert stand_in.exact and torch.equal(stand_in.weight.dequantize(), original.dequantize())
    _check_layer(original, k)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q5_K"])
@pytest.mark.parametrize("k", [256, 1536])
def test_k_types_run_on_the_kernel(qtype: str, k: int) -> None:
    _check_layer(PackedWeight(qtype, (21, k), random_blocks(qtype, 21, k, seed=k + 7)), k)


def _check_layer(original: PackedWeight, k: int) -> None:
    reference = original.dequantize()  # fp32 [n, k] of the file's blocks
    layer = PackedLinear(original)
    assert layer.use_fast_kernel()
    assert (layer.converted_from, layer.qtype) == (original.qtype, "Q8_0")
    stand_in = layer.weight.dequantize()
    # Requantizing adds at most half a Q8_0 step (amax / 254 of each 32 values) plus the fp16 rounding of the
    # step, d = amax / 127, times up to 127 steps (relative 2^-11, or 2^-25 absolute where d is subnormal).
    blocks, blocks_ref = stand_in.reshape(-1, 32), reference.reshape(-1, 32)
    amax = blocks_ref.abs().amax(dim=1, keepdim=True)
    bound = amax / 254 + 127 * torch.clamp(amax / 127 * 2**-11, min=2**-25) + 1e-9
    assert bool(((blocks - blocks_ref).abs() <= bound).all())
    for m in (1, 3, 17):
        x = torch.randn(m, k)
        y = layer(x)
        # the error of the int8 activations (~1/254 per value) plus the stand-in's
        assert relative_error(y, x @ reference.t()) < 3e-2
