"""The fast path for decodes: the whole DecoderModel stack as one native call (ember.kernels.decode_step) instead
of ~40 torch ops per layer.

It applies when every projection runs on the int8 block kernel (a packed GGUF on an AVX2 CPU), every sequence's
run is one the step takes (`takes_run`: decodes, short speculative runs, prefill chunks of short contexts, each
token a row), and the KV cache is on the CPU in any of its formats (fp32, fp16, bf16, q8_0). A batch where only
some sequences qualify runs split (engine/forward_path.py). Rows of served LoRA adapters run in the same step, each adapter's low-rank products inside the native
call (models/fused_decode_lora.py). Anything else takes the module-by-module torch path, which stays the reference
the fused step is tested against."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ember.kernels import decode_step as native_step
from ember.kernels.kernel_isa import ISA_ORDER
from ember.lora.layers import LoraContext
from ember.models.attention_metadata import AttentionMetadata
from ember.models.fused_decode_lora import FusedLoraTables
from ember.models.kv_cache_format import KV_STORAGE_DTYPES, format_of_cache
from ember.models.linear import ConcatLinear
from ember.models.quant.packed_linear import PackedLinear

if TYPE_CHECKING:
    from ember.models.layers import DecoderLayer
    from ember.models.llama import DecoderModel


# A sequence with up to this many new tokens in a step (speculative verification: drafts + 1) runs fused, each
# token a row of its own, whatever its context.
MAX_QUERY_TOKENS = 16
# A longer run (a prefill chunk) runs fused too while its context ends within this many tokens: each of its rows
# attends on its own (q x context row reads), which beats the module path's GEMM attention and its ~40 torch ops
# per layer up to about this context; beyond it the module path is faster (docs/decisions.md, mixed batches).
MAX_CHUNK_CONTEXT = 512


def takes_run(query_len: int, context_len: int) -> bool:
    """Whether the fused step runs a sequence's `query_len` new tokens ending at `context_len`."""
    return query_len <= MAX_QUERY_TOKENS or context_len <= MAX_CHUNK_CONTEXT


