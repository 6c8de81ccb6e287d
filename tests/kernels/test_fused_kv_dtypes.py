"""The fused decode step's flash-decoding attention over every KV cache format (fp32, fp16, bf16, q8_0), against
the module path on the same cache (the torch reference attention, same int8 activations) and the exact fp32 model
over the cache's decoded values: awkward shapes (head_dim 16 / 64 / 128, GQA groups 1 / 3 / 4, odd contexts, block
edges), long contexts split across threads, speculative verification rows; and the accuracy guard: teacher-forced
top-1 agreement with fp32 KV over a long prompt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from fused_models import (
    VARIANTS,
    DecodeBatch,
    Variant,
    build_models,
    decode_batch,
    forward,
    row_errors,
    verification_batch,
)

from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.models.attention_metadata import AttentionMetadata
from ember.models.fused_decode import takes_run
from ember.models.kv_cache import allocate_kv_caches
from ember.models.kv_cache_format import BF16, FP16, FP32, Q8_0, KVCacheFormat
from ember.models.llama import DecoderModel

pytestmark = pytest.mark.usefixtures("fused_decode_kernels")

FORMATS = (FP32, FP16, BF16, Q8_0)
HEAD_DIM_128 = Variant(
    "llama-hd128",
    "llama",
    dict(hidden_size=256, intermediate_size=256, num_heads=6, num_kv_heads=2, head_dim=128),
    {p: "Q8_0" for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")},
)
# head_dim 16 groups of 3; head_dim 16 no grouping; head_dim 64 groups of 4; head_dim 128 groups of 3.
SHAPES = (VARIANTS[0], VARIANTS[1], VARIANTS[2], HEAD_DIM_128)
# Long contexts, split (contexts, threads): one across two threads that each keep their own rows (the new token's
# key and value from its own copy); two of different lengths on one thread.
LONG_CONTEXTS = (([1037], 2), ([777, 300], 1))
LONG_SHAPES = (VARIANTS[2], HEAD_DIM_128)


@pytest.fixture(scope="module", params=SHAPES, ids=lambda v: v.name)
def models(request: pytest.FixtureRequest) -> tuple[DecoderModel, DecoderModel]:
    return build_models(request.param)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def in_format(batch: DecodeBatch, kv_format: KVCacheFormat) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(kv_format.encode(k), kv_format.encode(v)) for k, v in batch.caches]


def check_against_references(
    kernel: DecoderModel, reference: DecoderModel, batch: DecodeBatch, kv_format: KVCacheFormat
) -> None:
    head_dim = kernel.config.head_dim
    compact = in_format(batch, kv_format)
    fused, fused_caches, path = forward(kernel, batch, fused=True, caches=compact)
    assert path is ForwardPath.FUSED
    modules, module_caches, path = forward(kernel, batch, fused=False, caches=compact)
    assert path is ForwardPath.MODULES
    # Same cache, same int8 activations: only the summation order differs (flash-decoding's tiles and splits).
    assert float(row_errors(fused, modules).max()) < 0.01
    # Against the exact fp32 model over an fp32 cache of the same stored values: the int8 activations' error.
    decoded = [
        (kv_format.decode(k, head_dim, torch.float32), kv_format.decode(v, head_dim, torch.float32))
        for k, v in compact
    ]
    exact, _, _ = forward(reference, batch, fused=False, caches=decoded)
    assert float(row_errors(fused, exact).median()) < 0.03
    # The new tokens' rows, stored by each path, hold the same values (to the format's step).
    written = batch.attn.slot_mapping
    tolerance = {FP32: 1e-4, FP16: 2e-3, BF16: 2e-2, Q8_0: 2e-2}[kv_format]
    for (fk, fv), (mk, mv) in zip(fused_caches, module_caches, strict=True):
        for ours, theirs in ((fk, mk), (fv, mv)):
            a = kv_format.decode(ours.flatten(0, 1)[written], head_dim, torch.float32)
            b = kv_format.decode(theirs.flatten(0, 1)[written], head_dim, torch.float32)
            assert float((a - b).abs().max()) <= tolerance * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("kv_format", FORMATS, ids=lambda f: f.name)
def test_fused_decodes_over_every_kv_format(
    models: tuple[DecoderModel, DecoderModel], kv_format: KVCacheFormat
) -> None:
    """Block edges and odd lengths, five rows shared by two threads."""
    kernel, reference = models
    batch = decode_batch(kernel.config, 5, seed=5, context_lens=[1, 16, 17, 45, 33])
    with torch_threads(2):
        check_against_references(kernel, reference, batch, kv_format)


@pytest.mark.parametrize("models", LONG_SHAPES, indirect=True, ids=lambda v: v.name)
@pytest.mark.parametrize("kv_format", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("contexts,threads", LONG_CONTEXTS, ids=["1037-2threads", "777-300-1thread"])
def test_long_contexts_split_across_threads(
    models: tuple[DecoderModel, DecoderModel], kv_format: KVCacheFormat, contexts: list[int], threads: int
) -> None:
    kernel, reference = models
    batch = decode_batch(kernel.config, len(contexts), seed=len(contexts), context_lens=contexts)
    with torch_threads(threads):
        check_against_references(kernel, reference, batch, kv_format)


@pytest.mark.parametrize("models", (VARIANTS[0], HEAD_DIM_128), indirect=True, ids=lambda v: v.name)
@pytest.mark.parametrize("kv_format", FORMATS[1:], ids=lambda f: f.name)
def test_verification_rows_over_a_compact_cache(
    models: tuple[DecoderModel, DecoderModel], kv_format: KVCacheFormat
) -> None:
    """Several new tokens of one sequence read each other's freshly stored rows from the compact cache (the
    threads share rows then, as with one thread)."""
    kernel, reference = models
    batch = verification_batch(kernel.config, [5, 1, 3], seed=1)
    with torch_threads(1):
        check_against_references(kernel, reference, batch, kv_format)


def _teacher_forced_top1(
    model: DecoderModel, ids: list[int], prompt_len: int, kv_format: KVCacheFormat
) -> list[int]:
    """The argmax after every position from the first chunk's end on: the prompt prefilled in 64-token chunks
    over the cache (the fused step while the context is short, then the module path, reading earlier chunks'
    stored rows), then one fused decode per token."""
    forward = NetworkForward(model)
    block_size = 16
    table = torch.arange(-(-len(ids) // block_size))
    caches = allocate_kv_caches(model.config, len(table), block_size, kv_format, "cpu")
    top: list[int] = []

    def step(start: int, end: int) -> torch.Tensor:
        attn = AttentionMetadata(
            query_lens=[end - start],
            context_lens=[end],
            query_start_loc=torch.tensor([0, end - start]),
            context_lens_tensor=torch.tensor([end]),
            block_tables=table[None],
            slot_mapping=torch.arange(start, end),
            block_size=block_size,
        )
        hidden, path = forward(torch.tensor(ids[start:end]), torch.arange(start, end), attn, caches)
        # decodes and chunks within MAX_CHUNK_CONTEXT run fused, longer ones on the modules
        fused = takes_run(end - start, end)
        assert (path is ForwardPath.FUSED) == fused, "the fused step's runs fused, the rest on the modules"
        return model.compute_logits(hidden).argmax(dim=-1)

    with torch.inference_mode():
        for start in range(0, prompt_len, 64):
            chunk_top = step(start, min(prompt_len, start + 64))
            if start > 0:
                top += chunk_top.tolist()
        top += [int(step(p, p + 1)) for p in range(prompt_len, len(ids))]
    return top


@pytest.fixture(scope="module")
def guard_model() -> tuple[DecoderModel, list[int], list[int]]:
    """A tiny packed model (head_dim 64, GQA groups of 4), a 1000-token random text, and the fp32-KV top-1s."""
    kernel, _ = build_models(VARIANTS[2], seed=3)
    ids = torch.randint(
        0, kernel.config.vocab_size, (1000,), generator=torch.Generator().manual_seed(5)
    ).tolist()
    return kernel, ids, _teacher_forced_top1(kernel, ids, 896, FP32)


@pytest.mark.parametrize(
    "kv_format,floor", [(FP16, 0.99), (BF16, 0.99), (Q8_0, 0.98)], ids=["fp16", "bf16", "q8_0"]
)
def test_accuracy_guard_top1_agreement_with_fp32_kv(
    guard_model: tuple[DecoderModel, list[int], list[int]], kv_format: KVCacheFormat, floor: float
) -> None:
    kernel, ids, reference = guard_model
    ours = _teacher_forced_top1(kernel, ids, 896, kv_format)
    same = sum(a == b for a, b in zip(ours, reference, strict=True))
    assert same / len(reference) >= floor, (
        f"{kv_format.name}: {same}/{len(reference)} top-1 agree with fp32 KV"
    )
