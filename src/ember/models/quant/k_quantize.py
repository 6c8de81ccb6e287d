"""fp32 -> Q4_K super-blocks, with llama.cpp's per-sub-block scale/min search (make_qkx2_quants).

A Q4_K super-block is 256 values in 8 sub-blocks of 32; sub-block j decodes as d*sc[j]*q - dmin*m[j] with
4-bit q and 6-bit sc, m. Rather than mapping each sub-block's [min, max] onto [0, 15], the search tries 21
slightly different grids and, for each, solves the weighted least-squares scale and offset for the integers
it produced, keeping the grid with the smallest weighted squared error (weights |x| + rms(x): large values
matter more). That search is what makes Q4_K clearly more accurate than Q4_0 at the same 4 bits per value.
The steps mirror ggml's quantize_row_q4_K_ref (no importance matrix), vectorized over all sub-blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

QK_K = 256  # values per super-block
SUB = 32  # values per sub-block
N_SUB = QK_K // SUB
NMAX = 15  # largest 4-bit quant
SCALE_MAX = 63  # largest 6-bit sub-block scale or min
# The grids tried: iscale = (RMIN + RDELTA * step + NMAX) / (max - min) for step in 0..NSTEP.
RMIN, RDELTA, NSTEP = -1.0, 0.1, 20


def _grid_numerators() -> list[float]:
    """RMIN + RDELTA*step + NMAX evaluated in float32, as the C code does, for step 0..NSTEP."""
    f32 = np.float32
    return [float(f32(RMIN) + f32(RDELTA) * f32(step) + f32(NMAX)) for step in range(NSTEP + 1)]


@dataclass
class _GridSums:
    """Weighted sums of one grid's quants q over each sub-block, [B, 1] each: what the least-squares fit needs."""

    q: torch.Tensor  # sum w*q
    q2: torch.Tensor  # sum w*q*q
    xq: torch.Tensor  # sum w*x*q


