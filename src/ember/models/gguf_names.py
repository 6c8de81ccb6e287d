"""llama.cpp tensor names -> Hugging Face parameter names, and the q/k row order llama.cpp's converter uses."""

from __future__ import annotations

import re

import torch

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}

_LAYER_PATTERN = re.compile(r"blk\.(\d+)\.(.+)")

# Tensors llama.cpp stores that are not weights of the network (rope frequency factors are read into the config).
AUXILIARY_TENSORS = frozenset({"rope_freqs.weight"})


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a llama.cpp tensor, or None when ember has no use for such a tensor."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_PATTERN.fullmatch(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        return None
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"


def rope_unpermutation(num_rows: int, num_heads: int) -> torch.Tensor:
    """Row indices that turn llama.cpp's q/k row order back into Hugging Face's.

    For the llama architecture, llama.cpp's converter interleaves each head's two rotary halves (HF row
    h * head_dim + s * head_dim/2 + i is stored at h * head_dim + 2 * i + s) so its rope can rotate adjacent
    pairs; HF's rotate_half pairs row i with row i + head_dim/2. `hf_rows = gguf_rows[result]`."""
    if num_rows % (2 * num_heads) != 0:
        raise ValueError(f"{num_rows} rows do not split into {num_heads} heads of even size")
    half = num_rows // num_heads // 2
    stored = torch.arange(num_rows).view(num_heads, half, 2)  # [head, i, s] -> stored row
    return stored.transpose(1, 2).reshape(num_rows)  # HF order [head, s, i]
