"""Exact block ids, ref counts and eviction order of the block manager, driven the way the scheduler drives it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ember.engine.block_manager import BlockManager
from ember.engine.engine_config import CacheConfig
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import Sequence


def make_sequence(
    sequence_id: str,
    tokens: list[int],
    lora_key: str | None = None,
    cache_salt: str | None = None,
    prompt_logprobs: int | None = None,
) -> Sequence:
    return Sequence(
        sequence_id=sequence_id,
        prompt_token_ids=tokens,
        sampling_params=SamplingParams(prompt_logprobs=prompt_logprobs),
        max_tokens=16,
        arrival_time=0.0,
        lora_key=lora_key,
        cache_salt=cache_salt,
    )


def admit(manager: BlockManager, sequence: Sequence) -> bool:
    """Take the cached prefix and allocate the rest of the sequence, as the scheduler does for a new sequence."""
    computed, num_cached = manager.get_computed_blocks(sequence)
    if not manager.allocate_slots(sequence, sequence.num_tokens - num_cached, computed):
        return False
    sequence.num_computed_tokens = sequence.num_tokens
    sequence.num_cached_tokens = num_cached
    return True


def decode(manager: BlockManager, sequence: Sequence, token_id: int) -> bool:
    sequence.append_output_token(token_id)
    if not manager.allocate_slots(sequence, 1):
        return False
    sequence.num_computed_tokens += 1
    return True


def test_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import ember.engine.block_manager, ember.engine.scheduler, ember.engine.sequence\n"
        "import ember.engine.kv_block, ember.engine.prefix_hash, ember.engine.engine_config\n"
        "import ember.engine.scheduler_output\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_blocks_handed_out_lowest_free_first_then_least_recently_freed_cached() -> None:
    manager = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    assert manager.num_free_blocks == 7  # block 0 is the reserved null block
    a = make_sequence("a", list(range(10)))  # 2 full blocks + 2 tokens
    b = make_sequence("b", list(range(100, 105)))
    assert admit(manager, a) and admit(manager, b)
    assert manager.block_ids("a") == [1, 2, 3]
    assert manager.block_ids("b") == [4, 5]

    manager.free(a)  # full blocks 1, 2 stay cached; partial block 3 goes back to the free list
    assert manager.is_cached(1) and manager.is_cached(2) and not manager.is_cached(3)
    assert manager.num_free_blocks == 5
    c = make_sequence("c", [7, 7, 7])
    assert admit(manager, c)
    assert manager.block_ids("c") == [3]

    # free list {6, 7} first, then eviction: a freed tail first, so block 2 goes before block 1
    d = make_sequence("d", list(range(200, 212)))
    assert admit(manager, d)
    assert manager.block_ids("d") == [6, 7, 2]
    assert manager.get_computed_blocks(make_sequence("probe", list(range(10)))) == ([1], 4)
    manager.check_invariants()


def test_shared_prefix_ref_counts_and_hits() -> None:
    manager = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prompt = list(range(12))
    a = make_sequence("a", prompt)
    assert admit(manager, a)
    assert manager.block_ids("a") == [1, 2, 3]

    b = make_sequence("b", prompt + [50, 51])
    assert manager.get_computed_blocks(b) == ([1, 2, 3], 12)
    assert admit(manager, b)
    assert b.num_cached_tokens == 12
    assert manager.block_ids("b") == [1, 2, 3, 4]
    assert [manager.ref_count(i) for i in range(1, 5)] == [2, 2, 2, 1]
    stats = manager.prefix_cache_stats
    assert (stats.queries, stats.hits) == (12 + 14, 12)

    manager.free(a)
    assert [manager.ref_count(i) for i in range(1, 5)] == [1, 1, 1, 1]
    assert manager.num_free_blocks == 5  # nothing of a's became free: b still holds it
    manager.free(b)
    assert manager.num_free_blocks == 9 and manager.usage == 0.0
    manager.check_invariants()


def test_whole_prompt_is_never_a_hit() -> None:
    manager = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    assert admit(manager, make_sequence("a", list(range(8))))
    again = make_sequence("b", list(range(8)))
    # both blocks are cached, but the last token must be computed to have logits to sample from
    assert manager.get_computed_blocks(again) == ([1], 4)
    assert admit(manager, again)
    assert manager.block_ids("b") == [1, 3]
    assert not manager.is_cached(3)  # block 2 already holds that prefix; the duplicate stays private
    manager.check_invariants()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"lora_key": "math"}, {"lora_key": None}),
        ({"lora_key": "math"}, {"lora_key": "code"}),
        ({"cache_salt": "tenant-1"}, {"cache_salt": "tenant-2"}),
        ({"cache_salt": "tenant-1"}, {}),
        ({"cache_salt": ""}, {}),
    ],
)
def test_different_adapter_or_salt_never_shares(
    first: dict[str, str | None], second: dict[str, str | None]
) -> None:
    manager = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prompt = list(range(13))
    assert admit(manager, make_sequence("a", prompt, **first))
    assert manager.get_computed_blocks(make_sequence("b", prompt, **second)) == ([], 0)
    assert manager.get_computed_blocks(make_sequence("c", prompt, **first)) == ([1, 2, 3], 12)


def test_prompt_logprobs_requests_skip_hits() -> None:
    manager = BlockManager(num_blocks=10, block_size=4, enable_prefix_caching=True)
    prompt = list(range(13))
    assert admit(manager, make_sequence("a", prompt))
    wanting_logprobs = make_sequence("b", prompt, prompt_logprobs=0)
    assert manager.get_computed_blocks(wanting_logprobs) == ([], 0)
    assert admit(manager, wanting_logprobs)
    assert manager.block_ids("b") == [5, 6, 7, 8]


def test_lru_eviction_order_of_freed_cached_blocks() -> None:
    manager = BlockManager(num_blocks=7, block_size=2, enable_prefix_caching=True)
    prompts = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8], "c": [9, 10, 11, 12]}
    sequences = {name: make_sequence(name, tokens) for name, tokens in prompts.items()}
    for sequence in sequences.values():
        assert admit(manager, sequence)
    assert [manager.block_ids(name) for name in "abc"] == [[1, 2], [3, 4], [5, 6]]
    for name in "acb":
        manager.free(sequences[name])
    assert manager.num_free_blocks == 6 and manager.usage == 0.0

    # free list is empty: evict least recently freed first (a's tail block, then a's head, then c's tail)
    evicted_into = []
    for index in range(3):
        fresh = make_sequence(f"new{index}", [90 + index])
        assert admit(manager, fresh)
        evicted_into += manager.block_ids(fresh.sequence_id)
    assert evicted_into == [2, 1, 6]

    def probe(name: str) -> tuple[list[int], int]:
        return manager.get_computed_blocks(make_sequence("probe", prompts[name] + [0]))

    assert probe("a") == ([], 0)
    assert probe("c") == ([5], 2)  # the chain stops at the evicted block 6
    assert probe("b") == ([3, 4], 4)

    # a hit takes b's blocks out of the evictable set; the next eviction is c's remaining block
    reuse = make_sequence("reuse", prompts["b"] + [0])
    assert admit(manager, reuse)
    assert manager.block_ids("reuse") == [3, 4, 5]
    assert probe("c") == ([], 0)
    manager.check_invariants()


def test_partial_block_is_shared_only_once_full() -> None:
    manager = BlockManager(num_blocks=12, block_size=4, enable_prefix_caching=True)
    a = make_sequence("a", list(range(6)))
    assert admit(manager, a)
    follower = list(range(6)) + [60, 61, 62]
    assert manager.get_computed_blocks(make_sequence("b", follower)) == ([1], 4)
    assert not manager.is_cached(2)

    # a decodes two tokens: its second block becomes full and enters the cache
    assert decode(manager, a, 6) and decode(manager, a, 7)
    assert manager.is_cached(2)
    assert manager.get_computed_blocks(make_sequence("c", list(range(8)) + [1])) == ([1, 2], 8)
    assert manager.get_computed_blocks(make_sequence("d", follower)) == ([1], 4)


def test_failed_allocation_changes_nothing() -> None:
    manager = BlockManager(num_blocks=5, block_size=4, enable_prefix_caching=True)
    shared = list(range(8))
    a = make_sequence("a", shared + [8])
    assert admit(manager, a)
    assert manager.block_ids("a") == [1, 2, 3]
    manager.free(a)  # blocks 2, 1 evictable; 3 free

    big = make_sequence("big", shared + list(range(100, 109)))  # 17 tokens: 5 blocks, the cache has 4
    computed, num_cached = manager.get_computed_blocks(big)
    assert (computed, num_cached) == ([1, 2], 8)
    assert not manager.allocate_slots(big, big.num_tokens - num_cached, computed)
    assert manager.block_ids("big") == []
    assert manager.num_free_blocks == 4
    assert manager.ref_count(1) == 0 and manager.ref_count(2) == 0
    assert manager.prefix_cache_stats.queries == 9  # the failed attempt is not counted
    assert manager.get_computed_blocks(make_sequence("again", shared + [0])) == ([1, 2], 8)
    manager.check_invariants()

    # revived cached blocks count once: 2 hits + 2 new blocks fill the 4 usable blocks exactly
    fits = make_sequence("fits", shared + list(range(100, 107)))  # 15 tokens: 4 blocks, 2 of them hits
    assert admit(manager, fits)
    assert manager.block_ids("fits") == [1, 2, 3, 4]
    assert manager.num_free_blocks == 0
    manager.check_invariants()


def test_free_returns_every_block_and_preempted_step_blocks_are_not_cached() -> None:
    manager = BlockManager(num_blocks=9, block_size=4, enable_prefix_caching=True)
    a = make_sequence("a", list(range(10)))
    assert admit(manager, a)
    b = make_sequence("b", list(range(100, 112)))
    # scheduled 8 tokens but preempted before its step ran: num_computed_tokens stayed 0
    assert manager.allocate_slots(b, 8)
    assert manager.is_cached(manager.block_ids("b")[0])
    manager.free(b)
    assert manager.get_computed_blocks(make_sequence("probe", list(range(100, 112)))) == ([], 0)

    manager.free(a, keep_cached=False)  # after a failed step nothing of a's may be reused
    assert manager.get_computed_blocks(make_sequence("probe", list(range(10)))) == ([], 0)
    assert manager.num_free_blocks == 8 and manager.usage == 0.0
    manager.check_invariants()


def test_reset_prefix_cache_forgets_everything() -> None:
    manager = BlockManager(num_blocks=9, block_size=4, enable_prefix_caching=True)
    a = make_sequence("a", list(range(9)))
    held = make_sequence("held", list(range(50, 59)))
    assert admit(manager, a) and admit(manager, held)
    manager.free(a)
    manager.reset_prefix_cache()
    assert manager.get_computed_blocks(make_sequence("x", list(range(9)))) == ([], 0)
    assert manager.get_computed_blocks(make_sequence("y", list(range(50, 59)))) == ([], 0)
    manager.free(held)
    assert manager.num_free_blocks == 8
    manager.check_invariants()


def test_prefix_caching_disabled_never_hits() -> None:
    manager = BlockManager(num_blocks=9, block_size=4, enable_prefix_caching=False)
    a = make_sequence("a", list(range(9)))
    assert admit(manager, a)
    manager.free(a)
    assert manager.get_computed_blocks(make_sequence("b", list(range(9)))) == ([], 0)
    assert not any(manager.is_cached(i) for i in range(9))
    assert manager.prefix_cache_stats.queries == 0


def test_invalid_use_raises_value_error() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(num_blocks=1, block_size=4, enable_prefix_caching=True)
    with pytest.raises(ValueError, match="block_size"):
        CacheConfig(block_size=0)
    with pytest.raises(ValueError, match="num_blocks"):
        CacheConfig(num_blocks=1)
    manager = BlockManager(num_blocks=9, block_size=4, enable_prefix_caching=True)
    sequence = make_sequence("a", [1, 2, 3])
    with pytest.raises(ValueError, match="cannot schedule up to token 4"):
        manager.allocate_slots(sequence, 4)
    with pytest.raises(ValueError, match="num_new_tokens"):
        manager.allocate_slots(sequence, 0)
    with pytest.raises(ValueError, match="prompt has no tokens"):
        make_sequence("empty", [])
