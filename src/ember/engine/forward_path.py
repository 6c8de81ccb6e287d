"""Which forward runs a batch, chosen by the model runner in plain sight: the native fused decode step
(models/fused_decode.py) when the model and the batch allow it, else the module-by-module DecoderModel.forward.
Each step reports the path it took, and the engine counts them (EngineStats)."""

from __future__ import annotations

import enum

import torch

from ember.lora.layers import LoraContext
from ember.models.attention_metadata import AttentionMetadata
from ember.models.fused_decode import FusedDecodeStack
from ember.models.llama import DecoderModel


class ForwardPath(enum.Enum):
    # the whole stack in one native call: decodes (their LoRA rows too), packed weights on the kernels
    FUSED = "fused"
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

    def path_for(
        self,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None,
    ) -> ForwardPath:
        """Fused for a decode-only batch on an fp32 CPU cache (FusedDecodeStack.accepts), its adapter rows
        included when they are served adapters (accepts_lora)."""
        if (
            self.fused is not None
            and self.fused.accepts(attn, kv_caches)
            and (lora is None or self.fused.accepts_lora(lora))
        ):
            return ForwardPath.FUSED
        return ForwardPath.MODULES

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None = None,
    ) -> tuple[torch.Tensor, ForwardPath]:
        """hidden [T, H] of the batch, and the path that computed it."""
        path = self.path_for(attn, kv_caches, lora)
        if path is ForwardPath.FUSED:
            assert self.fused is not None
            return self.fused.forward(input_ids, positions, attn, kv_caches, lora), path
        if lora is None:
            return self.network(input_ids, positions, attn, kv_caches), path
        return self.network(input_ids, positions, attn, kv_caches, lora=lora), path
