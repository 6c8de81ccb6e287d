"""The decoder-only network shared by serving and training: Llama (incl. SmolLM2, Llama 3.x rope scaling),
Qwen2/2.5 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm), with tied or untied embeddings and GQA."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ember.models.attention import AttentionBackend, TorchAttentionBackend
from ember.models.attention_metadata import AttentionMetadata
from ember.models.config import ModelConfig
from ember.models.layers import META, DecoderLayer, RMSNorm, TokenEmbedding
from ember.models.linear import is_packed, make_linear, weight_shape
from ember.models.rotary import RotaryEmbedding

if TYPE_CHECKING:
    from ember.lora.layers import LoraContext
    from ember.models.quant.packed_weight import PackedWeight

# Buffers some older checkpoints store; they are recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_LM_HEAD = "lm_head.weight"


def hf_weight_shapes(config: ModelConfig) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Expected Hugging Face parameter names with their shapes, and the subset that may be absent."""
    hidden, head_dim = config.hidden_size, config.head_dim
    q_size, kv_size = config.num_heads * head_dim, config.num_kv_heads * head_dim
    # transformers puts o_proj.bias under the same switch as q/k/v for Llama and Qwen3; Qwen2 never has one.
    o_bias = config.attention_bias and config.architecture != "qwen2"
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
        _LM_HEAD: (config.vocab_size, hidden),
    }
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (q_size, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_size, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_size, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, q_size)
        if config.attention_bias:
            shapes[p + "self_attn.q_proj.bias"] = (q_size,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_size,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_size,)
        if o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (hidden,)
        if config.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (head_dim,)
            shapes[p + "self_attn.k_norm.weight"] = (head_dim,)
        shapes[p + "mlp.gate_proj.weight"] = (config.intermediate_size, hidden)
        shapes[p + "mlp.up_proj.weight"] = (config.intermediate_size, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, config.intermediate_size)
    return shapes, {_LM_HEAD}


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class DecoderModel(nn.Module):
    """input_ids [T] of a flattened batch -> final-normed hidden states [T, hidden]; compute_logits -> [N, vocab].

    Built empty (meta-device placeholders), then filled by `load_weights` with Hugging Face parameter names.
    """

    def __init__(self, config: ModelConfig, attention_backend: AttentionBackend | None = None):
        super().__init__()
        self.config = config
        backend = attention_backend if attention_backend is not None else TorchAttentionBackend()
        self.embed_tokens = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, backend) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, META)
        self.lm_head: nn.Module = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=META)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.loaded = False

    def load_weights(self, weights: dict[str, torch.Tensor | PackedWeight]) -> None:
        """Take every weight by its HF name; fuse q|k|v and gate|up. Raises ValueError naming any missing,
        unexpected or wrongly-shaped weight. A tied model's lm_head is its embedding (also when the checkpoint
        repeats it as lm_head.weight); an untied one without lm_head.weight falls back to the embedding."""
        weights = {name: w for name, w in weights.items() if not name.endswith(_IGNORED_SUFFIXES)}
        shapes, optional = hf_weight_shapes(self.config)
        missing = sorted(set(shapes) - optional - set(weights))
        if missing:
            raise ValueError(f"missing weights: {_listing(missing)}")
        unexpected = sorted(set(weights) - set(shapes))
        if unexpected:
            raise ValueError(f"unexpected weights: {_listing(unexpected)}")
        for name, weight in weights.items():
            if weight_shape(weight) != shapes[name]:
                raise ValueError(
                    f"weight {name} has shape {tuple(weight_shape(weight))}, expected {shapes[name]}"
                )
            if not is_packed(weight) and not weight.is_floating_point():
                raise ValueError(f"weight {name} has dtype {weight.dtype}; expected a floating point tensor")
        fp32 = {name: w if is_packed(w) else w.float() for name, w in weights.items()}

        self.embed_tokens.load(fp32["model.embed_tokens.weight"])
        for i, layer in enumerate(self.layers):
            self._load_layer(layer, f"model.layers.{i}.", fp32)
        self.norm.load(fp32["model.norm.weight"])
        if self.config.tie_word_embeddings or _LM_HEAD not in fp32:
            self.lm_head = make_linear([self.embed_tokens.source], None)
        else:
            self.lm_head = make_linear([fp32[_LM_HEAD]], None)
        self.loaded = True

    @staticmethod
    def _load_layer(
        layer: DecoderLayer, prefix: str, weights: dict[str, torch.Tensor | PackedWeight]
    ) -> None:
        attn = prefix + "self_attn."
        qkv_bias = None
        if attn + "q_proj.bias" in weights:
            qkv_bias = [weights[attn + f"{p}_proj.bias"] for p in "qkv"]
        layer.self_attn.load(
            qkv=[weights[attn + f"{p}_proj.weight"] for p in "qkv"],
            qkv_bias=qkv_bias,
            o=weights[attn + "o_proj.weight"],
            o_bias=weights.get(attn + "o_proj.bias"),
            q_norm=weights.get(attn + "q_norm.weight"),
            k_norm=weights.get(attn + "k_norm.weight"),
        )
        layer.mlp.load(
            gate=weights[prefix + "mlp.gate_proj.weight"],
            up=weights[prefix + "mlp.up_proj.weight"],
            down=weights[prefix + "mlp.down_proj.weight"],
        )
        layer.input_layernorm.load(weights[prefix + "input_layernorm.weight"])
        layer.post_attention_layernorm.load(weights[prefix + "post_attention_layernorm.weight"])

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        lora: LoraContext | None = None,
    ) -> torch.Tensor:
        """input_ids, positions [T] -> hidden [T, hidden], module by module. With kv_caches, new keys/values are
        written to the slots in attn.slot_mapping; without, attention is causal within each sequence (training).
        `lora` adds adapter deltas to the projections of the token rows each adapter owns. The native fused
        decode step (models/fused_decode.py) is another entry point over the same weights; the engine's runner
        chooses between the two (engine/forward_path.py), this method never does."""
        if not self.loaded:
            raise RuntimeError("DecoderModel has no weights yet; call load_weights first")
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and positions must both be [T], got {tuple(input_ids.shape)} and {tuple(positions.shape)}"
            )
        if kv_caches is not None and len(kv_caches) != len(self.layers):
            raise ValueError(f"got {len(kv_caches)} KV caches for {len(self.layers)} layers")
        h = self.embed_tokens(input_ids)  # [T, H]
        cos, sin = self.rotary.cos_sin(positions, h.dtype)  # [T, D] each, shared by all layers
        for i, layer in enumerate(self.layers):
            layer_lora = None if lora is None else lora.layer(i)
            h = layer(h, cos, sin, attn, None if kv_caches is None else kv_caches[i], layer_lora)
        return self.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> fp32 logits [N, vocab]."""
        return self.lm_head(hidden).float()