class _SubBlocks:
    """Sub-blocks x [B, 32] with their weights, the sums that do not depend on the grid, and scratch space
    holding the quants of the grid tried last."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.w = ((x * x).sum(dim=-1, keepdim=True) / SUB).sqrt() + x.abs()  # [B, 32]
        self.sum_w = self.w.sum(dim=-1, keepdim=True)  # [B, 1]
        self.sum_x = (self.w * x).sum(dim=-1, keepdim=True)
        self._q = torch.empty_like(x)
        self._scratch = torch.empty_like(x)

    def quantize_on_grid(self, origin: torch.Tensor, iscale: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """q = round(iscale * (x - origin)) clamped to 0..15 (torch.round ties to even, as ggml's nearest_int)."""
        torch.sub(self.x, origin, out=out)
        return out.mul_(iscale).round_().clamp_(0, NMAX)

    def try_grid(self, origin: torch.Tensor, iscale: torch.Tensor) -> _GridSums:
        """Quantizes on the grid (kept for `error`) and returns its sums."""
        q = self.quantize_on_grid(origin, iscale, self._q)
        wq = torch.mul(self.w, q, out=self._scratch)
        sum_q = wq.sum(dim=-1, keepdim=True)
        sum_xq = torch.linalg.vecdot(wq, self.x).unsqueeze(-1)
        sum_q2 = wq.mul_(q).sum(dim=-1, keepdim=True)
        return _GridSums(sum_q, sum_q2, sum_xq)

    def error(self, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """sum w*(scale*q + offset - x)^2 over the last grid's quants, [B, 1], with ggml's float32 operations:
        a candidate that reproduces its sub-block exactly scores exactly 0, so exact ties go to the first."""
        diff = torch.mul(self._q, scale, out=self._scratch).add_(offset).sub_(self.x)
        return diff.mul_(diff).mul_(self.w).sum(dim=-1, keepdim=True)


def search_scales_and_mins(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 sub-blocks [B, 32] -> (scale [B, 1] >= 0, neg_min [B, 1] >= 0, q [B, 32] in 0..15) with
    x ~= scale * q - neg_min, chosen by make_qkx2_quants(32, 15, rmin=-1, rdelta=0.1, nstep=20, squared error).

    As in ggml, each grid starts from the best offset found so far (not from min(x)), so the steps run in
    order; they are vectorized across sub-blocks instead. A grid whose fit is degenerate (det <= 0) yields
    inf/NaN candidates, which the `err < best` test never accepts."""
    blocks = _SubBlocks(x)
    lo = x.amin(dim=-1, keepdim=True).clamp_(max=0.0)  # [B, 1]; the offset never goes above zero
    hi = x.amax(dim=-1, keepdim=True)
    flat = hi == lo  # all values equal (and <= 0): nothing to search
    hi = torch.where(flat, lo + 1, hi)  # keeps hi - origin > 0; a flat block never leaves origin lo
    zeros = torch.zeros_like(lo)

    # The best candidate so far, [5, B, 1]: error, scale, offset, and the grid (iscale, origin) of its quants.
    iscale = NMAX / (hi - lo)
    scale = 1.0 / iscale  # candidate 0: the plain min/max grid, its own scale and offset (no fit)
    blocks.try_grid(lo, iscale)
    best = torch.stack((blocks.error(scale, lo), scale, lo, iscale, lo))
    for numerator in _grid_numerators():
        origin = best[2]  # the best offset so far
        iscale = numerator / (hi - origin)  # [B, 1]
        sums = blocks.try_grid(origin, iscale)
        det = blocks.sum_w * sums.q2 - sums.q * sums.q
        scale = (blocks.sum_w * sums.xq - blocks.sum_x * sums.q) / det
        offset = (sums.q2 * blocks.sum_x - sums.q * sums.xq) / det
        # A positive offset cannot be stored (mins are subtracted): refit the scale alone through zero.
        positive = offset > 0
        scale = torch.where(positive, sums.xq / sums.q2, scale)
        offset = torch.where(positive, zeros, offset)
        err = blocks.error(scale, offset)
        better = (det > 0) & (err < best[0])
        best = torch.where(better, torch.stack((err, scale, offset, iscale, origin)), best)

    _, scale, offset, iscale, origin = best
    q = blocks.quantize_on_grid(origin, iscale, torch.empty_like(x))
    q = torch.where(flat, torch.zeros_like(q), q)
    scale = torch.where(flat, zeros, scale)
    return scale, 0.0 - offset, q  # 0 - offset: +0 rather than -0 when the offset is 0


def _six_bit_codes(values: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """[n, 8] non-negative values -> uint8 codes round(63 * value / top) in 0..63 ([n, 1] top; 0 when top is 0)."""
    inv = torch.where(top > 0, SCALE_MAX / top, torch.zeros_like(top))  # 63/0 = inf is never picked
    return torch.round(inv * values).clamp_(0, SCALE_MAX).to(torch.uint8)


def _pack_scales(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins, uint8 [n, 8] each -> Q4_K's 12 bytes [n, 12]: bytes 0-3 / 4-7 hold
    scales / mins 0-3 with the top 2 bits of scales / mins 4-7 above them; bytes 8-11 the low nibbles of 4-7."""
    low_scales = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    low_mins = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    mixed = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return torch.cat((low_scales, low_mins, mixed), dim=-1)


def quantize_q4_k_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """fp32 [n, 256] -> uint8 [n, 144]: d:f16 | dmin:f16 | scales:12 bytes | 128 bytes of nibbles."""
    n = blocks.shape[0]
    x = blocks.reshape(n * N_SUB, SUB)  # [n*8, 32]
    scales, mins, q = search_scales_and_mins(x)
    scales, mins = scales.reshape(n, N_SUB), mins.reshape(n, N_SUB)  # [n, 8]
    max_scale = scales.amax(dim=-1, keepdim=True).clamp_(min=0.0)  # [n, 1]
    max_min = mins.amax(dim=-1, keepdim=True).clamp_(min=0.0)
    sc = _six_bit_codes(scales, max_scale)  # [n, 8]
    m = _six_bit_codes(mins, max_min)
    d16 = (max_scale / SCALE_MAX).to(torch.float16)  # [n, 1]
    dmin16 = (max_min / SCALE_MAX).to(torch.float16)

    # Requantize every value against the scales as stored (fp16 super-scales times 6-bit codes), so rounding
    # them does not bias the result; a sub-block whose stored scale is 0 keeps the search's quants.
    sub_d = (d16.float() * sc.float()).reshape(n * N_SUB, 1)  # [n*8, 1]
    sub_m = (dmin16.float() * m.float()).reshape(n * N_SUB, 1)
    has_scale = sub_d != 0
    requant = torch.round((x + sub_m) / torch.where(has_scale, sub_d, torch.ones_like(sub_d))).clamp_(0, NMAX)
    q = torch.where(has_scale, requant, q).to(torch.uint8)  # [n*8, 32]

    # Each 32 bytes of nibbles hold sub-block 2c in the low nibbles and sub-block 2c+1 in the high ones.
    pairs = q.reshape(n, N_SUB // 2, 2, SUB)
    nibbles = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, QK_K // 2)  # [n, 128]
    return torch.cat((d16.view(torch.uint8), dmin16.view(torch.uint8), _pack_scales(sc, m), nibbles), dim=-1)
