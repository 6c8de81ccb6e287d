"""LoRA adapters inside the fused decode step (csrc/quant_kernels/decode_lora.h): the table layout of one
adapter's weights and the per-step arguments (which adapter each row runs).

An adapter table is an int64 tensor [num_layers, 7, 3] of (A address, (scaling * B)^T address, rank) per layer
and target module, zeros where the adapter leaves a module alone: A fp32 [rank, in], (scaling * B)^T fp32 in blocks
of 8 columns [out / 8, rank, 8]. The tensors behind the addresses must outlive the table. Building tables from LoraAdapters is ember.models.fused_decode_lora's job."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The column order of an adapter table: LoraModule in decode_lora.h (Hugging Face's module names).
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_WEIGHTS_FIELDS = 3  # a, bs_t, rank
MAX_LORA_RANK = 256  # kMaxLoraRank: bounds the step's scratch


@dataclass(frozen=True)
class StepLora:
    """The adapters of one fused step: adapter i's table is at tables[i]; row t runs row_adapter[t] (-1: base)."""

    tables: torch.Tensor  # [num_adapters] int64 addresses of adapter tables
    row_adapter: torch.Tensor  # [m] int64


def native_args(lora: StepLora, m: int) -> tuple[int, int, int]:
    """(num_adapters, tables address, row adapters address) for the native call, after the shape checks the
    native side cannot make (it checks every index and table entry itself)."""
    tables, rows = lora.tables, lora.row_adapter
    if tables.dtype != torch.int64 or tables.dim() != 1 or not tables.is_contiguous() or tables.numel() == 0:
        raise ValueError("LoRA tables must be a non-empty contiguous int64 [num_adapters] tensor")
    if rows.dtype != torch.int64 or tuple(rows.shape) != (m,) or not rows.is_contiguous():
        raise ValueError(f"LoRA row_adapter must be a contiguous int64 [{m}] tensor")
    return tables.numel(), tables.data_ptr(), rows.data_ptr()
