"""The scheduler driven by a fake model that appends a deterministic token to every sequence it samples."""

from __future__ import annotations

import random
import zlib

import pytest

from ember.engine import block_manager as block_manager_module
from ember.engine.engine_config import BACKGROUND_PRIORITY, CacheConfig, SchedulerConfig
from ember.engine.errors import QueueFullError
from ember.engine.prefix_hash import hash_block
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.scheduler_output import SchedulerOutput
from ember.engine.sequence import Sequence, SequenceStatus


def make_scheduler(block_size: int = 4, num_blocks: int = 64, **limits: int | str) -> Scheduler:
    config = {"max_num_seqs": 8, "max_num_batched_tokens": 64, "max_model_len": 128, **limits}
    return Scheduler(SchedulerConfig(**config), CacheConfig(block_size=block_size, num_blocks=num_blocks))  # type: ignore[arg-type]


def make_sequence(
    sequence_id: str,
    prompt: list[int],
    max_tokens: int = 16,
    arrival_time: float = 0.0,
    priority: int = 0,
    prompt_logprobs: int | None = None,
) -> Sequence:
    return Sequence(
        sequence_id=sequence_id,
        prompt_token_ids=prompt,
        sampling_params=SamplingParams(prompt_logprobs=prompt_logprobs),
        max_tokens=max_tokens,
        arrival_time=arrival_time,
        priority=priority,
    )


def fake_token(sequence: Sequence) -> int:
    """What the fake model samples: a function of the sequence and position, so recomputation repeats it."""
    return zlib.crc32(f"{sequence.sequence_id}:{sequence.num_tokens}".encode()) % 1000


def step(scheduler: Scheduler) -> SchedulerOutput:
    output = scheduler.schedule()
    for scheduled in output.scheduled:
        if scheduled.sample:
            sequence = scheduler.get_sequence(scheduled.sequence_id)
            assert sequence is not None
            sequence.append_output_token(fake_token(sequence))
    return output


def shape(output: SchedulerOutput) -> list[tuple[str, int, int]]:
    return [(s.sequence_id, s.start_position, len(s.token_ids)) for s in output.scheduled]


def test_budget_split_between_decodes_and_a_chunked_prefill() -> None:
    scheduler = make_scheduler(max_num_batched_tokens=16)
    for name in "abc":
        scheduler.add_sequence(make_sequence(name, [1, 2, 3], max_tokens=50))
    assert shape(step(scheduler)) == [("a", 0, 3), ("b", 0, 3), ("c", 0, 3)]
    long_prompt = list(range(100, 140))
    scheduler.add_sequence(make_sequence("d", long_prompt))

    chunks = []
    for index, expected_start in enumerate((0, 13, 26)):
        output = step(scheduler)
        decodes = [(name, 3 + index, 1) for name in "abc"]
        assert shape(output) == decodes + [("d", expected_start, 13)]
        assert output.num_batched_tokens == 16 and not output.scheduled[3].sample
        chunks += output.scheduled[3].token_ids
    output = step(scheduler)
    assert [len(s.token_ids) for s in output.scheduled] == [1, 1, 1, 1]
    d = output.scheduled[3]
    assert (d.start_position, d.sample, d.token_ids) == (39, True, [139])
    assert chunks + d.token_ids == long_prompt

    decode = step(scheduler).scheduled[3]
    request_d = scheduler.get_sequence("d")
    assert request_d is not None
    assert (decode.start_position, decode.token_ids) == (40, [request_d.output_token_ids[0]])
    assert len(decode.block_ids) == 11  # 41 tokens in blocks of 4


def test_max_num_seqs_caps_running_requests() -> None:
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        scheduler.add_sequence(make_sequence(name, [5, 6, 7]))
    assert [s.sequence_id for s in step(scheduler).scheduled] == ["a", "b"]
    assert (scheduler.num_running, scheduler.num_waiting) == (2, 1)
    assert [s.sequence_id for s in step(scheduler).scheduled] == ["a", "b"]
    scheduler.finish_sequence("a", SequenceStatus.FINISHED_STOPPED)
    output = step(scheduler)
    assert [s.sequence_id for s in output.scheduled] == ["b", "c"]
    assert output.finished_ids == ["a"]


