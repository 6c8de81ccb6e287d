"""The fused decode step's attention phase on its own (ember.kernels.decode_attention), on every instruction set
this CPU runs and every KV format, against an fp64 softmax attention over the cache's decoded rows: fresh random
queries and caches, contexts that end on, just past and just before block and tile edges, GQA groups that fill a
pass of 4 heads, leave a remainder or need two passes, head_dims the 16-wide registers split unevenly (on AVX2)
or fit, several tokens of different lengths in one call, blocks in shuffled order, explicit and automatic splits
over one and two threads."""

from __future__ import annotations

import pytest
import torch

from ember.kernels.decode_attention import attention_isas, attention_runs, decode_attention
from ember.models.kv_cache_format import BF16, FP16, FP32, Q8_0, KVCacheFormat

ISAS = tuple(attention_isas())
FORMATS = (FP32, FP16, BF16, Q8_0)
BLOCK_SIZE = 16
# (num_heads, num_kv_heads, head_dim): groups 1, 3 (SmolLM2), 4, 7 (Qwen2.5-0.5B: a pass of 4 and one of 3) and 9.
SHAPES = ((2, 2, 16), (9, 3, 64), (8, 2, 32), (14, 2, 64), (9, 1, 128), (6, 2, 24), (4, 4, 8))
# Lengths per token in one call: 1, block edges (16, 17, 33), tile edges (31, 32, 65) and a long odd one.
CONTEXTS = (1, 16, 17, 31, 32, 33, 65, 300, 1037)

pytestmark = pytest.mark.skipif(not ISAS, reason="the native kernels are not built for this CPU")


