"""Draft sources (n-gram prompt lookup, Predicted Outputs), the per-sequence drafter, and the KV bookkeeping of
draft slots in the block manager and scheduler."""

from __future__ import annotations

import dataclasses

import pytest

from ember.engine.block_manager import BlockManager
from ember.engine.engine_config import CacheConfig, SchedulerConfig
from ember.engine.sampling_params import SamplingParams
from ember.engine.scheduler import Scheduler
from ember.engine.sequence import Sequence
from ember.engine.speculation.config import DraftSettings, SpeculationConfig, SpeculationParams
from ember.engine.speculation.drafter import PromptLookupDraft, SequenceDrafter
from ember.engine.speculation.policy import DraftPolicy
from ember.engine.speculation.prediction_draft import PredictionDraft


def test_prompt_lookup_continues_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    draft = PromptLookupDraft(min_n=2, max_n=3)
    tokens = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3]
    # [1, 2, 3] occurred at the start (followed by 4 5); [2, 3] alone later (followed by 7 8): longest wins
    assert draft.propose(tokens, num_prompt_tokens=5, max_tokens=3) == [4, 5, 9]
    assert draft.propose([*tokens, 4], num_prompt_tokens=5, max_tokens=2) == [5, 9]


def test_prompt_lookup_needs_min_n_tokens_and_finds_nothing_new() -> None:
    draft = PromptLookupDraft(min_n=2, max_n=4)
    assert draft.propose([5, 6, 7, 8], num_prompt_tokens=4, max_tokens=4) == []
    assert draft.propose([5, 6, 7, 8, 6], num_prompt_tokens=4, max_tokens=4) == []  # a 1-gram is too short


def test_prompt_lookup_repeats_a_loop_with_its_period() -> None:
    draft = PromptLookupDraft(min_n=2, max_n=2)
    assert draft.propose([1, 2, 3, 1, 2], num_prompt_tokens=1, max_tokens=5) == [3, 1, 2, 3, 1]


def test_prediction_follows_the_output_and_substitutes_a_changed_token() -> None:
    prediction = (10, 11, 12, 13, 14, 15, 16)
    draft = PredictionDraft(prediction, max_n=3)
    prompt = [1, 2]
    assert draft.propose(prompt, 2, 3) == []  # nothing read in step yet
    assert draft.propose([*prompt, 10, 11], 2, 3) == [12, 13, 14]
    # 99 replaces 12 (a renamed variable): no draft right after it; the reader assumes a substitution and goes
    # on after it once the output is back in step
    assert draft.propose([*prompt, 10, 11, 99], 2, 3) == []
    assert draft.propose([*prompt, 10, 11, 99, 13], 2, 3) == [14, 15]


def test_a_confirmed_substitute_is_drafted_at_every_later_use_until_the_output_keeps_the_original() -> None:
    # 20 is a variable the edit renames to 99; 21 is a word the prediction holds elsewhere
    prediction = (10, 20, 11, 20, 12, 20, 13, 14, 15)
    draft = PredictionDraft(prediction, max_n=3)
    assert draft.propose([1, 10, 99], 1, 15) == []  # a substitute, not yet confirmed
    assert draft.substitutes == {}
    assert draft.propose([1, 10, 99, 11], 1, 15) == [99, 12]  # 11 came as predicted: 20 -> 99 is learned
    assert draft.substitutes == {20: 99}
    assert draft.propose([1, 10, 99, 11, 99, 12], 1, 15) == [99, 13, 14, 15]
    # the output keeps 20 where 99 was drafted: the substitution is dropped, and the reader stays in step
    assert draft.propose([1, 10, 99, 11, 99, 12, 20], 1, 15) == [13, 14, 15]
    assert draft.substitutes == {}


def test_a_single_token_found_elsewhere_in_the_prediction_reads_as_a_substitute() -> None:
    # the rename's new name (30) also occurs later in the prediction: jumping there would lose the place
    prediction = (10, 20, 11, 12, 30, 13, 20, 14)
    draft = PredictionDraft(prediction, max_n=3)
    assert draft.propose([1, 10, 30, 11], 1, 15) == [12, 30]
    assert draft.propose([1, 10, 30, 11, 12, 30, 13], 1, 15) == [30, 14]