def test_preemption_takes_the_latest_arrival_which_later_resumes_with_its_tokens() -> None:
    scheduler = make_scheduler(block_size=2, num_blocks=7)  # 6 usable blocks
    for index, name in enumerate("abc"):
        prompt = [10 * index + i for i in range(4)]
        scheduler.add_sequence(make_sequence(name, prompt, max_tokens=8, arrival_time=float(index)))
    assert shape(step(scheduler)) == [("a", 0, 4), ("b", 0, 4), ("c", 0, 4)]
    assert scheduler.block_manager.num_free_blocks == 0

    # every sequence needs a third block; a and b get them by preempting c, the latest arrival
    output = step(scheduler)
    assert shape(output) == [("a", 4, 1), ("b", 4, 1)]
    assert output.preempted_ids == ["c"]
    c = scheduler.get_sequence("c")
    assert c is not None
    assert (c.status, c.num_computed_tokens, c.num_preemptions) == (SequenceStatus.PREEMPTED, 0, 1)
    assert scheduler.block_manager.block_ids("c") == []
    tokens_of_c = list(c.all_token_ids)
    assert len(tokens_of_c) == 5  # prompt + the token sampled before the preemption

    scheduler.finish_sequence("a", SequenceStatus.FINISHED_STOPPED)
    scheduler.finish_sequence("b", SequenceStatus.FINISHED_LENGTH)
    resumed = step(scheduler).scheduled
    assert [(s.sequence_id, s.start_position, s.token_ids, s.sample) for s in resumed] == [
        ("c", 0, tokens_of_c, True)
    ]
    assert c.status is SequenceStatus.RUNNING
    stats = scheduler.stats()
    assert (stats.num_preemptions, stats.prompt_tokens_total, stats.num_running) == (1, 12, 1)
    assert stats.kv_usage == pytest.approx(3 / 6)  # c holds 3 of the 6 usable blocks


def test_priority_preemption_unschedules_a_decode_already_planned() -> None:
    scheduler = make_scheduler(
        block_size=2, num_blocks=8, max_num_seqs=4, max_num_batched_tokens=6, policy="priority"
    )
    low = make_sequence("low", [10, 11, 12, 13], max_tokens=8, priority=5, arrival_time=0.0)
    scheduler.add_sequence(low)
    assert shape(step(scheduler)) == [("low", 0, 4)]
    high = make_sequence("high", list(range(200, 212)), max_tokens=2, priority=0, arrival_time=1.0)
    scheduler.add_sequence(high)
    assert shape(step(scheduler)) == [("low", 4, 1), ("high", 0, 5)]

    # low's decode is planned first, then high's chunk needs two blocks and only one is free
    output = step(scheduler)
    assert shape(output) == [("high", 5, 5)]
    assert output.preempted_ids == ["low"]
    assert output.num_batched_tokens == 5
    # low's third block (3) was filled by the decode that never ran: it went back to the free list uncached,
    # so high took it (lowest free first) and low's two written blocks stay cached
    assert scheduler.block_manager.block_ids("high") == [4, 5, 6, 3, 7]
    probe = make_sequence("probe", low.all_token_ids + [0])
    assert scheduler.block_manager.get_computed_blocks(probe) == ([1, 2], 4)

    assert shape(step(scheduler)) == [("high", 10, 2)]  # low cannot come back yet: no blocks
    assert shape(step(scheduler)) == [("high", 12, 1)]
    scheduler.finish_sequence("high", SequenceStatus.FINISHED_LENGTH)
    tokens_of_low = list(low.all_token_ids)
    assert len(tokens_of_low) == 4 + 2  # its prompt and the two tokens sampled before the preemption
    output = step(scheduler)
    assert [(s.sequence_id, s.start_position, s.token_ids) for s in output.scheduled] == [
        ("low", 0, tokens_of_low)
    ]
    assert output.finished_ids == ["high"]


