"""Tiny GGUF files written with the gguf package's own writer, laid out the way llama.cpp's converter does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, quants

from ember.models.bpe_backend import BYTE_TO_CHAR

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 96, 2
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """256 byte tokens, two merges and two control tokens."""
    tokens = [BYTE_TO_CHAR[b] for b in range(256)] + ["he", "Ġt", *SPECIAL_TOKENS]
    types = [1] * 258 + [3, 3]
    return tokens, ["h e", "Ġ t"], types


def llama_cpp_permute(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleave each head's two rotary halves."""
    return (
        rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:])
        .swapaxes(1, 2)
        .reshape(rows.shape)
    )


@dataclass
class TinyGGUFSpec:
    arch: str = "llama"
    qtype: str = "Q8_0"
    tied: bool = True
    bias: bool = False
    qk_norm: bool = False
    rope_freqs: np.ndarray | None = None
    fields: Mapping[str, Any] = field(
        default_factory=dict
    )  # extra metadata, key -> value (str/int/float/bool)
    omit_fields: tuple[str, ...] = ()  # hyper-parameter keys to leave out
    vocab: tuple[list[str], list[str], list[int]] | None = None  # tokens, merges, types; default tiny_vocab()
    pre: str = "default"
    skip_tensors: tuple[str, ...] = ()
    extra_tensors: Mapping[str, tuple[np.ndarray, GGMLQuantizationType | None]] = field(default_factory=dict)


def write_tiny_gguf(path: str, spec: TinyGGUFSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Write a 2-layer model; returns what the loader must produce: HF names -> fp32 [out, in] after the
    file's quantization, in Hugging Face row order."""
    rng = np.random.default_rng(seed)
    tokens, merges, types = spec.vocab or tiny_vocab()
    vocab = len(tokens)
    qtype = GGMLQuantizationType[spec.qtype]
    expected: dict[str, np.ndarray] = {}
    writer = GGUFWriter(path, spec.arch)

    def matrix(gguf_name: str, hf: str, out: int, inp: int, heads: int | None = None) -> None:
        weight = (rng.standard_normal((out, inp)) * 0.1).astype(np.float32)
        raw = quants.quantize(weight, qtype)
        expected[hf] = quants.dequantize(raw, qtype)
        if heads is not None and spec.arch == "llama":
            raw = llama_cpp_permute(raw, heads)
        if gguf_name not in spec.skip_tensors:
            writer.add_tensor(gguf_name, raw, raw_dtype=qtype)

    def vector(gguf_name: str, hf: str, size: int) -> None:
        values = (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)
        expected[hf] = values
        if gguf_name not in spec.skip_tensors:
            writer.add_tensor(gguf_name, values)

    matrix("token_embd.weight", "model.embed_tokens.weight", vocab, HIDDEN)
    vector("output_norm.weight", "model.norm.weight", HIDDEN)
    if not spec.tied:
        matrix("output.weight", "lm_head.weight", vocab, HIDDEN)
    for i in range(LAYERS):
        blk, hf = f"blk.{i}.", f"model.layers.{i}."
        vector(blk + "attn_norm.weight", hf + "input_layernorm.weight", HIDDEN)
        vector(blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", HIDDEN)
        matrix(blk + "attn_q.weight", hf + "self_attn.q_proj.weight", HEADS * HEAD_DIM, HIDDEN, heads=HEADS)
        matrix(
            blk + "attn_k.weight", hf + "self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, heads=KV_HEADS
        )
        matrix(blk + "attn_v.weight", hf + "self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN)
        matrix(blk + "attn_output.weight", hf + "self_attn.o_proj.weight", HIDDEN, HEADS * HEAD_DIM)
        matrix(blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight", FFN, HIDDEN)
        matrix(blk + "ffn_up.weight", hf + "mlp.up_proj.weight", FFN, HIDDEN)
        matrix(blk + "ffn_down.weight", hf + "mlp.down_proj.weight", HIDDEN, FFN)
        if spec.bias:
            vector(blk + "attn_q.bias", hf + "self_attn.q_proj.bias", HEADS * HEAD_DIM)
            vector(blk + "attn_k.bias", hf + "self_attn.k_proj.bias", KV_HEADS * HEAD_DIM)
            vector(blk + "attn_v.bias", hf + "self_attn.v_proj.bias", KV_HEADS * HEAD_DIM)
        if spec.qk_norm:
            vector(blk + "attn_q_norm.weight", hf + "self_attn.q_norm.weight", HEAD_DIM)
            vector(blk + "attn_k_norm.weight", hf + "self_attn.k_norm.weight", HEAD_DIM)
    if spec.rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", spec.rope_freqs.astype(np.float32))
    for name, (data, raw_dtype) in spec.extra_tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)

    arch = spec.arch
    hyper: dict[str, Any] = {
        f"{arch}.block_count": LAYERS,
        f"{arch}.context_length": 512,
        f"{arch}.embedding_length": HIDDEN,
        f"{arch}.feed_forward_length": FFN,
        f"{arch}.attention.head_count": HEADS,
        f"{arch}.attention.head_count_kv": KV_HEADS,
        f"{arch}.rope.freq_base": 10000.0,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
        f"{arch}.rope.dimension_count": HEAD_DIM,
    }
    for key, value in hyper.items():
        if key not in spec.omit_fields:
            _add_field(writer, key, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(spec.pre)
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    if spec.vocab is None:
        writer.add_bos_token_id(vocab - 2)
        writer.add_eos_token_id(vocab - 1)
    writer.add_add_bos_token(True)
    for key, value in spec.fields.items():
        _add_field(writer, key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _add_field(writer: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_string(key, str(value))
