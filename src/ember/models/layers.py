"""The building blocks of a decoder layer: RMSNorm, token embedding, self-attention and the SiLU-gated MLP.

Modules are created with placeholder weights on the meta device (no memory, no random init) and receive their
real weights through `load`; DecoderModel.load_weights validates names and shapes before calling it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ember.models.attention import AttentionBackend
from ember.models.attention_metadata import AttentionMetadata
from ember.models.config import ModelConfig
from ember.models.linear import is_packed, make_linear
from ember.models.rotary import apply_rotary

if TYPE_CHECKING:
    from ember.lora.layers import LayerLora
    from ember.models.quant.packed_weight import PackedWeight

META = torch.device("meta")


def dense(weight: torch.Tensor | PackedWeight) -> torch.Tensor:
    """An fp32 tensor for weights that are always small (norms, biases), whatever form they arrived in."""
    return weight.dequantize() if is_packed(weight) else weight.float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, device: torch.device | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def load(self, weight: torch.Tensor | PackedWeight) -> None:
        self.weight = nn.Parameter(dense(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 as transformers computes them, so bf16 activations normalise the same way.
        dtype = x.dtype
        h = x.float()  # [..., dim]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class TokenEmbedding(nn.Module):
    """Row lookup in a dense [vocab, hidden] parameter, or in packed GGML blocks by dequantizing only those rows.

    Packed blocks live in the buffer `packed_data` (so `.to()` and `state_dict()` see them, as in PackedLinear);
    `packed` rebuilds the PackedWeight view over it."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(vocab_size, hidden_size, device=META))
        self.packed_qtype: str | None = None
        self.register_buffer("packed_data", None)
        self._packed_view: PackedWeight | None = None

    def load(self, weight: torch.Tensor | PackedWeight) -> None:
        if is_packed(weight):
            self.weight = None
            self.packed_qtype = weight.qtype
            self.packed_data = weight.data
        else:
            self.weight = nn.Parameter(weight)
            self.packed_qtype = None
            self.packed_data = None

    @property
    def packed(self) -> PackedWeight | None:
        if self.packed_qtype is None:
            return None
        from ember.models.quant.packed_weight import PackedWeight

        # Kept between steps; rebuilt when load() or .to() replaced the buffer.
        view = self._packed_view
        if view is None or view.data is not self.packed_data or view.qtype != self.packed_qtype:
            view = PackedWeight(self.packed_qtype, (self.vocab_size, self.hidden_size), self.packed_data)
            self._packed_view = view
        return view

    @property
    def source(self) -> torch.Tensor | PackedWeight:
        """What a tied lm_head multiplies with: the very same parameter, or a view over the same packed blocks."""
        packed = self.packed
        if packed is not None:
            return packed
        assert self.weight is not None
        return self.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is not None:
            if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size):
                raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
            return packed.dequantize_rows(input_ids)  # [T, H]
        return F.embedding(input_ids, self.weight)  # [T, H]


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) with gate and up fused into one projection."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.intermediate_size = intermediate_size
        self.gate_up_proj: nn.Module = nn.Linear(hidden_size, 2 * intermediate_size, bias=False, device=META)
        self.down_proj: nn.Module = nn.Linear(intermediate_size, hidden_size, bias=False, device=META)

    def load(
        self,
        gate: torch.Tensor | PackedWeight,
        up: torch.Tensor | PackedWeight,
        down: torch.Tensor | PackedWeight,
    ) -> None:
        self.gate_up_proj = make_linear([gate, up], None)
        self.down_proj = make_linear([down], None)

    def forward(self, x: torch.Tensor, lora: LayerLora | None = None) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [T, 2I]
        if lora is not None:
            gate_up = lora.apply(gate_up, x, ("gate_proj", "up_proj"), (self.intermediate_size,) * 2)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)  # [T, I] each
        h = F.silu(gate) * up  # [T, I]
        out = self.down_proj(h)  # [T, H]
        return out if lora is None else lora.apply(out, h, ("down_proj",), (out.shape[-1],))


class SelfAttention(nn.Module):
    """q|k|v in one projection, optional per-head q/k RMSNorm (Qwen3), rope, then the attention backend."""

    def __init__(self, config: ModelConfig, backend: AttentionBackend):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.head_dim**-0.5
        q_size = config.num_heads * config.head_dim
        kv_size = config.num_kv_heads * config.head_dim
        # Output widths of the fused projection, in order q, k, v (LoRA applies its adapters per slice).
        self.qkv_sizes = (q_size, kv_size, kv_size)
        self.qkv_proj: nn.Module = nn.Linear(config.hidden_size, sum(self.qkv_sizes), device=META)
        self.o_proj: nn.Module = nn.Linear(q_size, config.hidden_size, device=META)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, META) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, META) if config.qk_norm else None
        self.backend = backend

    def load(
        self,
        qkv: list[torch.Tensor | PackedWeight],
        qkv_bias: list[torch.Tensor] | None,
        o: torch.Tensor | PackedWeight,
        o_bias: torch.Tensor | None,
        q_norm: torch.Tensor | PackedWeight | None,
        k_norm: torch.Tensor | PackedWeight | None,
    ) -> None:
        self.qkv_proj = make_linear(qkv, qkv_bias)
        self.o_proj = make_linear([o], None if o_bias is None else [o_bias])
        if self.q_norm is not None and self.k_norm is not None:
            if q_norm is None or k_norm is None:
                raise ValueError("this model normalises q and k per head but got no q_norm / k_norm weights")
            self.q_norm.load(q_norm)
            self.k_norm.load(k_norm)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
        lora: LayerLora | None = None,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, q + 2 kv]
        if lora is not None:
            qkv = lora.apply(qkv, x, ("q_proj", "k_proj", "v_proj"), self.qkv_sizes)
        q, k, v = qkv.split(self.qkv_sizes, dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)  # [T, Hq, D]
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q)
            k = self.k_norm(k)
        q, k = apply_rotary(q, k, cos, sin)
        out = self.backend.forward(q, k, v, attn, kv_cache, self.scale)  # [T, Hq, D]
        flat = out.reshape(num_tokens, self.num_heads * self.head_dim)  # [T, Hq * D]
        y = self.o_proj(flat)  # [T, H]
        return y if lora is None else lora.apply(y, flat, ("o_proj",), (y.shape[-1],))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, config: ModelConfig, backend: AttentionBackend):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, META)
        self.self_attn = SelfAttention(config, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, META)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None,
        lora: LayerLora | None = None,
    ) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, attn, kv_cache, lora)  # [T, H]
        return h + self.mlp(self.post_attention_layernorm(h), lora)  # [T, H]
