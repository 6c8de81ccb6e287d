"""Stop strings, stop tokens, EOS and length, with streaming-safe text."""

from __future__ import annotations

import random

import pytest

from ember.engine.detokenizer import IncrementalDetokenizer
from ember.engine.sampling_params import SamplingParams
from ember.engine.stop_checker import StopChecker, StopResult
from ember.models.default_model import default_gguf_path
from ember.models.gguf_loader import load_gguf_tokenizer

EOS = 2
WORD = 100  # any ordinary token id; the text is given separately


def run(checker: StopChecker, pieces: list[str], token_ids: list[int] | None = None) -> list[StopResult]:
    """Feed text pieces (one per token) until the checker finishes; return every result."""
    results = []
    for n, piece in enumerate(pieces, start=1):
        token = token_ids[n - 1] if token_ids else WORD
        results.append(checker.check(token, piece, n))
        if results[-1].finished:
            break
    return results


def emitted(results: list[StopResult]) -> list[str]:
    return [r.emit_text for r in results]


def checker(max_tokens: int = 100, eos: tuple[int, ...] = (EOS,), **params) -> StopChecker:
    return StopChecker(SamplingParams(**params), eos, max_tokens)


# ---- stop strings -------------------------------------------------------------------------------------


def test_include_stop_str_in_output_keeps_the_stop_string_and_nothing_after_it() -> None:
    # vLLM's include_stop_str_in_output: the stop string ends the text; what followed it in the token is dropped.
    results = run(checker(stop=["STOP"], include_stop_str_in_output=True), ["Hel", "lo ST", "OP now"])
    assert "".join(emitted(results)) == "Hello STOP"
    assert results[-1].stop_reason == "STOP"
    stopped_by_token = run(
        checker(stop_token_ids=[7], include_stop_str_in_output=True), ["a", "<end>"], [WORD, 7]
    )
    assert "".join(emitted(stopped_by_token)) == "a<end>" and stopped_by_token[-1].stop_reason == 7


def test_stop_string_split_across_tokens_is_held_back_and_excluded() -> None:
    c = checker(stop=["STOP"])
    results = run(c, ["Hel", "lo ST", "OP now"])
    assert emitted(results) == ["Hel", "lo ", ""]
    assert results[-1].finish_reason == "stop" and results[-1].stop_reason == "STOP"
    assert c.text == "Hello "


def test_stop_string_at_the_very_start() -> None:
    results = run(checker(stop=["STOP"]), ["STOP and more"])
    assert emitted(results) == [""]
    assert results[0].finished and results[0].stop_reason == "STOP"


def test_stop_string_inside_one_token_cuts_there() -> None:
    c = checker(stop=["\n\n"])
    results = run(c, ["first line\n\nsecond line"])
    assert emitted(results) == ["first line"]
    assert c.text == "first line"


def test_overlapping_stops_end_at_the_one_completed_first() -> None:
    # "abc" is complete one character before "bcd".
    results = run(checker(stop=["bcd", "abc"]), ["xab", "cd"])
    assert "".join(emitted(results)) == "x" and results[-1].stop_reason == "abc"
    # "bc" completes before "abcd", even though "abcd" starts earlier.
    results = run(checker(stop=["abcd", "bc"]), ["xabcd"])
    assert emitted(results) == ["xa"] and results[-1].stop_reason == "bc"
    # Equal ends: the longer string, which starts earlier, is the one excluded.
    results = run(checker(stop=["cd", "abcd"]), ["xabcd"])
    assert emitted(results) == ["x"] and results[-1].stop_reason == "abcd"


def test_result_does_not_depend_on_how_text_is_split_into_tokens() -> None:
    rng = random.Random(0)
    stops = ["abc", "cab", "bb", "<|end|>"]
    for _ in range(300):
        text = "".join(
            rng.choice(["a", "b", "c", "x", "<|end|>", "<|e"]) for _ in range(rng.randrange(1, 15))
        )
        char_by_char = run(checker(stop=stops), list(text))
        cuts = (
            sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randrange(0, 5))))
            if len(text) > 1
            else []
        )
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        chunked = run(checker(stop=stops), pieces)
        assert "".join(emitted(chunked)) == "".join(emitted(char_by_char)), (text, pieces)
        assert chunked[-1].stop_reason == char_by_char[-1].stop_reason, (text, pieces)
        assert chunked[-1].finished == char_by_char[-1].finished
        assert not any(stop in "".join(emitted(chunked)) for stop in stops)