@pytest.mark.parametrize(
    ("policy", "expected"), [("priority", ["p1", "p2a", "p2b", "p3"]), ("fcfs", ["p3", "p1", "p2a", "p2b"])]
)
def test_requests_start_in_policy_order(policy: str, expected: list[str]) -> None:
    scheduler = make_scheduler(max_num_seqs=1, policy=policy)
    for arrival, (name, priority) in enumerate([("p3", 3), ("p1", 1), ("p2a", 2), ("p2b", 2)]):
        scheduler.add_sequence(make_sequence(name, [1, 2], priority=priority, arrival_time=float(arrival)))
    started = []
    while scheduler.has_unfinished():
        (scheduled,) = step(scheduler).scheduled
        started.append(scheduled.sequence_id)
        scheduler.finish_sequence(scheduled.sequence_id, SequenceStatus.FINISHED_STOPPED)
    assert started == expected


def test_abort_waiting_and_running_requests_frees_every_block() -> None:
    scheduler = make_scheduler(max_num_seqs=1)
    running = make_sequence("running", list(range(30)))
    waiting = make_sequence("waiting", list(range(9)))
    scheduler.add_sequence(running)
    scheduler.add_sequence(waiting)
    step(scheduler)
    assert scheduler.block_manager.block_ids("running") == list(range(1, 9))
    assert scheduler.abort_sequence("waiting") and scheduler.abort_sequence("running")
    assert not scheduler.abort_sequence("running") and not scheduler.abort_sequence("never-seen")
    assert running.status is waiting.status is SequenceStatus.FINISHED_ABORTED
    assert running.status.finish_reason == "abort"
    assert scheduler.block_manager.num_free_blocks == 63 and scheduler.block_manager.usage == 0.0
    output = step(scheduler)
    assert output.scheduled == [] and output.finished_ids == ["waiting", "running"]
    assert not scheduler.has_unfinished()
    assert step(scheduler).finished_ids == []