def test_a_prediction_draft_doubles_with_the_tokens_read_in_step() -> None:
    prediction = tuple(range(100, 140))
    draft = PredictionDraft(prediction, max_n=4)
    prompt = [1]
    lengths = [len(draft.propose([*prompt, *prediction[:read]], 1, 15)) for read in range(6)]
    assert lengths == [0, 2, 4, 8, 15, 15]
    # an edit inserts three tokens: no drafts while the output is out of step; the first token back re-finds the
    # place (a 1-token match: run 0), and two more in step make a 4-token draft
    edited = [*prompt, *prediction[:5], 7, 8, 9, *prediction[5:8]]
    fresh = PredictionDraft(prediction, max_n=4)
    assert [fresh.propose(edited[: 7 + i], 1, 15) for i in range(4)] == [[]] * 4
    assert fresh.propose(edited, 1, 15) == list(prediction[8:12])


def test_prediction_refinds_its_place_after_an_insertion_or_a_deletion() -> None:
    prediction = (10, 11, 12, 13, 14, 15, 16, 17)
    inserted = PredictionDraft(prediction, max_n=3)
    assert inserted.propose([1, 10, 11, 50, 51, 12, 13], 1, 2) == [14, 15]
    deleted = PredictionDraft(prediction, max_n=3)
    assert deleted.propose([1, 10, 11, 14, 15], 1, 3) == [16, 17]  # 12 13 left out
    assert deleted.propose([1, 10, 11, 14, 15, 16, 17], 1, 3) == []  # the prediction is used up


def test_the_drafter_asks_the_prediction_first_and_caps_the_length() -> None:
    settings = DraftSettings.resolve(
        SpeculationConfig(prompt_lookup="on", num_speculative_tokens=2),
        SpeculationParams(prediction_token_ids=(7, 8, 9, 10, 11)),
    )
    drafter = SequenceDrafter(settings)
    assert drafter.propose([1, 2, 1, 7, 8], 3, max_tokens=5) == [9, 10]
    lookup_only = SequenceDrafter(
        DraftSettings.resolve(SpeculationConfig(prompt_lookup="on", prompt_lookup_min=2), None)
    )
    assert lookup_only.propose([1, 2, 3, 1, 2], 3, max_tokens=1) == [3]


def test_a_refused_prediction_draft_does_not_pause_drafting() -> None:
    settings = DraftSettings.resolve(
        SpeculationConfig(prompt_lookup="auto"), SpeculationParams(prediction_token_ids=tuple(range(50, 80)))
    )
    drafter = SequenceDrafter(settings)
    prompt = [1, 2, 3]
    assert drafter.propose([*prompt, 50, 51], 3, max_tokens=8) == [52, 53, 54, 55]
    drafter.observe(num_drafted=4, num_accepted=0)  # the output took another way at 52 ...
    assert drafter.propose([*prompt, 50, 51, 9], 3, max_tokens=8) == []
    # ... and came back: the prediction drafts again at once (n-gram lookup would pause 4 steps)
    assert drafter.propose([*prompt, 50, 51, 9, 53, 54], 3, max_tokens=8) == [55, 56, 57, 58]


def test_auto_backs_off_after_failed_drafts_and_follows_the_kept_length() -> None:
    config = SpeculationConfig(prompt_lookup="auto", prompt_lookup_min=2, num_speculative_tokens=8)
    drafter = SequenceDrafter(DraftSettings.resolve(config, None))
    tokens = [1, 2, 3, 1, 2]
    assert len(drafter.propose(tokens, 1, 8)) == 8
    drafter.observe(num_drafted=8, num_accepted=0)
    assert [bool(drafter.propose(tokens, 1, 8)) for _ in range(5)] == [False] * 4 + [True]  # paused 4
    drafter.observe(num_drafted=2, num_accepted=0)
    assert [bool(drafter.propose(tokens, 1, 8)) for _ in range(9)] == [False] * 8 + [True]  # then 8
    drafter.observe(num_drafted=2, num_accepted=2)  # all kept: the next draft may be twice as long
    assert len(drafter.propose(tokens, 1, 8)) == 4
    drafter.observe(num_drafted=4, num_accepted=1)
    assert len(drafter.propose(tokens, 1, 8)) == 2
    on = SequenceDrafter(DraftSettings.resolve(dataclasses.replace(config, prompt_lookup="on"), None))
    on.observe(num_drafted=8, num_accepted=0)
    assert len(on.propose(tokens, 1, 8)) == 8  # 'on' never pauses nor shortens


