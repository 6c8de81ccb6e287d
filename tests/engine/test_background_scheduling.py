"""Background sequences (batch lines) in the scheduler: live sequences start first, background ones are capped
and are the first to give up their KV, under either policy."""

from __future__ import annotations

import pytest
from test_scheduler import make_scheduler, make_sequence, shape, step

from ember.engine.engine_config import BACKGROUND_PRIORITY, SchedulerConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.sequence import SequenceStatus
from ember.engine.testing import tiny_engine_config
from ember.models.loader import LoadedModel

POLICIES = ["fcfs", "priority"]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_waiting_live_sequence_starts_before_background_ones_that_arrived_earlier(policy: str) -> None:
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64, policy=policy)
    for index in range(3):
        scheduler.add_sequence(
            make_sequence(f"batch{index}", [1, 2, 3], arrival_time=float(index), priority=BACKGROUND_PRIORITY)
        )
    scheduler.add_sequence(make_sequence("live", [7, 8, 9], arrival_time=10.0))
    # one row for the live sequence, the other for the oldest batch line (the limit is half of max_num_seqs)
    assert [s.sequence_id for s in step(scheduler).scheduled] == ["live", "batch0"]
    assert scheduler.num_waiting == 2


@pytest.mark.parametrize("policy", POLICIES)
def test_background_sequences_leave_rows_free_and_yield_steps_to_live_work(policy: str) -> None:
    scheduler = make_scheduler(max_num_seqs=4, policy=policy)
    for index in range(4):
        scheduler.add_sequence(make_sequence(f"batch{index}", [1, 2], priority=BACKGROUND_PRIORITY))
    assert [s.sequence_id for s in step(scheduler).scheduled] == ["batch0", "batch1"]  # half of the rows
    scheduler.add_sequence(make_sequence("live", [5, 6], max_tokens=2, arrival_time=1.0))
    # beside live work one background row runs a step; batch1 keeps its KV and waits
    for _ in range(2):
        assert sorted(s.sequence_id for s in step(scheduler).scheduled) == ["batch0", "live"]
    batch1 = scheduler.get_sequence("batch1")
    assert batch1 is not None and batch1.status is SequenceStatus.RUNNING and batch1.num_computed_tokens == 2
    scheduler.finish_sequence("live", SequenceStatus.FINISHED_LENGTH)
    assert [s.sequence_id for s in step(scheduler).scheduled] == ["batch0", "batch1"]
    scheduler.finish_sequence("batch0", SequenceStatus.FINISHED_STOPPED)
    assert "batch2" in [s.sequence_id for s in step(scheduler).scheduled]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_background_prompt_prefills_in_small_chunks_beside_live_work(policy: str) -> None:
    scheduler = make_scheduler(max_num_seqs=4, max_num_batched_tokens=64, policy=policy)
    scheduler.add_sequence(make_sequence("live", [1, 2, 3], max_tokens=8))
    step(scheduler)
    scheduler.add_sequence(make_sequence("batch", list(range(100, 120)), priority=BACKGROUND_PRIORITY))
    assert shape(step(scheduler)) == [("live", 3, 1), ("batch", 0, 8)]  # background_tokens_beside_live
    assert shape(step(scheduler)) == [("live", 4, 1), ("batch", 8, 8)]
    scheduler.finish_sequence("live", SequenceStatus.FINISHED_STOPPED)
    assert shape(step(scheduler)) == [("batch", 16, 4)]  # alone: the whole budget