def _rows_per_token(attn: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
    """Block tables [M, B] and context lengths [M], one row per new token, as the native step reads them: token j
    of a sequence's q new tokens sees the cached context and the new tokens up to itself. The step writes every
    row's key and value before any row attends (rows of one sequence read each other's from the cache)."""
    assert attn.block_tables is not None
    if attn.is_decode_only:
        return attn.block_tables, attn.context_lens_tensor
    query_lens = torch.tensor(attn.query_lens, dtype=torch.int64)  # [S]
    tables = attn.block_tables.repeat_interleave(query_lens, dim=0)  # [M, B]
    ends = attn.query_start_loc[1:].repeat_interleave(query_lens)  # [M] end of each token's sequence run
    tokens_after = ends - 1 - torch.arange(int(query_lens.sum()))  # [M] new tokens that follow the token
    return tables, attn.context_lens_tensor.repeat_interleave(query_lens) - tokens_after


def _is_fp32_cpu(tensor: torch.Tensor) -> bool:
    return tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous()


def _is_cache_like(tensor: torch.Tensor, first: torch.Tensor) -> bool:
    return (
        tensor.dtype == first.dtype
        and tensor.shape == first.shape
        and tensor.device.type == "cpu"
        and tensor.is_contiguous()
    )


def _kernel_parts(module: nn.Module) -> list[PackedLinear] | None:
    """The PackedLinears a projection is made of, when all of them run on the kernel; else None."""
    parts = list(module.parts) if isinstance(module, ConcatLinear) else [module]
    if not all(
        isinstance(p, PackedLinear) and p.prepared is not None and p.prepared.interleaved for p in parts
    ):
        return None
    if len(parts) > native_step.MAX_PROJECTION_PARTS:
        return None
    return parts  # type: ignore[return-value]


def _joined_bias(parts: list[PackedLinear]) -> torch.Tensor | None:
    """One bias over all parts' columns (zeros where a part has none); None when no part has one."""
    if all(p.bias is None for p in parts):
        return None
    pieces = [p.bias.detach() if p.bias is not None else torch.zeros(p.out_features) for p in parts]
    return torch.cat(pieces).float().contiguous()


def _prepared_isas(model: DecoderModel) -> set[str]:
    """The kernel families the model's packed linears were prepared for."""
    return {m.prepared.isa for m in model.modules() if isinstance(m, PackedLinear) and m.prepared is not None}


class FusedDecodeStack:
    """A DecoderModel's weights described once for the native decode step; `forward` then serves every step
    the caller (the engine's runner) sends it, after `accepts` said yes."""

    def __init__(
        self,
        model: DecoderModel,
        table: torch.Tensor,
        keep_alive: list[torch.Tensor],
        dims: native_step.DecodeDims,
        final_norm: torch.Tensor,
        isa: str,
    ) -> None:
        self.model = model  # its embedding and rotary tables run in torch around the native call
        self.table = table  # [num_layers, LAYER_TABLE_FIELDS] int64
        self.keep_alive = keep_alive  # every tensor the table points into
        self.dims = dims
        self.final_norm = final_norm
        self.isa = isa  # kernel family of the projections (kernel_isa.py), as their weights were prepared
        self._kv_key: tuple[int, int] | None = None
        self._kv_table = torch.empty(0, 2, dtype=torch.int64)
        self.lora_tables = FusedLoraTables(dims.num_layers)

    @staticmethod
    def build(model: DecoderModel) -> FusedDecodeStack | None:
        """None when some part of the model is not on the kernels (then the torch path serves it). Build it
        after the weights are loaded and on the kernels, and again if they are replaced."""
        config = model.config
        if (
            not model.loaded
            or not native_step.available()
            or config.head_dim % 8 != 0
            or not _is_fp32_cpu(model.norm.weight)
        ):
            return None
        rows: list[list[int]] = []
        keep: list[torch.Tensor] = []
        for layer in model.layers:
            row = FusedDecodeStack._layer_fields(layer, keep)
            if row is None:
                return None
            rows.append(row)
        dims = native_step.DecodeDims(
            num_layers=config.num_layers,
            hidden=config.hidden_size,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            intermediate=config.intermediate_size,
            block_size=0,  # set per step from the attention metadata
            eps=config.rms_norm_eps,
            scale=config.head_dim**-0.5,
        )
        # Weights prepared under different EMBER_KERNEL_ISA settings run on the family they all support.
        isa = min(_prepared_isas(model), key=ISA_ORDER.index)
        if isa == "scalar":
            return None  # EMBER_KERNEL_ISA=scalar: the fused step has no scalar build, the module path serves
        table = torch.tensor(rows, dtype=torch.int64)
        return FusedDecodeStack(model, table, keep, dims, model.norm.weight.detach(), isa)

    @staticmethod
    def _layer_fields(layer: DecoderLayer, keep: list[torch.Tensor]) -> list[int] | None:
        attn, mlp = layer.self_attn, layer.mlp
        projections = [
            _kernel_parts(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        ]
        if any(p is None for p in projections):
            return None
        qkv, o, gate_up, down = projections  # type: ignore[misc]
        if any(p.bias is not None for p in gate_up + down):
            return None  # no supported architecture has MLP biases; the torch path handles any that does
        norms = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        norms += [n.weight for n in (attn.q_norm, attn.k_norm) if n is not None]
        if not all(_is_fp32_cpu(w) for w in norms):
            return None
        biases = [_joined_bias(qkv), _joined_bias(o)]
        keep += [t.detach() for t in norms] + [b for b in biases if b is not None]

        def address(tensor: torch.Tensor | None) -> int:
            return 0 if tensor is None else tensor.data_ptr()

        fields = [
            address(layer.input_layernorm.weight),
            address(layer.post_attention_layernorm.weight),
            address(None if attn.q_norm is None else attn.q_norm.weight),
            address(None if attn.k_norm is None else attn.k_norm.weight),
            address(biases[0]),
            address(biases[1]),
        ]
        for parts in (qkv, o, gate_up, down):
            keep += [p.prepared.data for p in parts]  # type: ignore[union-attr]
            fields += native_step.projection_fields(
                [(p.qtype, p.prepared.data, p.out_features) for p in parts]  # type: ignore[union-attr]
            )
        return fields

    def accepts(self, attn: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Whether this step can run fused as a whole: the cache (accepts_cache) and every sequence's run
        (takes_run: decodes, short runs such as speculative verification, prefill chunks of short contexts)."""
        return self.accepts_cache(attn, kv_caches) and all(
            takes_run(q, c) for q, c in zip(attn.query_lens, attn.context_lens, strict=True)
        )

    @staticmethod
    def accepts_cache(attn: AttentionMetadata, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
        """Whether the step's cache is one the fused step reads: paged (block tables and slots), on the CPU, in
        a KV format it knows, with the metadata's block size."""
        if attn.block_tables is None or attn.slot_mapping is None:
            return False
        keys = kv_caches[0][0]
        return (
            keys.dtype in KV_STORAGE_DTYPES and keys.device.type == "cpu" and keys.shape[1] == attn.block_size
        )

    def accepts_lora(self, lora: LoraContext) -> bool:
        """Whether the step's adapters run inside the native call (served adapters; not training contexts)."""
        return FusedLoraTables.accepts(lora)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None = None,
    ) -> torch.Tensor:
        """What DecoderModel.forward computes for an accepted batch (input_ids, positions [M] -> hidden [M, H]),
        the whole stack in one native call; writes the new keys/values."""
        h = self.model.embed_tokens(input_ids)  # [M, H]
        cos, sin = self.model.rotary.cos_sin(positions, h.dtype)
        return self.run(h, cos, sin, attn, kv_caches, lora)

    def run(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraContext | None = None,
    ) -> torch.Tensor:
        """hidden [M, H] embeddings of M decodes -> final-normed hidden [M, H]; writes the new keys/values.
        `lora` (accepted by accepts_lora): the adapter of each row, None when all are the base model."""
        assert attn.block_tables is not None and attn.slot_mapping is not None
        block_tables, context_lens = _rows_per_token(attn)
        if self.dims.block_size != attn.block_size:
            self.dims = replace(self.dims, block_size=attn.block_size)
        return native_step.decode_step(
            self.table,
            self.dims,
            hidden.contiguous(),
            self.final_norm,
            cos.contiguous(),
            sin.contiguous(),
            attn.slot_mapping.contiguous(),
            block_tables.contiguous(),
            context_lens.contiguous(),
            self._kv_pointers(kv_caches),
            kv_caches[0][0].shape[0],
            torch.get_num_threads(),
            format_of_cache(kv_caches[0][0]).native_id,
            self.isa,
            lora=None if lora is None else self.lora_tables.step_lora(lora, hidden.shape[0]),
        )

    def _kv_pointers(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """[num_layers, 2] cache addresses, rebuilt only when the engine hands over different caches."""
        key = (id(kv_caches), kv_caches[0][0].data_ptr())
        if key != self._kv_key:
            first = kv_caches[0][0]
            shape = first.shape
            row_width = format_of_cache(first).row_width(self.dims.head_dim)
            if (
                len(kv_caches) != self.dims.num_layers
                or tuple(shape[2:]) != (self.dims.num_kv_heads, row_width)
                or not all(_is_cache_like(k, first) and _is_cache_like(v, first) for k, v in kv_caches)
            ):
                raise ValueError(
                    "the fused decode step needs one contiguous CPU (keys, values) pair per layer, all alike"
                )
            self._kv_table = torch.tensor(
                [[k.data_ptr(), v.data_ptr()] for k, v in kv_caches], dtype=torch.int64
            )
            self._kv_key = key
        return self._kv_table
