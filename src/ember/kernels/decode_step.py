"""The fused decode step of the native extension: every layer of a decoder stack for a batch of one-token
decodes in one call (norms, int8 block matmuls, rope, paged attention, SiLU gate, residuals).

The model side (ember.models.fused_decode) describes its weights once as a `layer table`, an int64 tensor
[num_layers, LAYER_TABLE_FIELDS] of pointers and block-format ids; this module checks and forwards the per-step
tensors. The tensors behind every pointer must outlive the table."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.kernels.decode_lora import StepLora, native_args
from ember.kernels.quant_matmul import ISA_IDS, QTYPE_IDS, native_module, simd_level

MAX_PROJECTION_PARTS = 3
# input_norm, post_norm, q_norm, k_norm, qkv_bias, o_bias, then 4 projections of (num_parts, 3 x (qtype, data, n)).
LAYER_TABLE_FIELDS = 6 + 4 * (1 + 3 * MAX_PROJECTION_PARTS)


def available() -> bool:
    """True when the extension is built with its AVX2 kernels and this CPU runs them."""
    if simd_level() != "avx2":
        return False
    return int(native_module().decode_table_fields()) == LAYER_TABLE_FIELDS


@dataclass(frozen=True)
class DecodeDims:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    block_size: int
    eps: float
    scale: float  # attention softmax scale

    def as_args(self) -> tuple[int, int, int, int, int, int, int, float, float]:
        # Spelled out: dataclasses.astuple deep-copies field by field, ~100 us a step.
        return (
            self.num_layers,
            self.hidden,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.intermediate,
            self.block_size,
            self.eps,
            self.scale,
        )


def projection_fields(parts: list[tuple[str, torch.Tensor, int]]) -> list[int]:
    """(qtype, interleaved tiles, out rows) of each part -> the 1 + 3 * MAX_PROJECTION_PARTS table fields."""
    if not 1 <= len(parts) <= MAX_PROJECTION_PARTS:
        raise ValueError(f"a fused projection has 1 to {MAX_PROJECTION_PARTS} parts, got {len(parts)}")
    fields = [len(parts)]
    for qtype, data, n in parts:
        fields += [QTYPE_IDS[qtype], data.data_ptr(), n]
    return fields + [0, 0, 0] * (MAX_PROJECTION_PARTS - len(parts))


def _check_int64(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tensor.dtype != torch.int64 or tuple(tensor.shape) != shape or not tensor.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous int64 tensor of shape {shape}, got {tensor.dtype} "
            f"{tuple(tensor.shape)}"
        )


def decode_step(
    layer_table: torch.Tensor,
    dims: DecodeDims,
    x: torch.Tensor,
    final_norm: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    kv_table: torch.Tensor,
    num_cache_blocks: int,
    num_threads: int,
    kv_dtype_id: int = 0,
    isa: str = "avx2",
    lora: StepLora | None = None,
) -> torch.Tensor:
    """x [M, hidden] fp32 embeddings of M one-token decodes (consumed: it holds the residual stream after the call)
    -> final-normed hidden states [M, hidden]. New keys and values are written to their `slots`; token t attends
    over context_lens[t] positions of its block_tables row. kv_table [num_layers, 2] holds each layer's key and
    value cache pointers ([num_cache_blocks, block_size, kv_heads, row] rows of the format `kv_dtype_id` names:
    KVCacheFormat.native_id, fp32 by default). `isa` names the kernel family of the projections' matmuls: "avx2" or
    "avx512_vnni" (kernel_isa.py). With `lora`, each row's adapter adds its low-rank products after every
    projection it targets (ember.kernels.decode_lora)."""
    if isa not in ("avx2", "avx512_vnni") or isa not in ISA_IDS:
        raise ValueError(f"the fused decode step runs on avx2 or avx512_vnni where supported, got {isa!r}")
    m = x.shape[0]
    if x.dtype != torch.float32 or tuple(x.shape) != (m, dims.hidden) or not x.is_contiguous() or m == 0:
        raise ValueError(
            f"x must be a contiguous float32 [M > 0, {dims.hidden}] tensor, got {tuple(x.shape)}"
        )
    for name, table in (("cos", cos), ("sin", sin)):
        if (
            table.dtype != torch.float32
            or tuple(table.shape) != (m, dims.head_dim)
            or not table.is_contiguous()
        ):
            raise ValueError(f"{name} must be a contiguous float32 [{m}, {dims.head_dim}] tensor")
    _check_int64("slots", slots, (m,))
    _check_int64("context_lens", context_lens, (m,))
    if block_tables.dim() != 2:
        raise ValueError("block_tables must be 2-D")
    _check_int64("block_tables", block_tables, (m, block_tables.shape[1]))
    _check_int64("kv_table", kv_table, (dims.num_layers, 2))
    _check_int64("layer_table", layer_table, (dims.num_layers, LAYER_TABLE_FIELDS))
    lora_args = None if lora is None else native_args(lora, m)
    out = torch.empty_like(x)
    native_module().decode_step(
        layer_table.data_ptr(),
        dims.as_args(),
        (
            m,
            x.data_ptr(),
            out.data_ptr(),
            final_norm.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            slots.data_ptr(),
            block_tables.data_ptr(),
            block_tables.shape[1],
            context_lens.data_ptr(),
            kv_table.data_ptr(),
            num_cache_blocks,
            kv_dtype_id,
        ),
        num_threads,
        ISA_IDS[isa],
        lora_args,
    )
    return out
