"""The native quantized matmul against the fp32 reference, on fresh random inputs of awkward shapes."""

from __future__ import annotations

import pytest
import torch
from random_blocks import random_blocks

from ember import kernels
from ember.kernels import PreparedQuantWeight, prepare_weight, quant_matmul, quant_matmul_prepared
from ember.kernels.reference import reference_quant_matmul

pytestmark = pytest.mark.usefixtures("native_kernels")

# Every kernel family this CPU runs: the test ids name them, so the report says which ran here.
BACKENDS = list(kernels.supported_isas_here())
SIMD_BACKENDS = [isa for isa in BACKENDS if isa != "scalar"]
ROWS = [1, 3, 9, 17, 33, 64]  # M; past the 4-token (AVX2) and 8-token (AVX-512) register tiles
LEGACY_WIDTHS = [32, 96, 576, 1536, 800]  # K; 800 is not a multiple of 256
K_WIDTHS = [256, 512, 1536]


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


def check_against_references(
    y: torch.Tensor, x: torch.Tensor, blocks: torch.Tensor, qtype: str, n: int, k: int
) -> None:
    same_inputs = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=True)
    # Same int8 activations: only float summation order differs.
    assert relative_error(y, same_inputs) < 1e-5
    torch.testing.assert_close(y, same_inputs, rtol=1e-4, atol=1e-5 * float(same_inputs.abs().max()))
    # Against fp32 activations the difference is the per-block activation rounding, about 1/254 per value.
    fp32 = reference_quant_matmul(x, blocks, qtype, n, k, quantize_inputs=False)
    assert relative_error(y, fp32) < 3e-2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
@pytest.mark.parametrize("k", LEGACY_WIDTHS)
def test_legacy_block_types_match_reference(backend: str, qtype: str, k: int) -> None:
    n = 45  # not a multiple of the 8-row tile
    blocks = random_blocks(qtype, n, k, seed=k)
    weight = prepare_weight(blocks, qtype, n, k)
    for m in ROWS:
        x = torch.randn(m, k)
        y = quant_matmul_prepared(x, weight, num_threads=2, backend=backend)
        assert y.shape == (m, n) and y.dtype == torch.float32
        check_against_references(y, x, blocks, qtype, n, k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("k", K_WIDTHS)
def test_k_types_match_reference(backend: str, qtype: str, k: int) -> None:
    n = 21
    blocks = random_blocks(qtype, n, k, seed=k + 1)
    weight = prepare_weight(blocks, qtype, n, k)
    for m in ROWS:
        x = torch.randn(m, k)
        y = quant_matmul_prepared(x, weight, num_threads=2, backend=backend)
        check_against_references(y, x, blocks, qtype, n, k)


@pytest.mark.parametrize("backend", SIMD_BACKENDS or ["no-simd"])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "Q5_0", "Q5_1"])
def test_every_kernel_family_returns_the_scalar_bits(backend: str, qtype: str) -> None:
    """Each family takes the same float steps in the same order (integer dots are exact), so a model answers the
    same on every CPU: AVX-512 VNNI once summed in another order, no less accurate, and flipped the default model's
    near-tie answer to "What is the capital of France?" (docs/decisions.md). Odd row-group counts (9, 3, 1) leave
    one group to the AVX2 kernel inside the AVX-512 one; M crosses its 8-token tiles and AVX2's 4."""
    if not SIMD_BACKENDS:
        pytest.skip("no SIMD kernels on this CPU")
    k = 768 if qtype in ("Q4_K", "Q6_K") else 800
    for n, seed in ((70, 7), (21, 8), (5, 9)):
        weight = prepare_weight(random_blocks(qtype, n, k, seed=seed), qtype, n, k)
        for m in (1, 2, 3, 9, 33):
            # Activations shaped like a decoder's: mostly small, a few large channels.
            x = torch.randn(m, k) * torch.where(torch.rand(k) < 0.02, 8.0, 1.0)
            scalar = quant_matmul_prepared(x, weight, num_threads=1, backend="scalar")
            for threads in (1, 2):
                simd = quant_matmul_prepared(x, weight, num_threads=threads, backend=backend)
                assert torch.equal(simd, scalar), (
                    f"{backend} n={n} m={m}: {float((simd - scalar).abs().max())}"
                )


@pytest.mark.parametrize("n, m", [(300, 9), (8, 64), (5, 40)])  # split over row groups / over tokens
def test_thread_count_does_not_change_the_result(n: int, m: int) -> None:
    k = 96
    weight = prepare_weight(random_blocks("Q4_1", n, k, seed=n), "Q4_1", n, k)
    x = torch.randn(m, k)
    single = quant_matmul_prepared(x, weight, num_threads=1)
    for threads in (2, 3, 5):
        # Every output is summed by one thread in the same order, whatever the split: bitwise equal.
        assert torch.equal(quant_matmul_prepared(x, weight, num_threads=threads), single)


