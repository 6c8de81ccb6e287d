"""Weights in a GGML block format the int8 kernels lack (Q2_K, Q3_K, Q5_K, IQ4_NL, IQ4_XS), converted once at
load into Q8_0, which they have, so no linear of a common GGUF file is left on the slow path that decodes the
whole weight to fp32 for every matmul. (Q5_0 and Q5_1 were converted here too until they got kernels of their
own: the Q8_0 stand-in read 8.5 bits per weight instead of 5.5 / 6; docs/decisions.md, "Q5_0 and Q5_1 kernels".)

IQ4_NL converts exactly: d * LEVELS[q] is Q8_0 with the same d and int8 LEVELS[q]. IQ4_XS keeps its int8
levels and rounds each 32 values' scale d * (ls - 32) once to fp16 (at most 2^-11 of it). The others are decoded
to fp32 and quantized to Q8_0 again (llama.cpp's rounding): the added error is at most half a Q8_0 step,
amax / 254 of each 32 values, far below their own quantization step. The cost is memory and bandwidth: 8.5 bits
per weight instead of 2.6-5.5; kernels of their own would read fewer bytes.

Unquantized linears (F16 / BF16 / F32 tensors, held as fp32) of a model served packed become Q8_0 the same way
(`dense_stand_in`): measured 6-10x faster decode GEMMs for +0.55% matmul error; `--weight-format fp32` keeps them
exact (docs/decisions.md, F16 / BF16 weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ember.models.quant import iq4_blocks
from ember.models.quant.packed_weight import PackedWeight
from ember.models.quant.quantize import quantize_rows

STAND_IN = "Q8_0"
EXACT_STAND_INS = frozenset({"IQ4_NL"})
RESCALED_STAND_INS = frozenset({"IQ4_XS"})  # same int8 levels, the block scale rounded to fp16
REQUANTIZED_STAND_INS = frozenset({"Q2_K", "Q3_K", "Q5_K"})
_ROWS_PER_CHUNK = 256  # rows decoded to fp32 at a time: bounds the load-time memory of a big matrix


@dataclass(frozen=True)
class StandIn:
    """A weight ready for the kernels, and what it was in the file."""

    weight: PackedWeight
    original_qtype: str
    exact: bool


def has_stand_in(qtype: str) -> bool:
    return qtype in EXACT_STAND_INS or qtype in RESCALED_STAND_INS or qtype in REQUANTIZED_STAND_INS


def kernel_stand_in(weight: PackedWeight) -> StandIn:
    """`weight` as Q8_0 rows; ValueError for a format without a stand-in."""
    if weight.qtype in ("IQ4_NL", "IQ4_XS"):
        fmt = iq4_blocks.IQ4_NL if weight.qtype == "IQ4_NL" else iq4_blocks.IQ4_XS
        data = iq4_blocks.as_q8_0_blocks(weight.data.reshape(-1, fmt.type_size), weight.qtype)
        return StandIn(
            PackedWeight(STAND_IN, weight.shape, data.reshape(weight.out_features, -1)),
            weight.qtype,
            exact=weight.qtype in EXACT_STAND_INS,
        )
    if weight.qtype not in REQUANTIZED_STAND_INS:
        raise ValueError(f"no kernel stand-in for {weight.qtype}")
    rows = []
    for start in range(0, weight.out_features, _ROWS_PER_CHUNK):
        chunk = torch.arange(start, min(start + _ROWS_PER_CHUNK, weight.out_features))
        rows.append(quantize_rows(weight.dequantize_rows(chunk), STAND_IN))
    return StandIn(PackedWeight(STAND_IN, weight.shape, torch.cat(rows)), weight.qtype, exact=False)


def dense_stand_in(linear: nn.Linear) -> StandIn | None:
    """An unquantized fp32 CPU linear's weight as Q8_0 rows; None where Q8_0's 32-value blocks do not fit."""
    weight = linear.weight.detach()
    if weight.dtype != torch.float32 or weight.device.type != "cpu" or linear.in_features % 32 != 0:
        return None
    rows = [
        quantize_rows(weight[start : start + _ROWS_PER_CHUNK], STAND_IN)
        for start in range(0, linear.out_features, _ROWS_PER_CHUNK)
    ]
    return StandIn(PackedWeight(STAND_IN, tuple(weight.shape), torch.cat(rows)), "fp32", exact=False)