def test_a_waiting_sequence_is_hashed_once_however_often_schedule_looks_at_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Block hashes live on the sequence: schedule() probing the prefix cache again and again for a sequence
    that cannot start yet, and the blocks it later fills, never hash a block twice."""
    num_hashed = 0

    def counting_hash_block(parent: bytes | None, token_ids: list[int], namespace: bytes) -> bytes:
        nonlocal num_hashed
        num_hashed += 1
        return hash_block(parent, token_ids, namespace)

    monkeypatch.setattr(block_manager_module, "hash_block", counting_hash_block)
    scheduler = make_scheduler(block_size=4, num_blocks=13)  # 12 usable blocks
    running = make_sequence("running", list(range(100, 112)) + list(range(500, 520)), max_tokens=6)
    waiting = make_sequence("waiting", list(range(100, 141)), max_tokens=8)  # its first 3 blocks are cached
    scheduler.add_sequence(running)
    scheduler.add_sequence(waiting)
    for _ in range(5):
        step(scheduler)
        assert waiting.status is SequenceStatus.WAITING  # its 8 new blocks never fit next to "running"'s 8-10
    assert len(waiting.block_hashes) == 4  # three cache hits, then the first miss ends each probe
    assert num_hashed == len(running.block_hashes) + len(waiting.block_hashes)
    while scheduler.has_unfinished():
        for scheduled in step(scheduler).scheduled:
            sequence = scheduler.get_sequence(scheduled.sequence_id)
            if sequence is not None and sequence.num_output_tokens >= sequence.max_tokens:
                scheduler.finish_sequence(scheduled.sequence_id, SequenceStatus.FINISHED_LENGTH)
    # every full block that ran was hashed exactly once (the last sampled token never runs)
    assert len(running.block_hashes) == (32 + 6 - 1) // 4 and len(waiting.block_hashes) == (41 + 8 - 1) // 4
    assert num_hashed == len(running.block_hashes) + len(waiting.block_hashes)


def test_waiting_queue_is_bounded() -> None:
    scheduler = make_scheduler(max_waiting=2)
    scheduler.add_sequence(make_sequence("a", [1]))
    scheduler.add_sequence(make_sequence("b", [1]))
    with pytest.raises(QueueFullError) as caught:
        scheduler.add_sequence(make_sequence("c", [1]))
    assert caught.value.num_waiting == 2
    step(scheduler)
    scheduler.add_sequence(make_sequence("c", [1]))
    assert scheduler.num_waiting == 1


def test_add_request_refuses_what_can_never_run() -> None:
    scheduler = make_scheduler(block_size=4, num_blocks=9, max_model_len=40)  # 8 usable blocks: 32 tokens
    with pytest.raises(ValueError, match="more than max_model_len 40"):
        scheduler.add_sequence(make_sequence("long", list(range(41))))
    with pytest.raises(ValueError, match=r"plus max_tokens \(11\) exceeds max_model_len"):
        scheduler.add_sequence(make_sequence("greedy", list(range(30)), max_tokens=11))
    with pytest.raises(ValueError, match="needs up to 9 KV blocks and the whole cache has 8"):
        scheduler.add_sequence(make_sequence("big", list(range(30)), max_tokens=4))
    scheduler.add_sequence(make_sequence("fits", list(range(30)), max_tokens=3))  # holds 32 tokens at most
    with pytest.raises(ValueError, match="already in the engine"):
        scheduler.add_sequence(make_sequence("fits", [1]))
    with pytest.raises(ValueError, match="FINISHED_"):
        scheduler.finish_sequence("fits", SequenceStatus.RUNNING)
    with pytest.raises(ValueError, match="not in the scheduler"):
        scheduler.finish_sequence("nobody", SequenceStatus.FINISHED_STOPPED)
    with pytest.raises(ValueError, match="num_blocks is 0"):
        Scheduler(SchedulerConfig(), CacheConfig())
    with pytest.raises(ValueError, match="policy"):
        SchedulerConfig(policy="lifo")
    with pytest.raises(ValueError, match="at least max_num_seqs"):
        SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=32)


def test_prefix_cache_hits_are_counted_per_request() -> None:
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(500, 533))  # 33 tokens: 8 full blocks
    scheduler.add_sequence(make_sequence("first", prompt))
    step(scheduler)
    second = make_sequence("second", prompt)
    logprobs = make_sequence("logprobs", prompt, prompt_logprobs=1)
    scheduler.add_sequence(second)
    scheduler.add_sequence(logprobs)
    output = step(scheduler)
    by_id = {s.sequence_id: s for s in output.scheduled}
    assert (by_id["second"].start_position, by_id["second"].token_ids) == (32, [532])
    assert second.num_cached_tokens == 32 and logprobs.num_cached_tokens == 0
    assert by_id["logprobs"].start_position == 0 and by_id["logprobs"].needs_prompt_logprobs
    assert not by_id["second"].needs_prompt_logprobs
    stats = scheduler.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits, stats.prompt_tokens_total) == (66, 32, 99)
    assert by_id["second"].block_ids[:8] == by_id["first"].block_ids[:8]
    assert not step(scheduler).scheduled[2].needs_prompt_logprobs  # decodes no longer cover the prompt


def test_fanned_out_sequences_share_the_prompt_within_one_step() -> None:
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(20))
    for index in range(3):
        scheduler.add_sequence(make_sequence(f"seq{index}", prompt))
    output = step(scheduler)
    assert shape(output) == [("seq0", 0, 20), ("seq1", 16, 4), ("seq2", 16, 4)]
    tables = [s.block_ids for s in output.scheduled]
    assert tables[0][:4] == tables[1][:4] == tables[2][:4]
    assert scheduler.block_manager.ref_count(tables[0][0]) == 3


class KVModel:
    """Records what each KV slot holds, as (adapter, salt, identity of the prefix ending at that token)."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.slots: dict[int, tuple[str | None, str | None, int]] = {}
        self.prefix_ids: dict[str, list[int]] = {}

    def expected(self, sequence: Sequence, position: int) -> tuple[str | None, str | None, int]:
        ids = self.prefix_ids.setdefault(sequence.sequence_id, [])
        while len(ids) <= position:
            ids.append(hash((ids[-1] if ids else 0, sequence.all_token_ids[len(ids)])))
        return (sequence.lora_key, sequence.cache_salt, ids[position])

    def slot(self, block_ids: list[int], position: int) -> int:
        return block_ids[position // self.block_size] * self.block_size + position % self.block_size


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_randomized_simulation_keeps_every_invariant(policy: str) -> None:
    rng = random.Random(20240607)
    block_size = 4
    scheduler = make_scheduler(
        block_size=block_size,
        num_blocks=40,
        max_num_seqs=12,
        max_num_batched_tokens=48,
        max_model_len=96,
        max_waiting=20,
        policy=policy,
    )
    manager = scheduler.block_manager
    kv = KVModel(block_size)
    prefixes = [[rng.randrange(1000) for _ in range(rng.randint(4, 30))] for _ in range(4)]
    live: dict[str, Sequence] = {}
    just_finished: set[str] = set()
    counts = {"added": 0, "queue_full": 0, "aborted": 0, "preempted": 0, "steps": 0}

    def finish(sequence_id: str, status: SequenceStatus) -> None:
        scheduler.finish_sequence(sequence_id, status)
        del live[sequence_id]
        just_finished.add(sequence_id)

    while counts["added"] < 200 or scheduler.has_unfinished():
        counts["steps"] += 1
        assert counts["steps"] < 5000, "the simulation stopped making progress"
        while counts["added"] < 200 and rng.random() < 0.6:
            shared = rng.choice(prefixes) if rng.random() < 0.6 else []
            sequence = Sequence(
                sequence_id=f"r{counts['added']}",
                prompt_token_ids=shared + [rng.randrange(1000) for _ in range(rng.randint(1, 30))],
                sampling_params=SamplingParams(prompt_logprobs=0 if rng.random() < 0.1 else None),
                max_tokens=rng.randint(1, 30),
                arrival_time=float(counts["steps"]),
                priority=rng.choice([0, 1, 2, 3, BACKGROUND_PRIORITY]),  # batch lines too
                lora_key=rng.choice([None, None, "adapter"]),
                cache_salt=rng.choice([None, None, "tenant"]),
            )
            try:
                scheduler.add_sequence(sequence)
            except QueueFullError:
                counts["queue_full"] += 1
                break
            live[sequence.sequence_id] = sequence
            counts["added"] += 1
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            assert scheduler.abort_sequence(victim)
            del live[victim]
            just_finished.add(victim)
            counts["aborted"] += 1

        output = step_checked(scheduler, kv, live)
        assert set(output.finished_ids) == just_finished
        just_finished.clear()
        counts["preempted"] += len(output.preempted_ids)
        if live:
            assert output.scheduled, "sequences are waiting but nothing was scheduled"

        for scheduled in output.scheduled:
            sequence = live[scheduled.sequence_id]
            if not scheduled.sample:
                continue
            if sequence.num_output_tokens == sequence.max_tokens:
                finish(sequence.sequence_id, SequenceStatus.FINISHED_LENGTH)
            elif rng.random() < 0.08:
                finish(sequence.sequence_id, SequenceStatus.FINISHED_STOPPED)
            elif rng.random() < 0.01:
                finish(sequence.sequence_id, SequenceStatus.FINISHED_ERROR)
        check_blocks(scheduler, live)

    assert counts["preempted"] > 0 and counts["aborted"] > 0 and counts["queue_full"] > 0
    assert scheduler.stats().prefix_cache_hits > 0
    assert manager.num_free_blocks == manager.num_usable_blocks and manager.usage == 0.0
    assert (scheduler.num_running, scheduler.num_waiting) == (0, 0)


def step_checked(scheduler: Scheduler, kv: KVModel, live: dict[str, Sequence]) -> SchedulerOutput:
    """One step: check what was scheduled, write its KV, then check every context it attends to."""
    config = scheduler.scheduler_config
    starts = {sequence_id: sequence.num_computed_tokens for sequence_id, sequence in live.items()}
    fresh = {
        sequence_id for sequence_id, sequence in live.items() if sequence.status is SequenceStatus.WAITING
    }
    output = step(scheduler)
    # the runner sets up a sequence (its adapter key, seed, grammar) from `added`: each one once, when it first runs
    first_runs = [s.sequence_id for s in output.scheduled if s.sequence_id in fresh]
    assert [sequence.sequence_id for sequence in output.added] == first_runs
    assert all(live[sequence.sequence_id] is sequence for sequence in output.added)
    assert output.num_batched_tokens == sum(len(s.token_ids) for s in output.scheduled)
    assert output.num_batched_tokens <= config.max_num_batched_tokens
    assert len({s.sequence_id for s in output.scheduled}) == len(output.scheduled) <= config.max_num_seqs
    for sequence_id in output.preempted_ids:
        sequence = live[sequence_id]
        assert sequence.num_computed_tokens == 0 and scheduler.block_manager.block_ids(sequence_id) == []
    for scheduled in output.scheduled:
        sequence = live[scheduled.sequence_id]
        start, end = scheduled.start_position, scheduled.start_position + len(scheduled.token_ids)
        if starts[sequence.sequence_id] != start:  # a (re)start: only whole cached blocks are skipped
            assert starts[sequence.sequence_id] == 0 and start % kv.block_size == 0
            assert not sequence.wants_prompt_logprobs or start == 0
        assert scheduled.token_ids == sequence.all_token_ids[start:end]
        assert sequence.num_computed_tokens == end
        assert len(scheduled.block_ids) * kv.block_size >= end and 0 not in scheduled.block_ids
        assert scheduled.needs_prompt_logprobs == (
            sequence.wants_prompt_logprobs and start < sequence.num_prompt_tokens
        )
        for position in range(start, end):
            kv.slots[kv.slot(scheduled.block_ids, position)] = kv.expected(sequence, position)
    for scheduled in output.scheduled:
        sequence = live[scheduled.sequence_id]
        for position in range(scheduled.start_position + len(scheduled.token_ids)):
            assert kv.slots[kv.slot(scheduled.block_ids, position)] == kv.expected(sequence, position)
        # a sampled sequence got one new token in step(); mid-prefill more known tokens are left to run
        end = scheduled.start_position + len(scheduled.token_ids)
        assert end == sequence.num_tokens - 1 if scheduled.sample else end < sequence.num_tokens
    return output


def check_blocks(scheduler: Scheduler, live: dict[str, Sequence]) -> None:
    manager = scheduler.block_manager
    manager.check_invariants()
    holders: dict[int, int] = {}
    for sequence_id, sequence in live.items():
        table = manager.block_ids(sequence_id)
        if sequence.status is SequenceStatus.RUNNING:
            assert len(table) * manager.block_size >= sequence.num_computed_tokens
        else:
            assert table == [] and sequence.num_computed_tokens == 0
        for block_id in table:
            holders[block_id] = holders.get(block_id, 0) + 1
    assert all(manager.ref_count(block_id) == count for block_id, count in holders.items())
    assert all(manager.ref_count(block_id) >= 0 for block_id in range(manager.num_blocks))
    assert manager.num_free_blocks == manager.num_usable_blocks - len(holders)
