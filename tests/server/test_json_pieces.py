"""Big bodies are parsed a piece at a time (common/json_pieces.py) and long lists of messages validated an item
at a time (common/protocol.py), so the event loop gets the GIL in between: the result and the errors must be
exactly those of json.loads and of one pydantic call."""

from __future__ import annotations

import json
import random

import pytest

from ember.server.common.errors import APIError
from ember.server.common.json_pieces import loads_in_pieces
from ember.server.common.protocol import LONG_LIST_ITEMS, OFF_LOOP_PARSE_BYTES, parse_json, validate_body
from ember.server.openai.protocol import ChatCompletionRequest


def _reject(name: str) -> float:
    raise ValueError(name)


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.randint(-(10**12), 10**12)
    if kind == 1:
        return rng.choice([0.5, -1e-7, 3.25e10])
    if kind == 2:
        return rng.choice(["", "a", 'quote " and \\ back', "é ∑ 🙂", "\n\t"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice("abcab"): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _outcome(parse, text: str) -> tuple:
    try:
        return ("value", parse(text))
    except json.JSONDecodeError as error:
        return ("decode error", error.msg, error.pos)
    except ValueError as error:
        return ("value error", str(error))


def test_random_documents_and_their_corruptions_read_as_json_loads_reads_them() -> None:
    rng = random.Random(7)
    for _ in range(400):
        document = {f"k{i}": _random_value(rng) for i in range(rng.randrange(5))}
        text = json.dumps(document, indent=rng.choice([None, 1]), separators=rng.choice([None, (",", ":")]))
        texts = [text, text.replace('"k0"', '"k1"')]  # a repeated key keeps its last value
        for _ in range(3):  # a character dropped, doubled or replaced anywhere
            at = rng.randrange(len(text))
            texts += [
                text[:at] + text[at + 1 :],
                text[:at] + text[at] + text[at:],
                text[:at] + "]" + text[at:],
            ]
        texts += [text + " x", "  " + text + "\n", text.replace("0.5", "NaN")]
        for sample in texts:
            expected = _outcome(lambda t: json.loads(t, parse_constant=_reject), sample)
            assert _outcome(lambda t: loads_in_pieces(t, parse_constant=_reject), sample) == expected, sample


def _chat_body(count: int) -> dict:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(count)]
    return {"model": "m", "messages": messages, "max_tokens": 4}


def test_a_big_chat_body_gives_the_same_request_as_one_pydantic_call() -> None:
    body = _chat_body(3 * LONG_LIST_ITEMS + 5)
    raw = json.dumps(body).encode()
    assert len(raw) > OFF_LOOP_PARSE_BYTES  # the piecewise parser and the item-wise validation both run
    parsed = parse_json(raw)
    assert parsed == body
    assert validate_body(ChatCompletionRequest, parsed) == ChatCompletionRequest.model_validate(body)


@pytest.mark.parametrize(
    ("bad_message", "param", "words"),
    [
        ({"role": "wizard", "content": "x"}, "messages[2500].role", "unknown role 'wizard'"),
        ({"role": "user", "content": 5}, "messages[2500].content", "valid string"),
        ({"content": "no role"}, "messages[2500].role", "is required"),
    ],
)
def test_a_bad_message_in_a_long_list_is_named_by_its_index(
    bad_message: dict, param: str, words: str
) -> None:
    body = _chat_body(2 * LONG_LIST_ITEMS + 1000)
    body["messages"][2500] = bad_message
    with pytest.raises(APIError) as caught:
        validate_body(ChatCompletionRequest, body)
    assert caught.value.param == param
    assert words in str(caught.value)


def test_a_corrupt_big_body_is_a_400_with_its_position() -> None:
    raw = json.dumps(_chat_body(5000)).encode()
    corrupt = raw[:70_000] + b"}" + raw[70_000:]
    assert len(corrupt) > OFF_LOOP_PARSE_BYTES
    with pytest.raises(APIError) as caught:
        parse_json(corrupt)
    assert caught.value.status == 400
    assert "not valid JSON" in str(caught.value) and "column 70001" in str(caught.value)