def reference(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    table: torch.Tensor,
    lens: list[int],
    scale: float,
) -> torch.Tensor:
    """fp64 softmax(scale q k^T) v per token over keys / values [num_blocks, block_size, kv_heads, head_dim]."""
    m, num_heads, head_dim = q.shape
    group = num_heads // keys.shape[2]
    out = torch.empty(m, num_heads, head_dim, dtype=torch.float64)
    for t, length in enumerate(lens):
        positions = torch.arange(length)
        slots = table[t, positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
        k = keys.flatten(0, 1)[slots].double().repeat_interleave(group, dim=1)  # [len, heads, head_dim]
        v = values.flatten(0, 1)[slots].double().repeat_interleave(group, dim=1)
        weights = torch.softmax(scale * torch.einsum("hd,lhd->hl", q[t].double(), k), dim=-1)  # [heads, len]
        out[t] = torch.einsum("hl,lhd->hd", weights, v)
    return out


def check(
    fmt: KVCacheFormat, isa: str, shape: tuple[int, int, int], lens: list[int], threads: int, splits: int
) -> None:
    num_heads, num_kv_heads, head_dim = shape
    if isa == "avx512" and head_dim % 16:
        with pytest.raises(ValueError, match="multiple of 16"):
            run(fmt, isa, shape, lens, threads, splits)
        return
    run(fmt, isa, shape, lens, threads, splits)


def run(
    fmt: KVCacheFormat, isa: str, shape: tuple[int, int, int], lens: list[int], threads: int, splits: int
) -> None:
    num_heads, num_kv_heads, head_dim = shape
    per_token = [-(-length // BLOCK_SIZE) for length in lens]
    num_blocks = sum(per_token) + 3  # spare blocks nobody reads
    # Rows with a spread of magnitudes, so the softmax is neither flat nor one-hot.
    raw = (
        torch.randn(2, num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
        * torch.rand(1, 1, 1, num_kv_heads, 1)
        * 3
    )
    keys, values = fmt.encode(raw[0]).contiguous(), fmt.encode(raw[1]).contiguous()
    order = torch.randperm(num_blocks)
    table = torch.full((len(lens), max(per_token) + 2), -1, dtype=torch.int64)  # unused entries stay invalid
    taken = 0
    for t, used in enumerate(per_token):
        table[t, :used] = order[taken : taken + used]
        taken += used
    q = torch.randn(len(lens), num_heads, head_dim)
    scale = head_dim**-0.5
    got = decode_attention(q, keys, values, table, torch.tensor(lens), scale, isa, threads, splits)
    assert_matches_reference(got, q, keys, values, fmt, table, lens, scale)


def assert_matches_reference(
    got: torch.Tensor,
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    fmt: KVCacheFormat,
    table: torch.Tensor,
    lens: list[int],
    scale: float,
) -> None:
    head_dim = q.shape[2]
    want = reference(
        q,
        fmt.decode(keys, head_dim, torch.float64),
        fmt.decode(values, head_dim, torch.float64),
        table,
        lens,
        scale,
    )
    # Same stored values, fp32 sums in another order (and q8_0's scale applied after the dot product).
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}q{s[1]}kv{s[2]}")
def test_every_shape_and_format_matches_the_fp64_reference(
    isa: str, fmt: KVCacheFormat, shape: tuple[int, int, int]
) -> None:
    # Every context length in one call, each token with its own length and blocks; automatic splits.
    check(fmt, isa, shape, list(CONTEXTS), threads=2, splits=0)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("splits", (1, 3, 7))
@pytest.mark.parametrize("threads", (1, 2))
def test_splits_merge_to_the_same_attention(isa: str, splits: int, threads: int) -> None:
    # More splits than a short context has positions leaves empty splits, which the merge must skip.
    check(Q8_0 if splits == 3 else FP16, isa, (9, 3, 64), [5, 777, 64], threads, splits)


@pytest.mark.parametrize("isa", ISAS)
def test_a_tokens_attention_has_the_same_bits_alone_or_in_any_batch(isa: str) -> None:
    # Speculative verification sends k + 1 tokens of one sequence in one step, and promises the output plain
    # decoding gives: each token's splits (its summation order) must follow its own context length alone.
    torch.manual_seed(3)
    lens = [1037, 5, 700, 300, 260, 16]
    num_heads, num_kv_heads, head_dim = 9, 3, 64
    per_token = [-(-length // BLOCK_SIZE) for length in lens]
    raw = torch.randn(2, sum(per_token), BLOCK_SIZE, num_kv_heads, head_dim)
    keys, values = FP16.encode(raw[0]).contiguous(), FP16.encode(raw[1]).contiguous()
    table = torch.full((len(lens), max(per_token)), -1, dtype=torch.int64)
    starts = [sum(per_token[:t]) for t in range(len(lens))]
    for t, used in enumerate(per_token):
        table[t, :used] = torch.arange(starts[t], starts[t] + used)
    q = torch.randn(len(lens), num_heads, head_dim)
    scale = head_dim**-0.5
    batched = decode_attention(q, keys, values, table, torch.tensor(lens), scale, isa, 2, 0)
    for t, length in enumerate(lens):
        for threads in (1, 2):
            alone = decode_attention(
                q[t : t + 1], keys, values, table[t : t + 1], torch.tensor([length]), scale, isa, threads, 0
            )
            assert torch.equal(alone[0], batched[t]), (t, length, threads)


# (context lengths of k + 1 rows of one sequence, threads, the rows of each work item): rows across tile edges at
# 32 and 64; rows that cross 512, where the contexts are cut in two (505..511 one split, 512..520 two, cut at 256);
# rows in three splits cut at 320 and 672 (1005 is cut at 640: an item of its own) and from 1024 on in four; and
# a run longer than a work item may be, cut into items.
SEQUENCE_ROWS = (
    (list(range(20, 70, 3)), 2, [4, 4, 4, 4, 1]),
    (list(range(505, 521)), 1, [7, 8, 1]),
    (list(range(1005, 1050, 5)), 2, [1, 3, 5]),
    (list(range(300, 316)), 2, [4, 4, 4, 4]),
)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("case", range(len(SEQUENCE_ROWS)))
def test_rows_of_one_sequence_share_work_items_and_each_keeps_its_bits(
    isa: str, fmt: KVCacheFormat, case: int
) -> None:
    # Speculative verification sends k + 1 new tokens of one sequence: they share work items (each key and value
    # row of the context read once for all of them), yet each must give exactly what it gives alone.
    lens, threads, runs = SEQUENCE_ROWS[case]
    torch.manual_seed(11 + case)
    num_heads, num_kv_heads, head_dim = 9, 3, 64
    num_blocks = -(-max(lens) // BLOCK_SIZE) + 2
    raw = torch.randn(2, num_blocks, BLOCK_SIZE, num_kv_heads, head_dim) * 2
    keys, values = fmt.encode(raw[0]).contiguous(), fmt.encode(raw[1]).contiguous()
    table = torch.randperm(num_blocks).unsqueeze(0).repeat(len(lens), 1).contiguous()
    context_lens = torch.tensor(lens)
    assert attention_runs(table, context_lens, BLOCK_SIZE, threads) == runs
    q = torch.randn(len(lens), num_heads, head_dim)
    scale = head_dim**-0.5
    together = decode_attention(q, keys, values, table, context_lens, scale, isa, threads)
    for t, length in enumerate(lens):
        alone = decode_attention(
            q[t : t + 1], keys, values, table[t : t + 1], context_lens[t : t + 1], scale, isa
        )
        assert torch.equal(alone[0], together[t]), (t, length)
    assert_matches_reference(together, q, keys, values, fmt, table, lens, scale)


def test_rows_of_different_sequences_do_not_share_a_work_item() -> None:
    # Same lengths, other blocks: each row reads its own context.
    if not ISAS:
        pytest.skip("the native kernels are not built for this CPU")
    table = torch.arange(8 * 20).reshape(8, 20).contiguous()
    assert attention_runs(table, torch.full((8,), 300), BLOCK_SIZE, 1) == [1] * 8
    shared = torch.arange(20).repeat(8, 1).contiguous()
    assert attention_runs(shared, torch.full((8,), 300), BLOCK_SIZE, 1) == [4, 4]


def test_an_unknown_instruction_set_is_refused() -> None:
    q = torch.randn(1, 2, 16)
    cache = torch.zeros(1, BLOCK_SIZE, 1, 16)
    with pytest.raises(ValueError, match="not 'sse2'"):
        decode_attention(
            q, cache, cache, torch.zeros(1, 1, dtype=torch.int64), torch.tensor([1]), 0.25, "sse2"
        )