def test_text_that_might_start_a_stop_is_released_once_it_cannot() -> None:
    c = checker(stop=["<|end|>", "###"])
    results = run(c, ["foo <|en", "d", "x and #", "#!"])
    assert emitted(results) == ["foo ", "", "<|endx and ", "##!"]
    assert not results[-1].finished


def test_held_text_is_released_when_the_sequence_ends_otherwise() -> None:
    by_length = run(checker(max_tokens=2, stop=["END"]), ["ab", "E"])
    assert emitted(by_length) == ["ab", "E"] and by_length[-1].finish_reason == "length"

    by_eos = run(checker(stop=["END"]), ["ab", "E", "<eos text>"], [WORD, WORD, EOS])
    assert emitted(by_eos) == ["ab", "", "E"]
    assert by_eos[-1].finish_reason == "stop" and by_eos[-1].stop_reason is None


def test_flush_appends_the_detokenizers_last_bytes_after_length() -> None:
    c = checker(max_tokens=1, stop=["END"])
    assert c.check(WORD, "ab", 1).finish_reason == "length"
    assert c.flush("\ufffd") == "\ufffd"
    assert c.text == "ab\ufffd"


def test_stop_strings_before_min_tokens_are_ignored() -> None:
    results = run(checker(stop=["!"], min_tokens=3), ["a!", "b", "c!d"])
    assert emitted(results) == ["a!", "b", "c"]
    assert results[-1].stop_reason == "!"


# ---- tokens and length --------------------------------------------------------------------------------


def test_eos_stops_without_its_text() -> None:
    c = checker()
    results = run(c, ["Hi", "<|im_end|>"], [WORD, EOS])
    assert emitted(results) == ["Hi", ""]
    assert results[-1].finish_reason == "stop" and results[-1].stop_reason is None
    assert c.text == "Hi"


def test_ignore_eos_keeps_going_and_keeps_the_text() -> None:
    results = run(checker(ignore_eos=True, max_tokens=3), ["Hi", "<eos>", "x"], [WORD, EOS, WORD])
    assert emitted(results) == ["Hi", "<eos>", "x"]
    assert results[-1].finish_reason == "length"


def test_eos_before_min_tokens_does_not_stop() -> None:
    results = run(checker(min_tokens=2), ["", "", "more"], [EOS, EOS, WORD])
    assert [r.finished for r in results] == [False, True]
    assert results[1].finish_reason == "stop"


def test_stop_token_ids_report_the_token() -> None:
    results = run(checker(stop_token_ids=[42]), ["a", "<42>"], [WORD, 42])
    assert emitted(results) == ["a", ""]
    assert results[-1].finish_reason == "stop" and results[-1].stop_reason == 42


def test_max_tokens_gives_length_but_a_stop_on_the_last_token_wins() -> None:
    results = run(checker(max_tokens=2), ["a", "b", "c"])
    assert len(results) == 2 and results[-1].finish_reason == "length" and results[-1].stop_reason is None
    results = run(checker(max_tokens=2, stop=["b"]), ["a", "b"])
    assert results[-1].finish_reason == "stop" and results[-1].stop_reason == "b"
    results = run(checker(max_tokens=2), ["a", "<eos>"], [WORD, EOS])
    assert results[-1].finish_reason == "stop" and emitted(results) == ["a", ""]


def test_invalid_use_is_rejected() -> None:
    with pytest.raises(ValueError, match="stop strings must not be empty"):
        checker(stop=[""])
    with pytest.raises(ValueError, match="max_tokens must be at least 1"):
        checker(max_tokens=0)
    c = checker(max_tokens=1)
    c.check(WORD, "a", 1)
    with pytest.raises(ValueError, match="already finished"):
        c.check(WORD, "b", 2)


# ---- with the real tokenizer --------------------------------------------------------------------------


def test_stop_string_made_of_split_characters_with_the_real_tokenizer() -> None:
    tokenizer, _ = load_gguf_tokenizer(default_gguf_path())
    ids = tokenizer.encode("Hi 😀 there 世界 and more")
    detok = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
    c = StopChecker(SamplingParams(stop=["世界"]), tokenizer.eos_token_ids, 100)
    deltas = []
    for n, token in enumerate(ids, start=1):
        result = c.check(token, detok.add_tokens([token]), n)
        deltas.append(result.emit_text)
        if result.finished:
            break
    assert result.finished and result.stop_reason == "世界"
    assert "".join(deltas) == c.text == "Hi 😀 there "
    assert all("\ufffd" not in d for d in deltas)
