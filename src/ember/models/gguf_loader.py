"""load_gguf: a llama.cpp GGUF file -> Checkpoint (config, HF-named weights, tokenizer, chat template)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, BinaryIO

import torch
from gguf import GGUFReader, ReaderTensor

from ember.models.checkpoint import Checkpoint, GenerationDefaults
from ember.models.config import ModelConfig
from ember.models.errors import ModelLoadError
from ember.models.gguf_config import GGUFConfigError, architecture_of, model_config_from_gguf
from ember.models.gguf_file import open_gguf, read_fields, resolve_gguf_path, tensor_rows, tensor_shape
from ember.models.gguf_names import AUXILIARY_TENSORS, hf_name, rope_unpermutation
from ember.models.quant.ggml_blocks import PACKED_QTYPES
from ember.models.quant.packed_weight import PackedWeight
from ember.models.tokenizer import Tokenizer

# Architectures whose GGUF converter interleaved the rotary halves of q and k rows.
_ROPE_PERMUTED_ARCHITECTURES = frozenset({"llama"})


def load_gguf(path: str, keep_packed: bool) -> Checkpoint:
    """Read a GGUF file (or a directory holding exactly one). keep_packed=False decodes every tensor to fp32;
    keep_packed=True keeps quantized matrices as PackedWeight (float types still become fp32 tensors).
    Every failure is a ModelLoadError naming the file."""
    path = resolve_gguf_path(path)
    reader = open_gguf(path)
    try:
        with open(path, "rb") as file:
            return _load(reader, file, path, keep_packed)
    except (GGUFConfigError, ValueError) as e:
        raise ModelLoadError(path, str(e)) from None


def load_gguf_tokenizer(path: str) -> tuple[Tokenizer, str | None]:
    """Only the tokenizer and chat template of a GGUF, without decoding any weight."""
    path = resolve_gguf_path(path)
    fields = read_fields(open_gguf(path))
    return Tokenizer.from_gguf_fields(fields, path), fields.get("tokenizer.chat_template")


def _load(reader: GGUFReader, file: BinaryIO, path: str, keep_packed: bool) -> Checkpoint:
    fields = read_fields(reader)
    arch = architecture_of(fields)
    tensors: dict[str, ReaderTensor] = {t.name: t for t in reader.tensors}
    unknown = sorted(n for n in tensors if hf_name(n) is None and n not in AUXILIARY_TENSORS)
    if unknown:
        raise ValueError(f"unexpected tensors for architecture {arch!r}: {', '.join(unknown[:5])}")
    if "token_embd.weight" not in tensors:
        raise ValueError("missing tensor token_embd.weight")

    tokenizer = Tokenizer.from_gguf_fields(fields, path)
    rope_freqs = _decode(tensors["rope_freqs.weight"], file) if "rope_freqs.weight" in tensors else None
    config = model_config_from_gguf(
        fields,
        tensors.keys(),
        vocab_size=tensor_shape(tensors["token_embd.weight"])[0],
        rope_freqs=rope_freqs,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_ids=tokenizer.eos_token_ids,
    )
    expected = expected_shapes(config)
    present = {hf_name(n) for n in tensors}
    missing = [name for name in expected if name not in present]
    if missing:
        raise ValueError(f"missing tensors: {', '.join(missing[:5])}")

    weights: dict[str, torch.Tensor | PackedWeight] = {}
    for gguf_name, tensor in tensors.items():
        name = hf_name(gguf_name)
        if name is None:
            continue
        shape = tensor_shape(tensor)
        if name not in expected or shape != expected[name]:
            raise ValueError(f"tensor {gguf_name} has shape {shape}, expected {expected.get(name, 'none')}")
        weights[name] = _unpermute(_weight(tensor, file, keep_packed), gguf_name, config)

    return Checkpoint(
        config=config,
        weights=weights,
        tokenizer=tokenizer,
        chat_template=fields.get("tokenizer.chat_template"),
        source_path=path,
        source_format="gguf",
        generation=_generation_defaults(fields, tokenizer),
        quantization=dominant_linear_qtype(tensors.values()),
    )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the network needs, by HF name, with its torch shape."""
    hidden, q_dim, kv_dim = (
        config.hidden_size,
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
    )
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, hidden)
    for i in range(config.num_layers):
        layer = f"model.layers.{i}."
        shapes |= {
            layer + "input_layernorm.weight": (hidden,),
            layer + "post_attention_layernorm.weight": (hidden,),
            layer + "self_attn.q_proj.weight": (q_dim, hidden),
            layer + "self_attn.k_proj.weight": (kv_dim, hidden),
            layer + "self_attn.v_proj.weight": (kv_dim, hidden),
            layer + "self_attn.o_proj.weight": (hidden, q_dim),
            layer + "mlp.gate_proj.weight": (config.intermediate_size, hidden),
            layer + "mlp.up_proj.weight": (config.intermediate_size, hidden),
            layer + "mlp.down_proj.weight": (hidden, config.intermediate_size),
        }
        if config.attention_bias:
            shapes |= {
                layer + "self_attn.q_proj.bias": (q_dim,),
                layer + "self_attn.k_proj.bias": (kv_dim,),
                layer + "self_attn.v_proj.bias": (kv_dim,),
            }
        if config.qk_norm:
            shapes |= {layer + "self_attn.q_norm.weight": (config.head_dim,)}
            shapes |= {layer + "self_attn.k_norm.weight": (config.head_dim,)}
    return shapes


