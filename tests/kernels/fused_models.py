"""Tiny packed models and paged decode batches for the fused decode step tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import gguf
import numpy as np
import torch
from gguf import quants
from random_blocks import random_blocks

from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.engine.testing import random_weights, tiny_config
from ember.lora.adapter import LoraAdapter
from ember.lora.layers import LoraContext, attach_trainable_lora
from ember.models.attention_metadata import AttentionMetadata
from ember.models.config import ModelConfig
from ember.models.kv_cache import allocate_kv_caches
from ember.models.llama import DecoderModel
from ember.models.loader import enable_quant_kernels
from ember.models.quant.packed_weight import PackedWeight

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ALL = PROJECTIONS


@dataclass(frozen=True)
class Variant:
    """An architecture with the block format of each projection; formats that differ inside q|k|v make the fused
    projection a ConcatLinear of several parts."""

    name: str
    architecture: str
    dims: dict[str, int]
    qtypes: dict[str, str] = field(default_factory=dict)  # projection -> GGUF type


VARIANTS = (
    # K a multiple of 32 but not of 256, three block formats inside q|k|v, GQA groups of 3.
    Variant(
        "llama-mixed",
        "llama",
        dict(hidden_size=96, intermediate_size=160, num_heads=6, num_kv_heads=2, head_dim=16),
        dict(
            q_proj="Q4_1",
            k_proj="Q8_0",
            v_proj="Q4_0",
            o_proj="Q4_0",
            gate_proj="Q4_1",
            up_proj="Q4_1",
            down_proj="Q8_0",
        ),
    ),
    # q/k/v biases, no grouping (as many kv heads as heads).
    Variant(
        "qwen2-bias",
        "qwen2",
        dict(hidden_size=64, intermediate_size=96, num_heads=4, num_kv_heads=4, head_dim=16),
        dict(
            q_proj="Q8_0",
            k_proj="Q8_0",
            v_proj="Q8_0",
            o_proj="Q4_1",
            gate_proj="Q4_0",
            up_proj="Q4_0",
            down_proj="Q4_0",
        ),
    ),
    # Per-head q/k norms, super-block formats, one kv head shared by 4 query heads, head_dim 64.
    Variant(
        "qwen3-k-quants",
        "qwen3",
        dict(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=1, head_dim=64),
        dict(
            q_proj="Q4_K",
            k_proj="Q4_K",
            v_proj="Q4_K",
            o_proj="Q4_K",
            gate_proj="Q4_K",
            up_proj="Q4_K",
            down_proj="Q6_K",
        ),
    ),
    # The 5-bit legacy formats on their own kernels, as a Qwen2.5 Q4_K_M file stores its rows that 256 does not
    # divide: K = 96 and 160 (not multiples of 256), two 5-bit formats and Q8_0 inside q|k|v.
    Variant(
        "qwen2-q5",
        "qwen2",
        dict(hidden_size=96, intermediate_size=160, num_heads=6, num_kv_heads=2, head_dim=16),
        dict(
            q_proj="Q5_0",
            k_proj="Q5_1",
            v_proj="Q8_0",
            o_proj="Q5_0",
            gate_proj="Q5_1",
            up_proj="Q5_0",
            down_proj="Q5_0",
        ),
    ),
    # Block formats without a kernel of their own, run on their Q8_0 stand-ins (models/quant/kernel_stand_ins),
    # beside Q5_0 / Q5_1 on theirs.
    Variant(
        "qwen2-stand-ins",
        "qwen2",
        dict(hidden_size=256, intermediate_size=512, num_heads=4, num_kv_heads=2, head_dim=64),
        dict(
            q_proj="Q5_0",
            k_proj="Q5_1",
            v_proj="Q3_K",
            o_proj="Q5_K",
            gate_proj="Q2_K",
            up_proj="IQ4_NL",
            down_proj="IQ4_XS",
        ),
    ),
)


def _packed(weight: torch.Tensor, qtype: str, seed: int) -> PackedWeight:
    n, k = weight.shape
    if qtype in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"):
        data = torch.from_numpy(quants.quantize(weight.numpy(), gguf.GGMLQuantizationType[qtype]))
    else:  # gguf cannot quantize the K-types: random valid blocks of a typical size
        data = random_blocks(qtype, n, k, seed)
    return PackedWeight(qtype, (n, k), data)


def packed_weights(
    config: ModelConfig, variant: Variant, seed: int
) -> dict[str, torch.Tensor | PackedWeight]:
    weights: dict[str, torch.Tensor | PackedWeight] = {}
    for i, (name, weight) in enumerate(random_weights(config, seed).items()):
        projection = name.split(".")[-2]
        if projection in PROJECTIONS and name.endswith(".weight"):
            weights[name] = _packed(weight, variant.qtypes[projection], seed + i)
        else:
            weights[name] = weight
    return weights


def build_models(variant: Variant, seed: int = 0, vocab_size: int = 512) -> tuple[DecoderModel, DecoderModel]:
    """(the model on the int8 kernels, eligible for the fused step; the same weights on the exact fp32 path)."""
    config = tiny_config(variant.architecture, vocab_size=vocab_size, **variant.dims)
    weights = packed_weights(config, variant, seed)
    kernel, reference = DecoderModel(config), DecoderModel(config)
    kernel.load_weights(dict(weights))
    reference.load_weights(dict(weights))
    assert enable_quant_kernels(kernel) > 0
    return kernel.eval(), reference.eval()


@dataclass
class DecodeBatch:
    input_ids: torch.Tensor  # [M]
    positions: torch.Tensor  # [M]
    attn: AttentionMetadata
    caches: list[tuple[torch.Tensor, torch.Tensor]]  # random contents standing for earlier tokens


def decode_batch(
    config: ModelConfig, m: int, seed: int, block_size: int = 16, context_lens: list[int] | None = None
) -> DecodeBatch:
    """m one-token decodes with context lengths from 1 to 70 (block edges included), or the given ones, over
    shuffled blocks."""
    rng = np.random.default_rng(seed)
    if context_lens is None:
        context_lens = [int(c) for c in rng.integers(1, 71, size=m)]
        context_lens[: min(m, 3)] = [1, block_size, block_size + 1][: min(m, 3)]
    blocks_per_seq = [-(-c // block_size) for c in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    order = rng.permutation(num_blocks)
    tables = torch.zeros(m, max(blocks_per_seq), dtype=torch.int64)  # padded with block 0, as the engine does
    used = 0
    for s, count in enumerate(blocks_per_seq):
        tables[s, :count] = torch.from_numpy(order[used : used + count])
        used += count
    last = [c - 1 for c in context_lens]
    slots = torch.tensor(
        [int(tables[s, p // block_size]) * block_size + p % block_size for s, p in enumerate(last)]
    )
    attn = AttentionMetadata(
        query_lens=[1] * m,
        context_lens=context_lens,
        query_start_loc=torch.arange(m + 1),
        context_lens_tensor=torch.tensor(context_lens),
        block_tables=tables,
        slot_mapping=slots,
        block_size=block_size,
    )
    caches = allocate_kv_caches(config, num_blocks, block_size, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    for keys, values in caches:
        keys.normal_(std=0.5, generator=gen)
        values.normal_(std=0.5, generator=gen)
    ids = torch.from_numpy(rng.integers(0, config.vocab_size, size=m))
    return DecodeBatch(ids, torch.tensor(last), attn, caches)


def verification_batch(
    config: ModelConfig,
    query_lens: list[int],
    seed: int,
    block_size: int = 16,
    cached: list[int] | None = None,
) -> DecodeBatch:
    """Sequences with q new tokens each (a drafted run, as speculative verification sends it, or a prefill chunk)
    over cached contexts of 1 to 50 tokens, or the given ones; blocks shuffled, so a run may cross a block edge."""
    rng = np.random.default_rng(seed)
    if cached is None:
        cached = [int(c) for c in rng.integers(1, 51, size=len(query_lens))]
    context_lens = [c + q for c, q in zip(cached, query_lens, strict=True)]
    blocks_per_seq = [-(-c // block_size) for c in context_lens]
    num_blocks = sum(blocks_per_seq) + 2
    order = rng.permutation(num_blocks)
    tables = torch.zeros(len(query_lens), max(blocks_per_seq), dtype=torch.int64)
    used = 0
    for s, count in enumerate(blocks_per_seq):
        tables[s, :count] = torch.from_numpy(order[used : used + count])
        used += count
    positions = [p for c, q in zip(cached, query_lens, strict=True) for p in range(c, c + q)]
    owners = [s for s, q in enumerate(query_lens) for _ in range(q)]
    slots = torch.tensor(
        [
            int(tables[s, p // block_size]) * block_size + p % block_size
            for s, p in zip(owners, positions, strict=True)
        ]
    )
    attn = AttentionMetadata(
        query_lens=list(query_lens),
        context_lens=context_lens,
        query_start_loc=torch.tensor([0, *np.cumsum(query_lens).tolist()]),
        context_lens_tensor=torch.tensor(context_lens),
        block_tables=tables,
        slot_mapping=slots,
        block_size=block_size,
    )
    caches = allocate_kv_caches(config, num_blocks, block_size, torch.float32, "cpu")
    gen = torch.Generator().manual_seed(seed)
    for keys, values in caches:
        keys.normal_(std=0.5, generator=gen)
        values.normal_(std=0.5, generator=gen)
    ids = torch.from_numpy(rng.integers(0, config.vocab_size, size=len(positions)))
    return DecodeBatch(ids, torch.tensor(positions), attn, caches)


def forward(
    model: DecoderModel,
    batch: DecodeBatch,
    fused: bool,
    lora: LoraContext | None = None,
    caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], ForwardPath]:
    """The batch as the engine's runner runs it, with the fused decode step allowed or not, on copies of
    `caches` (the batch's own by default): the hidden states, the caches it wrote, and the path it took."""
    caches = [(k.clone(), v.clone()) for k, v in (batch.caches if caches is None else caches)]
    with torch.inference_mode():
        hidden, path = NetworkForward(model, fused_decode=fused)(
            batch.input_ids, batch.positions, batch.attn, caches, lora
        )
    return hidden, caches, path


def row_errors(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (ours - reference).norm(dim=-1) / reference.norm(dim=-1)  # [M]


def random_adapter(
    model: DecoderModel, name: str, rank: int, modules: tuple[str, ...], seed: int, strength: float
) -> LoraAdapter:
    """What a fine-tuning job hands the engine (TrainableLora.to_adapter), with B random (std strength / sqrt(rank))
    instead of zero, so the deltas move the hidden states visibly; alpha 2 * rank (scaling 2)."""
    trainable = attach_trainable_lora(model, rank, 2.0 * rank, 0.0, modules, seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for b in trainable.lora_B.values():
            b.copy_(torch.randn(b.shape, generator=gen) * strength / rank**0.5)
    return trainable.to_adapter(name)


def adapters_for(model: DecoderModel, seed: int, strength: float) -> list[LoraAdapter]:
    """Rank 1 on every projection; rank 8 on q, v, down (q|k|v with a hole), down left out in layer 0 (a module
    PEFT's layers_to_transform skips in one layer); rank 16 on k, o, gate, up."""
    qvd = random_adapter(model, "qvd-r8", 8, ("q_proj", "v_proj", "down_proj"), seed + 1, strength)
    del qvd.weights[(0, "down_proj")]
    return [
        random_adapter(model, "all-r1", 1, ALL, seed, strength),
        qvd,
        random_adapter(
            model, "kogu-r16", 16, ("k_proj", "o_proj", "gate_proj", "up_proj"), seed + 2, strength
        ),
    ]
