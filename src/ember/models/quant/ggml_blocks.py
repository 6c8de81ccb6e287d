"""The GGML tensor types ember decodes, by their GGUF names."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ember.models.quant import float_blocks, iq4_blocks, k_blocks, legacy_blocks
from ember.models.quant.block_format import BlockFormat

BLOCK_FORMATS: Mapping[str, BlockFormat] = MappingProxyType(
    {
        fmt.name: fmt
        for fmt in (
            float_blocks.F32,
            float_blocks.F16,
            float_blocks.BF16,
            legacy_blocks.Q8_0,
            legacy_blocks.Q4_0,
            legacy_blocks.Q4_1,
            legacy_blocks.Q5_0,
            legacy_blocks.Q5_1,
            k_blocks.Q2_K,
            k_blocks.Q3_K,
            k_blocks.Q4_K,
            k_blocks.Q5_K,
            k_blocks.Q6_K,
            iq4_blocks.IQ4_NL,
            iq4_blocks.IQ4_XS,
        )
    }
)

# Types kept in their block form by `load_gguf(keep_packed=True)`; the float types are widened to fp32.
PACKED_QTYPES: frozenset[str] = frozenset(
    {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"}
)


def block_format(qtype: str) -> BlockFormat:
    """The format named `qtype` ("Q4_1", "F16", ...); ValueError naming the supported ones otherwise."""
    try:
        return BLOCK_FORMATS[qtype]
    except KeyError:
        raise ValueError(
            f"unsupported GGML tensor type {qtype!r}; supported: {', '.join(BLOCK_FORMATS)}"
        ) from None