def test_the_background_limit_is_configurable() -> None:
    assert SchedulerConfig(max_num_seqs=8).background_seq_limit == 4
    assert SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=8).background_seq_limit == 1
    assert SchedulerConfig(max_num_seqs=8, max_background_seqs=8).background_seq_limit == 8
    with pytest.raises(ValueError, match="max_background_seqs"):
        SchedulerConfig(max_background_seqs=-1)
    with pytest.raises(ValueError, match="background_tokens_beside_live"):
        SchedulerConfig(background_tokens_beside_live=-1)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_live_sequence_without_blocks_preempts_a_background_one_which_resumes_with_its_tokens(
    policy: str,
) -> None:
    scheduler = make_scheduler(
        block_size=2, num_blocks=7, max_num_seqs=4, max_background_seqs=4, policy=policy
    )
    for index in range(3):  # 3 x 2 blocks: the whole cache, and room for their next token
        prompt = [10 * index + i for i in range(3)]
        scheduler.add_sequence(
            make_sequence(f"batch{index}", prompt, max_tokens=3, priority=BACKGROUND_PRIORITY)
        )
    step(scheduler)
    assert scheduler.block_manager.num_free_blocks == 0
    scheduler.add_sequence(make_sequence("live", [90, 91, 92], max_tokens=2, arrival_time=1.0))
    output = step(scheduler)
    assert output.preempted_ids == ["batch2"]
    assert "live" in [s.sequence_id for s in output.scheduled]
    batch2 = scheduler.get_sequence("batch2")
    assert batch2 is not None and batch2.status is SequenceStatus.PREEMPTED
    tokens = list(batch2.all_token_ids)
    for name in ("live", "batch0", "batch1"):
        scheduler.finish_sequence(name, SequenceStatus.FINISHED_STOPPED)
    resumed = step(scheduler).scheduled
    assert [(s.sequence_id, s.start_position, s.token_ids) for s in resumed] == [("batch2", 0, tokens)]


def test_a_running_live_sequence_takes_blocks_from_a_background_one_not_from_an_older_live_one() -> None:
    scheduler = make_scheduler(block_size=2, num_blocks=7, max_num_seqs=4, max_background_seqs=4)
    scheduler.add_sequence(make_sequence("batch", [1, 2, 3, 4], max_tokens=8, priority=BACKGROUND_PRIORITY))
    scheduler.add_sequence(make_sequence("old", [5, 6, 7, 8], max_tokens=8, arrival_time=1.0))
    scheduler.add_sequence(make_sequence("new", [9, 10, 11, 12], max_tokens=8, arrival_time=2.0))
    assert shape(step(scheduler)) == [("old", 0, 4), ("new", 0, 4), ("batch", 0, 4)]
    output = step(scheduler)  # every sequence needs a third block and none is free
    assert output.preempted_ids == ["batch"]
    assert shape(output) == [("old", 4, 1), ("new", 4, 1)]


def test_in_the_engine_a_live_request_runs_at_once_beside_background_ones_whose_output_is_unchanged(
    tiny_llama: LoadedModel,
) -> None:
    def engine() -> LLMEngine:
        return LLMEngine(tiny_llama, tiny_engine_config(prompt_lookup="off", max_num_seqs=2))

    prompts = {f"batch{i}": tiny_llama.tokenizer.encode(f"Batch line {i}") for i in range(3)}
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = {}
    for name, prompt in prompts.items():
        solo = engine()
        solo.add_request(name, prompt, params)
        while solo.has_unfinished():
            outputs = solo.step()
        alone[name] = outputs[-1].outputs[0].token_ids

    mixed = engine()
    for name, prompt in prompts.items():
        mixed.add_request(name, prompt, params, priority=BACKGROUND_PRIORITY)
    mixed.step()
    mixed.add_request(
        "live", tiny_llama.tokenizer.encode("Live"), SamplingParams(max_tokens=4, ignore_eos=True)
    )
    finished: dict[str, list[int]] = {}
    steps_to_live = 0
    while mixed.has_unfinished():
        steps_to_live += "live" not in finished
        for output in mixed.step():
            if output.finished:
                finished[output.request_id] = list(output.outputs[0].token_ids)
    # one row is the background limit's (max_num_seqs 2 // 2), the other the live request's from its first step
    assert steps_to_live == 4 and list(finished)[0] == "live"
    assert {name: finished[name] for name in prompts} == {name: list(ids) for name, ids in alone.items()}
