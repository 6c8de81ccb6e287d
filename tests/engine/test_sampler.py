"""The batched sampler: each parameter's effect on crafted logits, seeding, logprobs, and the HF reference."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from ember.engine import penalties
from ember.engine.sampler import Sampler, SamplingRow, scale_and_truncate
from ember.engine.sampling_params import SamplingParams

DRAWS = 2000


def row(
    params: SamplingParams, prompt: list[int] | None = None, output: list[int] | None = None, **kw
) -> SamplingRow:
    return SamplingRow(params=params, prompt_token_ids=prompt or [], output_token_ids=output or [], **kw)


def from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float32).log()  # [V]


def draw_counts(
    logits: torch.Tensor, params: SamplingParams, draws: int = DRAWS, seed: int = 0
) -> Counter[int]:
    """Sample `draws` times from one [V] row by batching copies of it (one sampler call)."""
    sampler = Sampler(generator=torch.Generator().manual_seed(seed))
    batch = logits.unsqueeze(0).expand(draws, -1).contiguous()  # [D, V]
    out = sampler(batch, [row(params) for _ in range(draws)])
    return Counter(out.token_ids)


def support(logits: torch.Tensor, params: SamplingParams) -> set[int]:
    kept = scale_and_truncate(logits.unsqueeze(0), [params])[0]
    return set(torch.isfinite(kept).nonzero().flatten().tolist())


PROBS = [0.5, 0.3, 0.15, 0.05]


# ---- greedy -------------------------------------------------------------------------------------------


def test_all_greedy_batch_is_argmax_and_leaves_logits_untouched() -> None:
    logits = torch.randn(16, 1000)
    before = logits.clone()
    out = Sampler()(logits, [row(SamplingParams(temperature=0.0)) for _ in range(16)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 16
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_greedy_rows_mixed_with_sampled_rows_stay_argmax() -> None:
    logits = torch.randn(6, 500)
    before = logits.clone()
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_p=0.5)] * 3
    out = Sampler()(logits, [row(p, output=[1, 2]) for p in params])
    for i in (0, 2, 4):
        assert out.token_ids[i] == int(logits[i].argmax())
    torch.testing.assert_close(logits, before, rtol=0, atol=0)


def test_a_vanishing_temperature_samples_greedily() -> None:
    # Logits a few units apart: sampling at any ordinary temperature picks the argmax in only ~6% of the rows
    # (measured at T=1), so 64 argmax rows out of 64 come only from greedy decoding.
    logits = torch.randn(64, 200, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(generator=torch.Generator().manual_seed(0))
    out = sampler(logits, [row(SamplingParams(temperature=1e-9)) for _ in range(64)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    ordinary = sampler(logits, [row(SamplingParams(temperature=1.0)) for _ in range(64)])
    assert ordinary.token_ids != out.token_ids  # the same logits do spread at T=1


# ---- logit adjustments before temperature ---------------------------------------------------------------


def test_logit_bias_forces_and_bans_tokens() -> None:
    logits = torch.randn(2, 100)
    low = int(logits[0].argmin())
    top = int(logits[1].argmax())
    out = Sampler()(
        logits,
        [
            row(SamplingParams(temperature=0.0, logit_bias={low: 100.0})),
            row(SamplingParams(temperature=0.0, logit_bias={top: -100.0})),
        ],
    )
    assert out.token_ids[0] == low
    assert out.token_ids[1] == int(logits[1].topk(2).indices[1])


def test_logit_bias_outside_vocabulary_is_rejected() -> None:
    with pytest.raises(ValueError, match="logit_bias token id 100"):
        Sampler()(torch.randn(1, 100), [row(SamplingParams(logit_bias={100: 1.0}))])


def test_min_tokens_blocks_eos_and_stop_tokens_then_allows_them() -> None:
    eos, stop_token = 2, 7
    logits = torch.zeros(1, 10)
    logits[0, eos], logits[0, stop_token], logits[0, 4] = 5.0, 4.0, 3.0
    params = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[stop_token])
    sampler = Sampler()
    blocked = sampler(logits, [row(params, output=[4, 4], eos_token_ids=(eos,))])
    assert blocked.token_ids == [4]  # both EOS and the stop token are masked before 3 tokens
    allowed = sampler(logits, [row(params, output=[4, 4, 4], eos_token_ids=(eos,))])
    assert allowed.token_ids == [eos]


def test_min_tokens_with_ignore_eos_leaves_eos_alone() -> None:
    logits = torch.tensor([[0.0, 0.0, 5.0, 1.0]])
    params = SamplingParams(temperature=0.0, min_tokens=5, ignore_eos=True)
    assert Sampler()(logits, [row(params, eos_token_ids=(2,))]).token_ids == [2]


def test_allowed_token_mask_restricts_sampling() -> None:
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 5]] = True
    counts = Counter(
        Sampler(generator=torch.Generator().manual_seed(0))(
            torch.zeros(400, 8), [row(SamplingParams(), allowed_token_ids_mask=mask) for _ in range(400)]
        ).token_ids
    )
    assert set(counts) == {1, 5}


def test_the_grammar_wins_over_min_tokens_when_it_allows_only_banned_tokens() -> None:
    # The grammar allows only EOS or a stop token, and min_tokens bans them: the ban is lifted for this row
    # (failing the request would be a 500 mid-stream); other rows keep their ban.
    eos, stop_token = 2, 3
    logits = torch.zeros(2, 6)
    logits[:, eos] = 5.0
    only_eos = torch.zeros(6, dtype=torch.bool)
    only_eos[eos] = True
    eos_or_stop = torch.zeros(6, dtype=torch.bool)
    eos_or_stop[[eos, stop_token]] = True
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[stop_token])
    rows = [
        row(params, allowed_token_ids_mask=only_eos, eos_token_ids=(eos,)),
        row(params, eos_token_ids=(eos,)),
    ]
    assert Sampler()(logits, rows).token_ids == [eos, 0]
    assert Sampler()(
        logits[:1], [row(params, allowed_token_ids_mask=eos_or_stop, eos_token_ids=(eos,))]
    ).token_ids == [eos]


def test_a_mask_that_allows_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="every token is masked"):
        Sampler()(
            torch.zeros(1, 4),
            [row(SamplingParams(), allowed_token_ids_mask=torch.zeros(4, dtype=torch.bool))],
        )


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 3.0]])
    penalties.apply_repetition_penalty(logits, [0], [[0, 1, 1]], [2.0])
    torch.testing.assert_close(logits, torch.tensor([[1.0, -4.0, 1.0, -1.0, 3.0]]))


def test_repetition_penalty_counts_prompt_and_output_in_the_sampler() -> None:
    sampler = Sampler()
    # Positive: token 0 (seen in the prompt) falls from 2.0 to 1.0, below token 1.
    positive = torch.tensor([[2.0, 1.5, 0.0]])
    assert sampler(
        positive, [row(SamplingParams(temperature=0.0, repetition_penalty=2.0), prompt=[0])]
    ).token_ids == [1]
    # Negative: token 0 (seen in the output) goes from -1.0 to -1.5, below token 1; dividing would raise it.
    negative = torch.tensor([[-1.0, -1.2, -5.0]])
    params = SamplingParams(temperature=0.0, repetition_penalty=1.5)
    assert sampler(negative, [row(params, output=[0])]).token_ids == [1]
    assert sampler(negative, [row(SamplingParams(temperature=0.0), output=[0])]).token_ids == [0]


def test_presence_counts_once_frequency_counts_every_occurrence() -> None:
    output = [0, 0, 0, 1]
    presence = torch.tensor([[5.0, 4.5, 3.8]])
    penalties.apply_presence_frequency_penalties(presence, [0], [output], [1.0], [0.0])
    torch.testing.assert_close(presence, torch.tensor([[4.0, 3.5, 3.8]]))
    frequency = torch.tensor([[5.0, 4.5, 3.8]])
    penalties.apply_presence_frequency_penalties(frequency, [0], [output], [0.0], [0.5])
    torch.testing.assert_close(frequency, torch.tensor([[3.5, 4.0, 3.8]]))

    logits = torch.tensor([[5.0, 4.5, 3.8]])
    sampler = Sampler()
    assert sampler(
        logits, [row(SamplingParams(temperature=0.0, presence_penalty=1.0), output=output)]
    ).token_ids == [0]
    assert sampler(
        logits, [row(SamplingParams(temperature=0.0, frequency_penalty=0.5), output=output)]
    ).token_ids == [1]


def test_penalties_do_not_count_the_prompt() -> None:
    logits = torch.tensor([[5.0, 4.5]])
    params = SamplingParams(temperature=0.0, presence_penalty=2.0)
    assert Sampler()(logits, [row(params, prompt=[0, 0, 0])]).token_ids == [0]


def test_penalties_accept_non_contiguous_logits() -> None:
    logits = torch.randn(50, 3).t()  # [3, 50], column-major
    rows = [
        row(SamplingParams(temperature=0.0, repetition_penalty=1.5, frequency_penalty=1.0), output=[1, 1, 7])
    ] * 3
    assert Sampler()(logits, rows).token_ids == Sampler()(logits.contiguous(), rows).token_ids


# ---- temperature and truncation -----------------------------------------------------------------------


def test_sampling_frequencies_follow_the_temperature_scaled_softmax() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0])
    for temperature in (0.5, 1.0, 2.0):
        counts = draw_counts(logits, SamplingParams(temperature=temperature), draws=4000)
        expected = torch.softmax(logits / temperature, dim=0).tolist()
        for token, p in enumerate(expected):
            sigma = math.sqrt(p * (1 - p) / 4000)
            assert abs(counts[token] / 4000 - p) < 5 * sigma + 1e-3, (temperature, token)


def test_top_k_never_samples_beyond_k() -> None:
    counts = draw_counts(from_probs(PROBS), SamplingParams(top_k=2))
    assert set(counts) == {0, 1}
    assert abs(counts[0] / DRAWS - 0.5 / 0.8) < 0.05


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = from_probs(PROBS)
    assert support(logits, SamplingParams(top_p=0.49)) == {0}
    assert support(logits, SamplingParams(top_p=0.51)) == {0, 1}
    assert support(logits, SamplingParams(top_p=0.79)) == {0, 1}
    assert support(logits, SamplingParams(top_p=0.81)) == {0, 1, 2}
    assert support(logits, SamplingParams(top_p=0.96)) == {0, 1, 2, 3}
    assert set(draw_counts(logits, SamplingParams(top_p=0.79))) == {0, 1}


def test_top_p_applies_after_top_k() -> None:
    # After top_k=2 the distribution is 0.625 / 0.375, so top_p=0.6 keeps only the first token.
    assert support(from_probs(PROBS), SamplingParams(top_k=2, top_p=0.6)) == {0}


def test_min_p_removes_tokens_below_a_fraction_of_the_top_probability() -> None:
    logits = from_probs(PROBS)
    assert support(logits, SamplingParams(min_p=0.5)) == {0, 1}  # threshold 0.25
    assert support(logits, SamplingParams(min_p=0.2)) == {0, 1, 2}  # threshold 0.1
    assert support(logits, SamplingParams(min_p=0.09)) == {0, 1, 2, 3}  # threshold 0.045
    assert set(draw_counts(logits, SamplingParams(min_p=0.5))) == {0, 1}


def test_typical_p_keeps_tokens_closest_to_the_entropy() -> None:
    # Entropy 1.142 nats; surprises 0.69, 1.20, 1.90, 3.00: token 1 is the most typical, then 0, 2, 3.
    logits = from_probs(PROBS)
    assert support(logits, SamplingParams(typical_p=0.25)) == {1}
    assert support(logits, SamplingParams(typical_p=0.7)) == {0, 1}
    assert support(logits, SamplingParams(typical_p=0.85)) == {0, 1, 2}
    assert set(draw_counts(logits, SamplingParams(typical_p=0.25))) == {1}


@pytest.mark.parametrize("vocab_size", [64, 49152])
def test_truncation_matches_transformers_warpers(vocab_size: int) -> None:
    warpers = pytest.importorskip("transformers.generation.logits_process")
    generator = torch.Generator().manual_seed(1)
    cases = [
        SamplingParams(temperature=0.7, top_k=10),
        SamplingParams(temperature=1.3, top_p=0.9),
        SamplingParams(temperature=3.0, top_p=0.97),  # a nucleus far wider than the first candidate width
        SamplingParams(temperature=1.0, min_p=0.05),
        SamplingParams(temperature=0.9, typical_p=0.6),
        SamplingParams(temperature=5.0, typical_p=0.95),
        SamplingParams(temperature=0.8, top_k=40, top_p=0.8, min_p=0.02, typical_p=0.9),
    ]
    logits = torch.randn(len(cases), vocab_size, generator=generator) * 3  # [R, V]
    ours = scale_and_truncate(logits, cases)
    for i, p in enumerate(cases):
        chain = [warpers.TemperatureLogitsWarper(p.temperature)]
        if p.top_k:
            chain.append(warpers.TopKLogitsWarper(p.top_k))
        if p.top_p < 1.0:
            chain.append(warpers.TopPLogitsWarper(p.top_p))
        if p.min_p > 0.0:
            chain.append(warpers.MinPLogitsWarper(p.min_p))
        if p.typical_p < 1.0:
            chain.append(warpers.TypicalLogitsWarper(p.typical_p))
        expected = logits[i : i + 1].clone()
        for warper in chain:
            expected = warper(torch.zeros(1, 1, dtype=torch.long), expected)
        assert torch.equal(torch.isfinite(ours[i]), torch.isfinite(expected[0])), p
        kept = torch.isfinite(ours[i])
        torch.testing.assert_close(ours[i][kept], expected[0][kept])


# ---- seeds --------------------------------------------------------------------------------------------


def test_seeded_row_is_identical_across_batch_compositions_and_positions() -> None:
    # A real vocabulary size: torch splits reductions over a lone row across threads, not rows in a batch.
    vocab_size = 49152
    seeded = SamplingParams(temperature=0.9, top_p=0.95, min_p=0.001, typical_p=0.97, seed=7)
    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.5, min_p=0.1),
        SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5, logprobs=2),
        SamplingParams(temperature=0.7, typical_p=0.8, seed=3),
    ]
    step_logits = torch.randn(8, 1, vocab_size, generator=torch.Generator().manual_seed(5)) * 3  # [S, 1, V]

    def generate(companions: list[SamplingParams], position: int) -> list[int]:
        generators = {id(p): torch.Generator().manual_seed(p.seed) for p in [seeded, *companions] if p.seed}
        sampler = Sampler()
        tokens: list[int] = []
        for step in range(step_logits.shape[0]):
            params = list(companions)
            params.insert(position, seeded)
            noise = torch.randn(len(params), vocab_size)
            noise[position] = step_logits[step, 0]
            rows = [row(p, output=list(tokens), generator=generators.get(id(p))) for p in params]
            tokens.append(sampler(noise, rows).token_ids[position])
        return tokens

    alone = generate([], 0)
    assert generate(others, 0) == alone
    assert generate(others, 4) == alone
    assert generate(others[::-1][:2], 1) == alone
    assert len(set(alone)) > 3  # it really sampled


def test_truncated_row_is_bit_identical_alone_and_in_a_batch() -> None:
    params = SamplingParams(temperature=0.8, top_k=3000, top_p=0.9, min_p=0.0005, typical_p=0.95)
    logits = torch.randn(6, 49152, generator=torch.Generator().manual_seed(3)) * 3
    batch = scale_and_truncate(logits, [params, SamplingParams(top_p=0.5), params, params, params, params])
    for i in (0, 3):
        assert torch.equal(scale_and_truncate(logits[i : i + 1], [params])[0], batch[i])


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    logits = torch.zeros(1, 1000)

    def tokens(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        sampler = Sampler()
        return [
            sampler(logits, [row(SamplingParams(seed=seed), generator=generator)]).token_ids[0]
            for _ in range(10)
        ]

    assert tokens(1) == tokens(1)
    assert tokens(1) != tokens(2)


# ---- logprobs -----------------------------------------------------------------------------------------


def test_logprobs_are_raw_log_softmax_with_rank_and_top_alternatives() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    raw = torch.log_softmax(logits, dim=-1)
    rows = [
        row(SamplingParams(temperature=0.0, logprobs=3)),
        row(SamplingParams(temperature=0.5, top_k=5, repetition_penalty=1.5, logprobs=0), prompt=[1, 2]),
        row(SamplingParams(temperature=1.0)),
    ]
    out = Sampler(generator=torch.Generator().manual_seed(0))(logits, rows)
    assert out.logprobs[2] is None
    for i in (0, 1):
        entry = out.logprobs[i]
        assert entry is not None and entry.token_id == out.token_ids[i]
        assert entry.logprob == pytest.approx(float(raw[i, entry.token_id]), abs=1e-6)
        assert entry.rank == int((raw[i] > raw[i, entry.token_id]).sum()) + 1
    assert out.logprobs[0].rank == 1
    top_values, top_ids = raw[0].topk(3)
    assert [t for t, _ in out.logprobs[0].top] == top_ids.tolist()
    assert [v for _, v in out.logprobs[0].top] == pytest.approx(top_values.tolist(), abs=1e-6)
    assert out.logprobs[1].top == []


def test_prompt_logprobs_score_each_prompt_token_from_the_previous_row() -> None:
    logits = torch.randn(4, 30)  # row i predicts prompt token i + 1
    prompt = [5, 9, 0, 29, 3]
    raw = torch.log_softmax(logits, dim=-1)
    result = Sampler().prompt_logprobs(logits, prompt, 2)
    assert result[0] is None and len(result) == len(prompt)
    for i, entry in enumerate(result[1:]):
        assert entry is not None and entry.token_id == prompt[i + 1]
        assert entry.logprob == pytest.approx(float(raw[i, prompt[i + 1]]), abs=1e-6)
        assert entry.rank == int((raw[i] > raw[i, prompt[i + 1]]).sum()) + 1
        assert [t for t, _ in entry.top] == raw[i].topk(2).indices.tolist()
    with pytest.raises(ValueError, match="one more id than logits has rows"):
        Sampler().prompt_logprobs(logits, prompt[:4], 2)


# ---- input validation ---------------------------------------------------------------------------------


def test_bad_inputs_are_rejected_with_clear_errors() -> None:
    sampler = Sampler()
    with pytest.raises(ValueError, match="float32"):
        sampler(torch.zeros(1, 4, dtype=torch.float64), [row(SamplingParams())])
    with pytest.raises(ValueError, match="2 logits rows for 1 sampling rows"):
        sampler(torch.zeros(2, 4), [row(SamplingParams())])
    with pytest.raises(ValueError, match="allowed_token_ids_mask"):
        sampler(
            torch.zeros(1, 4), [row(SamplingParams(), allowed_token_ids_mask=torch.ones(3, dtype=torch.bool))]
        )
    with pytest.raises(ValueError, match="counted by the penalties"):
        sampler(torch.zeros(1, 4), [row(SamplingParams(repetition_penalty=1.2), prompt=[4])])
    assert sampler(torch.zeros(0, 4), []).token_ids == []