def dominant_linear_qtype(tensors: Iterable[ReaderTensor]) -> str:
    """The tensor type holding most parameters of the layers' matrices ("Q4_1" for the default model)."""
    counts: Counter[str] = Counter()
    for tensor in tensors:
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2:
            counts[tensor.tensor_type.name] += int(tensor.n_elements)
    return counts.most_common(1)[0][0] if counts else "F32"


def _packed(tensor: ReaderTensor, file: BinaryIO) -> PackedWeight:
    """Any tensor as rows of blocks; a 1-D tensor is one row."""
    rows = tensor_rows(tensor, file)  # uint8 [rows, bytes_per_row]
    return PackedWeight(tensor.tensor_type.name, (rows.shape[0], tensor_shape(tensor)[-1]), rows)


def _decode(tensor: ReaderTensor, file: BinaryIO) -> torch.Tensor:
    return _packed(tensor, file).dequantize().reshape(tensor_shape(tensor))


def _weight(tensor: ReaderTensor, file: BinaryIO, keep_packed: bool) -> torch.Tensor | PackedWeight:
    shape = tensor_shape(tensor)
    packed = _packed(tensor, file)
    if keep_packed and len(shape) == 2 and packed.qtype in PACKED_QTYPES:
        return packed
    return packed.dequantize().reshape(shape)


def _unpermute(
    weight: torch.Tensor | PackedWeight, gguf_name: str, config: ModelConfig
) -> torch.Tensor | PackedWeight:
    if config.architecture not in _ROPE_PERMUTED_ARCHITECTURES:
        return weight
    kind = gguf_name.rsplit(".", 2)[-2]  # "attn_q" in "blk.3.attn_q.weight"
    if kind not in ("attn_q", "attn_k"):
        return weight
    heads = config.num_heads if kind == "attn_q" else config.num_kv_heads
    rows = rope_unpermutation(config.head_dim * heads, heads)
    return weight.take_rows(rows) if isinstance(weight, PackedWeight) else weight.index_select(0, rows)


def _generation_defaults(fields: Mapping[str, Any], tokenizer: Tokenizer) -> GenerationDefaults:
    """Sampling defaults some GGUFs carry (general.sampling.*), and the tokenizer's end-of-turn ids."""

    def optional(key: str, kind: type) -> Any:
        value = fields.get(f"general.sampling.{key}")
        return None if value is None else kind(value)

    return GenerationDefaults(
        eos_token_ids=tokenizer.eos_token_ids,
        temperature=optional("temp", float),
        top_p=optional("top_p", float),
        top_k=optional("top_k", int),
        repetition_penalty=optional("penalty_repeat", float),
    )
