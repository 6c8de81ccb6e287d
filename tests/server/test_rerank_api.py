"""POST /v1/rerank and vLLM's /v1/score on a live server: with the bundled all-MiniLM-L6-v2 a hand-made
relevance set ranks the relevant document first, the response has Fireworks' and Cohere's shapes (top_n,
return_documents), /score pairs texts vLLM's three ways; with the chat LLM the score is Qwen3-Reranker's
P(yes) / (P(yes) + P(no)), checked against the prompt's own logprobs from /v1/completions; bad input is a 400."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from encoder_server import ENCODER, ENCODER_ID, running_encoder_server, write_tiny_cross_encoder
from live_server import TINY_MODEL, RunningServer, serve_in_thread, tiny_engine

from ember.models.encoder.loader import load_encoder
from ember.server.app import build_app
from ember.server.common.config import ServerConfig
from ember.server.openai.llm_relevance import DEFAULT_TASK, JUDGE_INSTRUCTION

# (query, relevant document, distractors): the distractors share the topic's words or its shape.
RELEVANCE_SET = [
    (
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        [
            "France is famous for its wine and cheese.",
            "Berlin is the capital of Germany.",
            "The Eiffel Tower was built for a world's fair.",
        ],
    ),
    (
        "How do vaccines protect against disease?",
        "Vaccines train the immune system to recognize a pathogen so the body can fight it off later.",
        [
            "Diseases spread faster in crowded cities.",
            "Antibiotics do not work against viruses.",
            "The hospital opened a new wing last year.",
        ],
    ),
    (
        "best way to keep bread fresh",
        "Store bread in a paper bag at room temperature, or freeze slices to keep them fresh for weeks.",
        [
            "Bread is made from flour, water, yeast and salt.",
            "Fresh vegetables are sold at the market.",
            "The bakery closes at six.",
        ],
    ),
    (
        "Who wrote Pride and Prejudice?",
        "Pride and Prejudice is an 1813 novel by Jane Austen.",
        [
            "Charles Dickens wrote Oliver Twist.",
            "Prejudice can harm communities.",
            "The novel was adapted into several films.",
        ],
    ),
    (
        "how does a refrigerator cool food",
        "A refrigerator pumps refrigerant that absorbs heat inside the cabinet and releases it outside through coils.",
        [
            "Food should be stored below five degrees.",
            "The kitchen has a new stove.",
            "Ice cream melts quickly in summer.",
        ],
    ),
    (
        "symptoms of dehydration",
        "Signs of dehydration include thirst, dark urine, dizziness, dry mouth and fatigue.",
        [
            "Drinking coffee is popular in the morning.",
            "Deserts receive very little rain.",
            "Athletes train for many hours.",
        ],
    ),
    (
        "Why is the sky blue?",
        "Sunlight is scattered by air molecules, and blue light scatters more than red, so the sky looks blue.",
        [
            "The ocean covers most of the Earth.",
            "Blue is a popular color for cars.",
            "Clouds are made of water droplets.",
        ],
    ),
    (
        "python list sort descending",
        "Call my_list.sort(reverse=True) or sorted(my_list, reverse=True) to sort a Python list in descending order.",
        [
            "Python is a large snake found in Asia and Africa.",
            "Lists of groceries help when shopping.",
            "JavaScript arrays have a map method.",
        ],
    ),
]


@pytest.fixture(scope="module")
def encoder_server() -> Iterator[RunningServer]:
    yield from running_encoder_server()


def post(server: RunningServer, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes a lone surrogate as JSON allows (\ud800); httpx's own encoder refuses to send it
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.url}/v1/{path}", content=json.dumps(body), headers=headers, timeout=120)


def test_the_relevant_document_ranks_first(encoder_server: RunningServer) -> None:
    firsts = 0
    for query, relevant, distractors in RELEVANCE_SET:
        documents = [*distractors[:1], relevant, *distractors[1:]]  # the relevant one is never at index 0
        reply = post(encoder_server, "rerank", {"model": ENCODER, "query": query, "documents": documents})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        scores = [r["relevance_score"] for r in results]
        assert scores == sorted(scores, reverse=True) and sorted(r["index"] for r in results) == [0, 1, 2, 3]
        firsts += results[0]["index"] == 1
    assert firsts >= len(RELEVANCE_SET) - 1, f"relevant first in {firsts} of {len(RELEVANCE_SET)}"


def test_rerank_response_shapes_top_n_and_return_documents(encoder_server: RunningServer) -> None:
    query, relevant, distractors = RELEVANCE_SET[0]
    documents = [*distractors, relevant]
    body = post(encoder_server, "rerank", {"query": query, "documents": documents, "top_n": 2}).json()
    assert body["model"] == ENCODER_ID and body["object"] == "list" and body["id"].startswith("rerank")
    assert len(body["results"]) == 2 and body["results"][0] == {
        "index": 3,
        "relevance_score": body["results"][0]["relevance_score"],
        "document": {"text": relevant},
    }
    assert body["data"][0] == {
        "index": 3,
        "relevance_score": body["results"][0]["relevance_score"],
        "document": relevant,
    }
    assert -1.0 <= body["results"][1]["relevance_score"] < body["results"][0]["relevance_score"] <= 1.0
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    bare = post(
        encoder_server,
        "rerank",
        {
            "model": ENCODER,
            "query": query,
            "documents": [{"text": d} for d in documents],
            "return_documents": False,
        },
    ).json()
    assert all(set(r) == {"index", "relevance_score"} for r in bare["results"])
    assert [r["index"] for r in bare["results"]][0] == 3
    fireworks_path = httpx.post(
        f"{encoder_server.url}/inference/v1/rerank", json={"query": query, "documents": documents}, timeout=60
    )
    assert fireworks_path.json()["data"][0]["index"] == 3


def test_score_pairs_text_1_with_text_2_three_ways(encoder_server: RunningServer) -> None:
    query, relevant, distractors = RELEVANCE_SET[1]
    one = post(encoder_server, "score", {"model": ENCODER, "text_1": query, "text_2": relevant}).json()
    assert one["object"] == "list" and one["data"][0]["object"] == "score" and len(one["data"]) == 1
    many = post(
        encoder_server, "score", {"model": ENCODER, "text_1": query, "text_2": [relevant, *distractors]}
    ).json()
    scores = [d["score"] for d in many["data"]]
    assert [d["index"] for d in many["data"]] == [0, 1, 2, 3] and scores[0] == max(scores)
    assert scores[0] == pytest.approx(one["data"][0]["score"], abs=1e-5)
    pairwise = post(
        encoder_server,
        "score",
        {"model": ENCODER, "text_1": [query, query], "text_2": [relevant, distractors[0]]},
    ).json()
    assert [d["score"] for d in pairwise["data"]] == pytest.approx(scores[:2], abs=1e-5)
    mismatch = post(
        encoder_server, "score", {"model": ENCODER, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}
    )
    assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "text_2"
    over = post(encoder_server, "score", {"model": ENCODER, "text_1": "q", "text_2": ["word " * 200] * 12})
    assert over.status_code == 400 and over.json()["error"]["param"] == "text_2"
    assert "max_embedding_tokens" in over.json()["error"]["message"]


def _token_ids(server: RunningServer, body: dict) -> list[int]:
    reply = post(server, "tokenize", {"model": TINY_MODEL, **body})
    assert reply.status_code == 200, reply.text
    return reply.json()["tokens"]


def _prompt_logprob_of_last(server: RunningServer, prompt: list[int]) -> float:
    body = {
        "model": TINY_MODEL,
        "prompt": prompt,
        "max_tokens": 1,
        "echo": True,
        "logprobs": 0,
        "temperature": 0,
    }
    reply = post(server, "completions", body)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["logprobs"]["token_logprobs"][len(prompt) - 1]


def test_the_chat_llm_judges_yes_or_no_like_qwen3_reranker(encoder_server: RunningServer) -> None:
    query, documents = "What is ember?", ["ember serves language models.", "Bananas are yellow."]
    reply = post(encoder_server, "rerank", {"model": TINY_MODEL, "query": query, "documents": documents})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == TINY_MODEL and len(body["results"]) == 2
    yes = _token_ids(encoder_server, {"prompt": "yes", "add_special_tokens": False})
    no = _token_ids(encoder_server, {"prompt": "no", "add_special_tokens": False})
    assert len(yes) == len(no) == 1
    for result in body["results"]:
        messages = [
            {"role": "system", "content": JUDGE_INSTRUCTION},
            {
                "role": "user",
                "content": f"<Instruct>: {DEFAULT_TASK}\n<Query>: {query}\n<Document>: {documents[result['index']]}",
            },
        ]
        prompt = _token_ids(
            encoder_server,
            {
                "messages": messages,
                "add_generation_prompt": True,
                "chat_template_kwargs": {"enable_thinking": False},
            },
        )
        log_yes = _prompt_logprob_of_last(encoder_server, prompt + yes)
        log_no = _prompt_logprob_of_last(encoder_server, prompt + no)
        expected = 1.0 / (1.0 + math.exp(log_no - log_yes))
        assert result["relevance_score"] == pytest.approx(expected, abs=1e-3)
    # more pairs than are judged at once (llm_relevance.PAIRS_IN_FLIGHT): every one is scored
    many = post(
        encoder_server,
        "rerank",
        {"model": TINY_MODEL, "query": query, "documents": [f"doc {i}" for i in range(20)]},
    )
    scores = [r["relevance_score"] for r in many.json()["results"]]
    assert (
        len(scores) == 20 and scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
    )
    task = post(
        encoder_server,
        "score",
        {"model": TINY_MODEL, "text_1": query, "text_2": documents[0], "task": "Judge."},
    )
    assert task.status_code == 200 and 0.0 <= task.json()["data"][0]["score"] <= 1.0


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"query": "q", "documents": []}, "documents", "at least 1"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n", "greater than or equal to 1"),
        ({"query": "q", "documents": ["d"], "max_chunks_per_doc": 2}, "max_chunks_per_doc", "not supported"),
        ({"query": "q", "documents": ["d"], "rank_fields": ["title"]}, "rank_fields", "not supported"),
        ({"query": "q", "documents": ["d"], "task": "Judge."}, "task", "LLM judge"),
        ({"query": "q", "documents": ["d"] * 33}, "documents", "at most 32"),
        ({"query": "q", "documents": ["fine", "word " * 300]}, "documents[1]", "at most 256 tokens"),
        ({"query": "q", "documents": ["word " * 200] * 12}, "documents", "max_embedding_tokens"),
        ({"query": "q\ud800", "documents": ["d"]}, "query", "Unicode"),
    ],
)
def test_bad_rerank_bodies_are_400s_naming_the_parameter(
    encoder_server: RunningServer, body: dict, param: str, words: str
) -> None:
    reply = post(encoder_server, "rerank", {"model": ENCODER, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_an_unknown_model_is_a_404(encoder_server: RunningServer) -> None:
    reply = post(encoder_server, "rerank", {"model": "no-such-model", "query": "q", "documents": ["d"]})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{encoder_server.url}/health", timeout=10).status_code == 200


def test_a_cross_encoder_scores_each_pair_itself(tmp_path: Path) -> None:
    write_tiny_cross_encoder(tmp_path / "tiny-reranker")
    engine = tiny_engine()
    model = load_encoder(tmp_path / "tiny-reranker")
    server, thread, url = serve_in_thread(build_app(engine, ServerConfig(model_name=TINY_MODEL), None, model))
    try:
        documents = ["ember serves models", "a much longer document about something else entirely"]
        reply = httpx.post(
            f"{url}/v1/score", json={"text_1": "what is ember", "text_2": documents}, timeout=60
        )
        assert reply.status_code == 200, reply.text
        expected = model.score_pairs([model.encode_pair("what is ember", d) for d in documents])
        assert [d["score"] for d in reply.json()["data"]] == pytest.approx(expected, abs=1e-6)
        assert reply.json()["model"] == "accounts/fireworks/models/tiny-reranker"
        ranked = httpx.post(
            f"{url}/v1/rerank",
            json={"model": "tiny-reranker", "query": "what is ember", "documents": documents},
        ).json()
        assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx(
            sorted(expected, reverse=True)
        )
        refused = httpx.post(f"{url}/v1/embeddings", json={"model": "tiny-reranker", "input": "hi"})
        assert refused.status_code == 400 and "cross-encoder" in refused.json()["error"]["message"]
        # without a model, embeddings fall back to the chat model: a cross-encoder has none to give
        assert (
            len(httpx.post(f"{url}/v1/embeddings", json={"input": "hi"}).json()["data"][0]["embedding"])
            == engine.model_config.hidden_size
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
