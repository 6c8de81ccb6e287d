"""Served LoRA adapters as the fused decode step reads them (ember.kernels.decode_lora), so a batch with adapter
rows stays on the native path: each adapter's tables are built once, the per-step arguments (which adapter each
row runs) from the batch's LoraContext.

A table holds A as PEFT stores it ([rank, in], fp32) and (scaling * B)^T in blocks of 8 columns
([out / 8, rank, 8]): one 8-column pass of the expand reads rank x 8 contiguous values, and the scaling
costs nothing per step."""

from __future__ import annotations

import weakref

import torch

from ember.kernels.decode_lora import LORA_MODULES, LORA_WEIGHTS_FIELDS, MAX_LORA_RANK, StepLora
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import LoraContext


def _blocks_of_8(bs_t: torch.Tensor) -> torch.Tensor:
    """[rank, out] -> [out / 8, rank, 8]: what one 8-column pass of the expand reads, contiguous. Every projection
    the fused step runs has out a multiple of 8 (the native step checks its block sizes)."""
    rank, out = bs_t.shape
    return bs_t.reshape(rank, out // 8, 8).permute(1, 0, 2).contiguous()


class _AdapterTable:
    """One adapter's int64 table [num_layers, 7, 3] and the fp32 tensors its addresses point into."""

    def __init__(self, adapter: LoraAdapter, num_layers: int) -> None:
        self.table = torch.zeros(num_layers, len(LORA_MODULES), LORA_WEIGHTS_FIELDS, dtype=torch.int64)
        self.keep_alive: list[torch.Tensor] = []
        for (layer, module), (a, b) in adapter.weights.items():
            a_native = a.detach().to(torch.float32).contiguous()  # [rank, in]
            bs_t = _blocks_of_8((b.detach().to(torch.float32) * adapter.scaling).t())  # [out / 8, rank, 8]
            self.keep_alive += [a_native, bs_t]
            self.table[layer, LORA_MODULES.index(module)] = torch.tensor(
                [a_native.data_ptr(), bs_t.data_ptr(), a_native.shape[0]]
            )


class FusedLoraTables:
    """The native tables of every adapter a fused step has seen, dropped when the adapter object is."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        self._tables: dict[int, _AdapterTable] = {}  # by id(adapter); a finalizer removes the entry

    @staticmethod
    def accepts(lora: LoraContext) -> bool:
        """Whether the native step can run these adapters: served (frozen) fp32 CPU weights without dropout,
        of a rank the step's scratch allows. Training contexts and anything else take the module path."""
        for group in lora.groups:
            adapter = group.serving
            if adapter is None or group.dropout > 0 or not 1 <= adapter.rank <= MAX_LORA_RANK:
                return False
            if any(
                a.device.type != "cpu" or b.device.type != "cpu" or not a.dtype.is_floating_point
                for a, b in adapter.weights.values()
            ):
                return False
        return True

    def step_lora(self, lora: LoraContext, m: int) -> StepLora:
        """The native arguments of one step of m rows: group i of the context is adapter i."""
        row_adapter = torch.full((m,), -1, dtype=torch.int64)  # [m], -1: base-model row
        addresses = []
        for index, group in enumerate(lora.groups):
            assert group.serving is not None, "accepts() admits served adapters only"
            addresses.append(self._table(group.serving).table.data_ptr())
            if group.rows is None:
                row_adapter[:] = index
            else:
                row_adapter[group.rows] = index
        return StepLora(torch.tensor(addresses, dtype=torch.int64), row_adapter)

    def _table(self, adapter: LoraAdapter) -> _AdapterTable:
        key = id(adapter)
        table = self._tables.get(key)
        if table is None:
            table = _AdapterTable(adapter, self.num_layers)
            self._tables[key] = table
            # Runs when the adapter is collected, before its id can be reused by another object.
            weakref.finalize(adapter, self._tables.pop, key, None)
        return table
