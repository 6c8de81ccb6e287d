"""Block formats the int8 kernels lack run on a Q8_0 stand-in made at load: IQ4_NL exactly, the rest requantized.
Each checked against the fp32 reference of the file's own blocks, on awkward shapes. (Q5_0 and Q5_1 have kernels
of their own now: test_five_bit_kernels.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from random_blocks import random_blocks

from ember.models.quant.kernel_stand_ins import kernel_stand_in
from ember.models.quant.packed_linear import PackedLinear
from ember.models.quant.packed_weight import PackedWeight

pytestmark = pytest.mark.usefixtures("native_kernels")


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


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


# kvalues_iq4nl of ggml-common.h, and dequantize_row_iq4_nl / dequantize_row_iq4_xs of ggml-quants.c written out
# byte by byte: the oracle for ember's vectorized decode.
GGML_IQ4_LEVELS = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def ggml_iq4_decode(raw: bytes, qtype: str) -> list[float]:
    out: list[float] = []
    if qtype == "IQ4_NL":
        for block in range(len(raw) // 18):
            b = raw[18 * block : 18 * (block + 1)]
            d = float(np.frombuffer(b[:2], dtype=np.float16)[0])
            qs = b[2:]
            out += [d * GGML_IQ4_LEVELS[qs[j] & 0xF] for j in range(16)]
            out += [d * GGML_IQ4_LEVELS[qs[j] >> 4] for j in range(16)]
        return out
    for block in range(len(raw) // 136):
        b = raw[136 * block : 136 * (block + 1)]
        d = np.float32(np.frombuffer(b[:2], dtype=np.float16)[0])
        scales_h = b[2] | (b[3] << 8)
        scales_l = b[4:8]
        qs = b[8:]
        for ib in range(8):
            ls = ((scales_l[ib // 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4)
            dl = d * np.float32(ls - 32)  # fp32, as ggml
            sub = qs[16 * ib : 16 * (ib + 1)]
            out += [float(dl * np.float32(GGML_IQ4_LEVELS[sub[j] & 0xF])) for j in range(16)]
            out += [float(dl * np.float32(GGML_IQ4_LEVELS[sub[j] >> 4])) for j in range(16)]
    return out


@pytest.mark.parametrize(("qtype", "k"), [("IQ4_NL", 800), ("IQ4_NL", 96), ("IQ4_XS", 256), ("IQ4_XS", 1536)])
def test_iq4_types_decode_as_ggml_and_run_on_the_kernel(qtype: str, k: int) -> None:
    n = 21  # not a multiple of the 8-row tile
    original = PackedWeight(qtype, (n, k), random_blocks(qtype, n, k, seed=k + 11))
    expected = torch.tensor(ggml_iq4_decode(original.data.numpy().tobytes(), qtype)).reshape(n, k)
    assert torch.equal(original.dequantize(), expected)
    stand_in = kernel_stand_in(original)
    if qtype == "IQ4_NL":  # d * level is the Q8_0 value d * int8 level
        assert stand_in.exact and torch.equal(stand_in.weight.dequantize(), expected)
    else:  # the same levels; each 32 values' scale d * (ls - 32) rounded once to fp16
        scale = expected.reshape(-1, 32).abs().amax(dim=1, keepdim=True) / 127
        error = (stand_in.weight.dequantize() - expected).reshape(-1, 32).abs()
        assert not stand_in.exact and bool((error <= 127 * scale * 2**-11 + 1e-12).all())
    layer = PackedLinear(original)
    assert layer.use_fast_kernel() and (layer.converted_from, layer.qtype) == (qtype, "Q8_0")
    for m in (1, 9, 33):
        x = torch.randn(m, k)
        assert relative_error(layer(x), x @ expected.t()) < 3e-2