@pytest.mark.parametrize(
    ("config", "params", "message"),
    [
        ({"prompt_lookup": "sometimes"}, None, "prompt_lookup mode"),
        ({"num_speculative_tokens": 0}, None, "num_speculative_tokens"),
        ({"prompt_lookup_min": 3, "prompt_lookup_max": 2}, None, "must not exceed"),
        ({}, {"prompt_lookup_min": 5, "prompt_lookup_max": 4}, "must not exceed"),
        ({}, {"num_speculative_tokens": 17}, "between 1 and 16"),
    ],
)
def test_bad_settings_are_refused(config: dict, params: dict | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DraftSettings.resolve(SpeculationConfig(**config), SpeculationParams(**params) if params else None)


def test_a_request_setting_one_side_of_the_ngram_range_moves_the_other() -> None:
    config = SpeculationConfig(prompt_lookup_min=2, prompt_lookup_max=4)
    wider = DraftSettings.resolve(config, SpeculationParams(prompt_lookup_min=6))
    assert (wider.min_n, wider.max_n) == (6, 6)
    narrower = DraftSettings.resolve(config, SpeculationParams(prompt_lookup_max=1, prompt_lookup="on"))
    assert (narrower.min_n, narrower.max_n, narrower.prompt_lookup) == (1, 1, "on")


def _sequence(sequence_id: str, prompt: list[int], max_tokens: int = 32) -> Sequence:
    return Sequence(sequence_id, prompt, SamplingParams(max_tokens=max_tokens), max_tokens, arrival_time=0.0)


def test_draft_slots_are_held_unregistered_and_trimmed_back_to_the_computed_tokens() -> None:
    manager = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    sequence = _sequence("s", list(range(10, 17)))  # 7 tokens
    assert manager.allocate_slots(sequence, 6)
    sequence.num_computed_tokens = 6
    assert manager.allocate_slots(sequence, 1, num_lookahead_tokens=6)  # positions 6..12: 4 blocks
    sequence.num_computed_tokens = 7
    table = manager.block_ids("s")
    assert len(table) == 4
    assert [manager.is_cached(b) for b in table] == [True, False, False, False]  # only the real full block
    free_before = manager.num_free_blocks
    for token in (17, 18):  # two drafts accepted, then a sampled token
        sequence.append_output_token(token)
    sequence.append_output_token(30)
    sequence.num_computed_tokens = 9
    manager.trim(sequence)
    assert manager.block_ids("s") == table[:3]  # 9 computed tokens need 3 blocks; the 4th held only rejects
    assert manager.num_free_blocks == free_before + 1
    manager.check_invariants()
    manager.free(sequence)
    assert manager.num_free_blocks == manager.num_usable_blocks
    manager.check_invariants()


def test_scheduler_drafts_only_for_small_batches_and_within_max_tokens() -> None:
    def scheduler(max_batch: int) -> Scheduler:
        return Scheduler(
            SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256),
            CacheConfig(block_size=4, num_blocks=64),
            DraftPolicy(max_batch),
        )

    settings = DraftSettings.resolve(
        SpeculationConfig(prompt_lookup="on", num_speculative_tokens=8, prompt_lookup_min=2), None
    )
    for max_batch, expect_drafts in ((2, True), (1, False)):
        sched = scheduler(max_batch)
        sequences = [_sequence(f"s{i}", [1, 2, 3, 1, 2, 3, 1, 2], max_tokens=4) for i in range(2)]
        for sequence in sequences:
            sequence.drafter = SequenceDrafter(settings)
            sched.add_sequence(sequence)
        sched.schedule()  # prefill
        for sequence in sequences:
            sequence.append_output_token(3)
        step = sched.schedule()
        drafts = [item.draft_token_ids for item in step.scheduled]
        # 1 token generated, 4 allowed: the verification yields one more, so at most 2 drafts
        assert drafts == ([[1, 2], [1, 2]] if expect_drafts else [[], []])
        if expect_drafts:
            assert step.num_batched_tokens == 6
            for token in (1, 5):  # s0: its first draft kept, then a token of the model's own
                sequences[0].append_output_token(token)
            sequences[1].append_output_token(6)  # s1: no draft kept
            sched.accept_draft("s0", 1)
            sched.accept_draft("s1", 0)
            assert sequences[0].num_computed_tokens == 10
            assert sequences[1].num_computed_tokens == 9
        sched.block_manager.check_invariants()