def test_raw_block_entry_point_and_out_buffer() -> None:
    n, k = 19, 64
    blocks = random_blocks("Q4_0", n, k, seed=3)
    x = torch.randn(4, k)
    direct = quant_matmul(x, blocks, "Q4_0", n, k)
    out = torch.full((4, n), float("nan"))
    returned = quant_matmul_prepared(x, prepare_weight(blocks, "Q4_0", n, k), out=out)
    assert returned is out
    assert torch.equal(direct, out)
    check_against_references(direct, x, blocks, "Q4_0", n, k)


def test_non_contiguous_input_and_empty_batch() -> None:
    n, k = 16, 64
    weight = prepare_weight(random_blocks("Q8_0", n, k, seed=4), "Q8_0", n, k)
    wide = torch.randn(k, 6)
    x = wide.t()  # [6, k], not contiguous
    assert torch.equal(quant_matmul_prepared(x, weight), quant_matmul_prepared(x.contiguous(), weight))
    assert quant_matmul_prepared(torch.zeros(0, k), weight).shape == (0, n)


def test_zero_rows_and_zero_blocks_give_exact_zeros() -> None:
    n, k = 9, 64
    blocks = random_blocks("Q4_1", n, k, seed=5)
    x = torch.randn(2, k)
    x[:, :32] = 0.0  # an all-zero activation block has scale 0 and must contribute nothing
    y = quant_matmul_prepared(x, prepare_weight(blocks, "Q4_1", n, k))
    check_against_references(y, x, blocks, "Q4_1", n, k)
    assert torch.equal(
        quant_matmul_prepared(torch.zeros(3, k), prepare_weight(blocks, "Q4_1", n, k)), torch.zeros(3, n)
    )


def test_activation_rounding_ties_go_to_even() -> None:
    # With amax = 127 the scale is exactly 1, so x.5 values are exact ties: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    n, k = 8, 32
    blocks = random_blocks("Q8_0", n, k, seed=9)
    x = torch.tensor([[127.0] + [v + 0.5 for v in range(-15, 16)]])
    y = quant_matmul_prepared(x, prepare_weight(blocks, "Q8_0", n, k))
    same_inputs = reference_quant_matmul(x, blocks, "Q8_0", n, k)
    torch.testing.assert_close(y, same_inputs, rtol=1e-6, atol=1e-6 * float(same_inputs.abs().max()))


def test_reference_path_serves_weights_kept_raw() -> None:
    # What runs when the extension is not built: decode + fp32 matmul.
    n, k = 12, 64
    blocks = random_blocks("Q4_1", n, k, seed=6)
    raw = PreparedQuantWeight("Q4_1", n, k, blocks, interleaved=False)
    x = torch.randn(3, k)
    expected = reference_quant_matmul(x, blocks, "Q4_1", n, k, quantize_inputs=False)
    torch.testing.assert_close(quant_matmul_prepared(x, raw), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="native kernels"):
        quant_matmul_prepared(x, raw, backend="scalar")


def test_invalid_inputs_raise_value_errors() -> None:
    n, k = 8, 64
    blocks = random_blocks("Q4_1", n, k, seed=8)
    weight = prepare_weight(blocks, "Q4_1", n, k)
    with pytest.raises(ValueError, match="supports"):
        prepare_weight(blocks, "Q5_K", n, k)
    with pytest.raises(ValueError, match="multiple of 32"):
        prepare_weight(blocks, "Q4_1", n, 48)
    with pytest.raises(ValueError, match="uint8 blocks"):
        prepare_weight(blocks[:, :-1], "Q4_1", n, k)
    with pytest.raises(ValueError, match="float32"):
        quant_matmul_prepared(torch.randn(2, k, dtype=torch.float64), weight)
    with pytest.raises(ValueError, match=r"\[M, 64\]"):
        quant_matmul_prepared(torch.randn(2, 32), weight)
    with pytest.raises(ValueError, match="backend"):
        quant_matmul_prepared(torch.randn(2, k), weight, backend="avx512")
    with pytest.raises(ValueError, match="num_threads"):
        quant_matmul_prepared(torch.randn(2, k), weight, num_threads=0)
    with pytest.raises(ValueError, match="out must be"):
        quant_matmul_prepared(torch.randn(2, k), weight, out=torch.empty(3, n))
    assert kernels.supports("Q4_1") and kernels.supports("Q5_0") and not kernels.supports("Q5_K")
