"""Raw GGUF blocks read back out of the kernels' interleaved tiles, byte for byte, for the formats whose tiles
keep every raw byte (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): a packed linear on the kernels then holds its weight once, as tiles,
and rebuilds the raw blocks only when something asks for them (the reference path, a LoRA trainer taking the
network over). Q4_K and Q6_K tiles hold fp32 products of the raw scales, so their raw blocks stay.

The layout (csrc/quant_kernels/quant_layout.h): tiles in row-group-major order, one per 8 rows x 32 values;
in a Q8_0 tile, 32-byte vector c holds bytes 4c..4c+3 of each row's int8 quants (4 bytes a row), then 8 fp16
d; in a Q4_0 / Q4_1 tile, vector v holds the row's raw nibble bytes 4v..4v+3 (low nibble value 4v+j, high
16+4v+j: exactly GGUF's qs byte order), then 8 fp16 d (and 8 fp16 m). A Q5_0 / Q5_1 tile has a 32-byte
fifth-bit plane between the nibbles and the fp16 fields: row i's byte j holds in bit v the fifth bit of value
4v+j and in bit 4+v that of value 16+4v+j, which are bits 4v+j and 16+4v+j of GGUF's u32 qh. Rows past n in the
last group are zero.
"""

from __future__ import annotations

import torch

_ROWS = 8  # rows a tile interleaves (kRowsPerGroup)
_VALUES = 32  # values of one row in a tile, and of one raw block of these formats
# qtype -> (bytes of the quants in a tile, fp16 fields per row after them: d, or d and m)
_TILED_FORMATS: dict[str, tuple[int, int]] = {
    "Q8_0": (256, 1),
    "Q4_0": (128, 1),
    "Q4_1": (128, 2),
    "Q5_0": (160, 1),
    "Q5_1": (160, 2),
}
_NIBBLE_BYTES = 128  # a 4- or 5-bit tile's nibble vectors; a 5-bit tile's fifth-bit plane follows them
INVERTIBLE_QTYPES = frozenset(_TILED_FORMATS)


def raw_blocks_from_tiles(tiles: torch.Tensor, qtype: str, n: int, k: int) -> torch.Tensor:
    """uint8 [n, row_bytes]: the very raw blocks `prepare_weight` was given for this weight of `qtype`."""
    if qtype not in _TILED_FORMATS:
        raise ValueError(f"{qtype} tiles do not keep the raw blocks (only {', '.join(_TILED_FORMATS)})")
    quant_bytes, fp16_fields = _TILED_FORMATS[qtype]
    groups, blocks = (n + _ROWS - 1) // _ROWS, k // _VALUES
    tile_bytes = quant_bytes + _ROWS * 2 * fp16_fields
    if tiles.dtype != torch.uint8 or tiles.numel() != groups * blocks * tile_bytes:
        raise ValueError(f"{qtype} tiles of a ({n}, {k}) weight need {groups * blocks * tile_bytes} bytes")
    t = tiles.reshape(groups, blocks, tile_bytes)
    five_bit = qtype in ("Q5_0", "Q5_1")
    qs_bytes = _NIBBLE_BYTES if five_bit else quant_bytes
    lane = qs_bytes // _ROWS // 4  # 4-byte vectors per row: 8 for int8 quants, 4 for nibble bytes
    quants = t[..., :qs_bytes].reshape(groups, blocks, lane, _ROWS, 4)  # [g, b, vector, row, byte]
    quants = quants.permute(0, 3, 1, 2, 4).reshape(groups, _ROWS, blocks, lane * 4)  # [g, row, b, qs]
    if five_bit:
        quants = torch.cat([_fifth_bits_as_qh(t[..., _NIBBLE_BYTES:quant_bytes]), quants], dim=-1)
    fields = [
        t[..., quant_bytes + f * 2 * _ROWS : quant_bytes + (f + 1) * 2 * _ROWS]
        .reshape(groups, blocks, _ROWS, 2)
        .permute(0, 2, 1, 3)  # [g, row, b, 2 bytes]
        for f in range(fp16_fields)
    ]
    raw = torch.cat([*fields, quants], dim=-1)  # [g, row, b, raw block]: fp16 d (, m), (qh,) then qs
    return raw.reshape(groups * _ROWS, -1)[:n].contiguous()


def _fifth_bits_as_qh(plane: torch.Tensor) -> torch.Tensor:
    """uint8 [g, row, b, 4]: GGUF's little-endian u32 qh from a tile's fifth-bit plane [g, b, 32]."""
    groups, blocks = plane.shape[0], plane.shape[1]
    by_row = plane.reshape(groups, blocks, _ROWS, 4).permute(0, 2, 1, 3)  # [g, row, b, byte j]
    bits = (by_row.unsqueeze(-1).to(torch.int64) >> torch.arange(8)) & 1  # [g, row, b, j, bit]
    # value 4v+j is bit v of byte j, value 16+4v+j bit 4+v: order each half by (v, j)
    low = bits[..., :4].transpose(-1, -2).reshape(groups, _ROWS, blocks, 16)
    high = bits[..., 4:].transpose(-1, -2).reshape(groups, _ROWS, blocks, 16)
    qh = (torch.cat([low, high], dim=-1) << torch.arange(32)).sum(dim=-1)  # [g, row, b]
    return ((qh.unsqueeze(-1) >> torch.tensor([0, 8, 16, 24])) & 0xFF).to(torch.uint8)
