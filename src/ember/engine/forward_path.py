"""Which forward runs a batch, chosen by the model runner in plain sight: the native fused decode step
(models/fused_decode.py) when the model and the batch allow it, DecoderModel.forward when they do not, or both in
one step (split) when only some of the batch's sequences are the fused step's. Each step reports the path it took,
and the engine counts them (EngineStats)."""

from __future__ import annotations

import enum

import torch

from ember.engine.batch_split import BatchPart, order, split_batch
from ember.lora.layers import LoraContext
from ember.models.attention_metadata import AttentionMetadata
from ember.models.fused_decode import FusedDecodeStack, takes_run
from ember.models.llama import DecoderModel


class ForwardPath(enum.Enum):
    # the whole stack in one native call: decodes, verification runs and short-context prefill chunks (their
    # LoRA rows too), packed weights on the kernels
    FUSED = "fused"
    # one step, two forwards: the fused step's sequences in the native call, the long-context prefill chunks on
    # the modules, the hidden rows put back in batch order
    SPLIT = "split"
    MODULES = (
        "modules"  # DecoderModel.forward: every other batch, and the reference the fused step is tested on
    )


def fused_step_serves(network: torch.nn.Module, fused_decode: bool = True) -> bool:
    """Whether the native fused decode step would run this network's decodes (NetworkForward's own rule)."""
    return fused_decode and isinstance(network, DecoderModel) and FusedDecodeStack.build(network) is not None


class NetworkForward:
    """The network's two entry points and the rule between them."""

    def __init__(self, network: torch.nn.Module, fused_decode: bool = True) -> None:
        self.network = network
        # Built once, from the loaded weights: None when fused_decode is off, the network is not a
        # DecoderModel, or some of its weights are not on the int8 kernels.
        self.fused: FusedDecodeStack | None = None
        if fused_decode and isinstance(network, DecoderModel):
            self.fused = FusedDecodeStack.build(network)

    def fused_sequences(
        self,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None,
    ) -> list[bool]:
        """For each sequence of the batch, whether the fused step runs it (all False when it runs none: no fused
        stack, a cache it cannot read, adapters it cannot serve)."""
        if (
            self.fused is None
            or not self.fused.accepts_cache(attn, kv_caches)
            or not (lora is None or self.fused.accepts_lora(lora))
        ):
            return [False] * attn.num_seqs
        return [takes_run(q, c) for q, c in zip(attn.query_lens, attn.context_lens, strict=True)]

    def path_for(
        self,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None,
    ) -> ForwardPath:
        """Fused when the fused step takes every sequence (FusedDecodeStack.accepts, accepts_lora), split when
        it takes some, else the modules."""
        fused = self.fused_sequences(attn, kv_caches, lora)
        if all(fused):
            return ForwardPath.FUSED
        return ForwardPath.SPLIT if any(fused) else ForwardPath.MODULES

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None = None,
    ) -> tuple[torch.Tensor, ForwardPath]:
        """hidden [T, H] of the batch, and the path that computed it."""
        fused = self.fused_sequences(attn, kv_caches, lora)
        if all(fused):
            assert self.fused is not None
            return self.fused.forward(input_ids, positions, attn, kv_caches, lora), ForwardPath.FUSED
        if any(fused):
            parts = split_batch(input_ids, positions, attn, lora, fused)
            ordered = order(*parts)
            if ordered is not None:
                return self._run_split(ordered, parts[0], len(input_ids), kv_caches), ForwardPath.SPLIT
        return self._modules(input_ids, positions, attn, kv_caches, lora), ForwardPath.MODULES

    def _run_split(
        self,
        ordered: tuple[BatchPart, BatchPart],
        fused_part: BatchPart,
        num_rows: int,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Both parts in the given order; their hidden rows [t_i, H] scattered back into batch order [T, H]."""
        assert self.fused is not None
        hidden: torch.Tensor | None = None
        for part in ordered:
            if part is fused_part:
                out = self.fused.forward(part.input_ids, part.positions, part.attn, kv_caches, part.lora)
            else:
                out = self._modules(part.input_ids, part.positions, part.attn, kv_caches, part.lora)
            if hidden is None:
                hidden = out.new_empty(num_rows, out.shape[1])  # [T, H]
            hidden[part.rows] = out
        assert hidden is not None
        return hidden

    def _modules(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None,
    ) -> torch.Tensor:
        if lora is None:
            return self.network(input_ids, positions, attn, kv_caches)
        return self.network(input_ids, positions, attn, kv_caches, lora=lora)
