"""The real openai SDK (sync, async, streaming) against a live server on a tiny random model."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import openai
import pytest
from live_server import MAX_MODEL_LEN, TINY_MODEL, TINY_MODEL_ID, RunningServer


@pytest.fixture(scope="module")
def client(tiny_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.openai_base, api_key="unused", max_retries=0, timeout=60)


def test_seed_snippet_completion_and_chat(client: openai.OpenAI) -> None:
    completion = client.completions.create(model=TINY_MODEL_ID, prompt="The quick brown fox", max_tokens=8)
    assert isinstance(completion.choices[0].text, str) and completion.usage.completion_tokens <= 8
    chat = client.chat.completions.create(
        model=TINY_MODEL_ID,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say this is a test"},
        ],
        max_tokens=8,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.object == "chat.completion" and chat.model == TINY_MODEL_ID
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens


def test_models_list_and_get_by_id_or_alias(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [TINY_MODEL_ID]
    assert client.models.retrieve(TINY_MODEL_ID).id == TINY_MODEL_ID
    assert client.models.retrieve("tiny").id == TINY_MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("accounts/fireworks/models/nope")


def test_greedy_is_deterministic_and_seeded_sampling_reproduces(client: openai.OpenAI) -> None:
    def run(**kwargs: object) -> str:
        return (
            client.completions.create(model=TINY_MODEL, prompt="Once upon", max_tokens=12, **kwargs)
            .choices[0]
            .text
        )

    assert run(temperature=0) == run(temperature=0)
    assert run(temperature=1.0, seed=123) == run(temperature=1.0, seed=123)


def test_prompt_forms_give_one_choice_per_prompt_times_n(client: openai.OpenAI) -> None:
    batch = client.completions.create(
        model=TINY_MODEL, prompt=["a b", "c d e"], max_tokens=3, n=2, temperature=0.8
    )
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    ids = client.post("/tokenize", body={"prompt": "Hello world"}, cast_to=object)["tokens"]
    by_text = client.completions.create(model=TINY_MODEL, prompt="Hello world", max_tokens=4, temperature=0)
    by_ids = client.completions.create(model=TINY_MODEL, prompt=ids, max_tokens=4, temperature=0)
    assert by_text.choices[0].text == by_ids.choices[0].text
    assert by_text.usage.prompt_tokens == len(ids)


def test_echo_with_logprobs_covers_prompt_and_completion(client: openai.OpenAI) -> None:
    prompt = "The cat sat on the"
    result = client.completions.create(
        model=TINY_MODEL, prompt=prompt, max_tokens=3, echo=True, logprobs=2, temperature=0
    )
    choice = result.choices[0]
    lp = choice.logprobs
    n_prompt = result.usage.prompt_tokens
    assert choice.text.startswith(prompt)
    assert len(lp.tokens) == n_prompt + 3 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    assert all(choice.text[off:].startswith(tok) for tok, off in zip(lp.tokens, lp.text_offset, strict=True))
    # Greedy: each generated token is the most likely one, and it is listed among the top alternatives.
    for token, logprob, top in zip(
        lp.tokens[n_prompt:], lp.token_logprobs[n_prompt:], lp.top_logprobs[n_prompt:], strict=True
    ):
        assert (
            len(top) <= 2
            and max(top.values()) == pytest.approx(logprob)
            and top[token] == pytest.approx(logprob)
        )


def test_fireworks_echo_last_returns_the_prompt_suffix(client: openai.OpenAI) -> None:
    prompt = "one two three four"
    result = client.completions.create(
        model=TINY_MODEL, prompt=prompt, max_tokens=1, logprobs=1, extra_body={"echo_last": 2}
    )
    choice = result.choices[0]
    assert len(choice.logprobs.tokens) == 3
    assert all(v is not None for v in choice.logprobs.token_logprobs)
    # The two echoed tokens are the prompt's last two, and the text starts with them, not the whole prompt.
    ids = client.post("/tokenize", body={"prompt": prompt}, cast_to=object)["tokens"]
    suffix = [client.post("/detokenize", body={"tokens": [i]}, cast_to=object)["prompt"] for i in ids[-2:]]
    assert choice.logprobs.tokens[:2] == suffix and len(ids) > 2
    assert prompt.endswith("".join(suffix)) and choice.text.startswith("".join(suffix))
    assert not choice.text.startswith(prompt)


def test_chat_logprobs_have_bytes_and_top_alternatives(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_completion_tokens=4,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    for item in content:
        assert bytes(item.bytes).decode("utf-8", errors="replace") == item.token
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob


def test_stop_string_is_excluded_and_reported(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(model=TINY_MODEL, prompt="Hello", max_tokens=12, temperature=0)
        .choices[0]
        .text
    )
    stop = free[3:6]
    assert stop.strip(), f"greedy text {free!r} gives no usable stop string"  # deterministic: never skipped
    stopped = client.completions.create(
        model=TINY_MODEL, prompt="Hello", max_tokens=12, temperature=0, stop=[stop]
    )
    choice = stopped.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop  # reported
    assert choice.text == free[: free.index(stop)]  # cut right before the stop string, which is excluded


def test_max_tokens_truncates_to_the_context_or_errors_on_request(client: openai.OpenAI) -> None:
    prompt_ids = [100 + i for i in range(MAX_MODEL_LEN - 10)]
    truncated = client.completions.create(
        model=TINY_MODEL, prompt=prompt_ids, max_tokens=1000, extra_body={"ignore_eos": True}
    )
    assert truncated.usage.completion_tokens == 10 and truncated.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(
            model=TINY_MODEL,
            prompt=prompt_ids,
            max_tokens=1000,
            extra_body={"context_length_exceeded_behavior": "error"},
        )
    assert info.value.code == "context_length_exceeded" and info.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=TINY_MODEL, prompt=[5] * MAX_MODEL_LEN, max_tokens=1)
    assert info.value.code == "context_length_exceeded"
    no_limit = client.completions.create(model=TINY_MODEL, prompt=prompt_ids, extra_body={"ignore_eos": True})
    assert no_limit.usage.completion_tokens == 10  # no max_tokens: up to the remaining context


def test_stream_usage_rides_on_the_finish_chunk_by_default(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model=TINY_MODEL, prompt="Hi", max_tokens=5, stream=True, temperature=0)
    )
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices[0].finish_reason == "length"
    assert last.usage.completion_tokens == 5 and last.usage.total_tokens == last.usage.prompt_tokens + 5
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1


def test_stream_include_usage_follows_openai(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=TINY_MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 1


def test_streamed_text_equals_the_non_streamed_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story"}]
    full = client.chat.completions.create(model=TINY_MODEL, messages=messages, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model=TINY_MODEL, messages=messages, max_tokens=10, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        == full.choices[0].message.content
    )


def test_n_streams_indexed_choices(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        n=3,
        temperature=1.0,
        stream=True,
    )
    finishes: dict[int, str] = {}
    roles: set[int] = set()
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == {0, 1, 2} and set(finishes) == {0, 1, 2}


def test_fireworks_perf_metrics_headers_and_cached_tokens(client: openai.OpenAI) -> None:
    prompt = "A long shared prefix " * 8
    kwargs = {"model": TINY_MODEL, "prompt": prompt, "max_tokens": 2}
    client.completions.create(**kwargs)
    raw = client.completions.with_raw_response.create(**kwargs, extra_body={"perf_metrics_in_response": True})
    body = raw.parse()
    assert int(raw.headers["fireworks-prompt-tokens"]) == body.usage.prompt_tokens
    assert float(raw.headers["fireworks-server-time-to-first-token"]) >= 0
    assert raw.headers["x-request-id"]
    cached = body.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and int(raw.headers["fireworks-cached-prompt-tokens"]) == cached
    perf = body.model_extra["perf_metrics"]
    assert perf["prompt-tokens"] == body.usage.prompt_tokens and perf["cached-prompt-tokens"] == cached
    # A different isolation key never reuses another tenant's KV.
    isolated = client.completions.create(
        **kwargs, extra_body={"prompt_cache_isolation_key": "tenant-b-unique"}
    )
    assert isolated.usage.prompt_tokens_details.cached_tokens == 0
    header = {"x-prompt-cache-isolation-key": "tenant-c-unique"}
    by_header = client.completions.create(**kwargs, extra_headers=header)
    assert by_header.usage.prompt_tokens_details.cached_tokens == 0
    again = client.completions.create(**kwargs, extra_headers=header)
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_perf_metrics_on_the_last_stream_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model=TINY_MODEL,
            prompt="x",
            max_tokens=3,
            stream=True,
            extra_body={"perf_metrics_in_response": True},
        )
    )
    assert "perf_metrics" in chunks[-1].model_extra and all(
        "perf_metrics" not in (c.model_extra or {}) for c in chunks[:-1]
    )
    assert chunks[-1].model_extra["perf_metrics"]["generated-tokens"] == 3


def test_client_request_id_is_echoed(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(
        model=TINY_MODEL, prompt="x", max_tokens=1, extra_headers={"x-request-id": "my-trace-42"}
    )
    assert raw.headers["x-request-id"] == "my-trace-42"


def test_embeddings_float_base64_and_dimensions(client: openai.OpenAI) -> None:
    full = client.embeddings.create(
        model=TINY_MODEL, input=["hello world", "goodbye"], encoding_format="float"
    )
    vectors = np.array([d.embedding for d in full.data])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    short = client.embeddings.create(model=TINY_MODEL, input="hello world", dimensions=16)
    expected = vectors[0, :16] / np.linalg.norm(vectors[0, :16])
    np.testing.assert_allclose(short.data[0].embedding, expected, rtol=1e-4, atol=1e-6)
    raw = client.embeddings.with_raw_response.create(
        model=TINY_MODEL, input="hello world", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    np.testing.assert_allclose(
        np.frombuffer(base64.b64decode(encoded), dtype="<f4"), vectors[0], rtol=1e-5, atol=1e-6
    )


def test_async_client_runs_requests_concurrently(tiny_server: RunningServer) -> None:
    """Seven requests in flight at once are all admitted together and decoded in shared steps, and each gets
    exactly what it gets alone."""
    engine = tiny_server.engine
    prompts = [f"Item {i}" for i in range(6)]
    sync_client = openai.OpenAI(base_url=tiny_server.openai_base, api_key="x", max_retries=0)
    alone = [
        sync_client.completions.create(model=TINY_MODEL, prompt=p, max_tokens=6, temperature=0)
        .choices[0]
        .text
        for p in prompts
    ]
    chat = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        "temperature": 0,
    }
    chat_alone = sync_client.chat.completions.create(**chat).choices[0].message.content

    async def main() -> tuple[list[str], str, int]:
        async with openai.AsyncOpenAI(base_url=tiny_server.openai_base, api_key="x", max_retries=0) as client:
            await asyncio.to_thread(engine.pause)  # held: every request must be in the queue at the same time
            try:
                calls = [
                    asyncio.create_task(
                        client.completions.create(model=TINY_MODEL, prompt=p, max_tokens=6, temperature=0)
                    )
                    for p in prompts
                ]
                stream_task = asyncio.create_task(client.chat.completions.create(**chat, stream=True))
                while engine.stats().num_waiting < 7:
                    await asyncio.sleep(0.005)
                steps_before = engine.stats().num_steps
            finally:
                engine.resume()
            stream = await stream_task
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            texts = [r.choices[0].text for r in await asyncio.gather(*calls)]
            return texts, "".join(pieces), engine.stats().num_steps - steps_before

    texts, streamed, steps = asyncio.run(main())
    assert texts == alone and streamed == chat_alone
    assert steps < 6 * 6 + 4  # one step per token of each request would be 40: they were batched together


def test_completions_without_max_tokens_stop_at_openais_default_of_16(client: openai.OpenAI) -> None:
    """The seed snippet sends no max_tokens: like OpenAI, 16 tokens, not a run to the end of the context."""
    completion = client.completions.create(
        model=TINY_MODEL_ID, prompt="The quick brown fox", extra_body={"ignore_eos": True}
    )
    assert completion.usage.completion_tokens == 16 and completion.choices[0].finish_reason == "length"
    chat = client.chat.completions.create(
        model=TINY_MODEL_ID, messages=[{"role": "user", "content": "Hi"}], extra_body={"ignore_eos": True}
    )
    assert chat.usage.completion_tokens > 16  # chat runs to the end of the turn, capped by the context
