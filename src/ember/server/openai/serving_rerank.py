"""POST /v1/rerank and vLLM's /v1/score: how relevant each document is to a query, by the model `model` names.

- The embedding model (an encoder, the default when `model` is left out): the cosine similarity of the query's
  and the document's embeddings, in [-1, 1]; a cross-encoder instead scores each (query, document) pair itself,
  sigmoid of its logit, in [0, 1].
- The chat LLM (or one of its adapters): P(yes) of a yes/no relevance judgement (llm_relevance.py), in [0, 1].

Inputs are tokenized on the preparation threads, counted against the embeddings limits (max_embedding_inputs
documents, max_embedding_tokens tokens in all) and abandoned when the client leaves."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request

from ember.models.encoder.encoder_model import PairIds
from ember.server.common.errors import invalid_request
from ember.server.common.generation import DisconnectWatch
from ember.server.common.preparation import new_id
from ember.server.common.protocol import APIModel
from ember.server.common.served_encoder import ServedEncoder
from ember.server.common.services import ServingState
from ember.server.openai.llm_relevance import JudgedPair, LlmRelevance
from ember.server.openai.rerank_protocol import RerankRequest, ScoreRequest


@dataclass(frozen=True)
class PairSet:
    """Texts to score: queries and documents once each, and which (query, document) pairs to score."""

    queries: list[str]
    documents: list[str]
    pairs: list[tuple[int, int]]
    query_param: str
    document_param: str

    def query_name(self, i: int) -> str:
        return self.query_param if len(self.queries) == 1 else f"{self.query_param}[{i}]"

    def document_name(self, i: int) -> str:
        return self.document_param if len(self.documents) == 1 else f"{self.document_param}[{i}]"


@dataclass(frozen=True)
class Scores:
    model: str  # the name echoed in the response
    values: list[float]  # one per pair
    tokens: int


def refuse_unsupported(body: APIModel, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(body, name) is not None:
            raise invalid_request(f"{name} is not supported by this server; leave it out", param=name)


class RerankServing:
    def __init__(self, state: ServingState, encoder: ServedEncoder | None = None) -> None:
        self.state = state
        self.encoder = encoder
        self.llm = LlmRelevance(state)

    async def rerank(self, body: RerankRequest, http: Request) -> dict[str, Any]:
        refuse_unsupported(body, RerankRequest.UNSUPPORTED)
        documents = body.document_texts()
        texts = PairSet(
            [body.query], documents, [(0, i) for i in range(len(documents))], "query", "documents"
        )
        scores = await self._score(body.model, texts, body.task, http)
        order = sorted(range(len(documents)), key=lambda i: scores.values[i], reverse=True)  # stable on ties
        top = order[: body.top_n] if body.top_n is not None else order
        with_documents = body.return_documents is not False  # Fireworks' default: true
        results, data = [], []
        for i in top:
            result: dict[str, Any] = {"index": i, "relevance_score": scores.values[i]}
            fireworks = dict(result)
            if with_documents:
                result["document"] = {"text": documents[i]}
                fireworks["document"] = documents[i]
            results.append(result)
            data.append(fireworks)
        # Cohere / vLLM clients read `results` (document as {text}), Fireworks' read `data` (document as text).
        return {
            "id": new_id("rerank"),
            "object": "list",
            "model": scores.model,
            "results": results,
            "data": data,
            "usage": {"prompt_tokens": scores.tokens, "total_tokens": scores.tokens},
        }

    async def score(self, body: ScoreRequest, http: Request) -> dict[str, Any]:
        refuse_unsupported(body, ScoreRequest.UNSUPPORTED)
        first = [body.text_1] if isinstance(body.text_1, str) else body.text_1
        second = [body.text_2] if isinstance(body.text_2, str) else body.text_2
        if len(first) == 1:
            pairs = [(0, i) for i in range(len(second))]
        elif len(first) == len(second):
            pairs = [(i, i) for i in range(len(first))]
        else:
            raise invalid_request(
                f"text_1 has {len(first)} items and text_2 {len(second)}: send one text_1, or lists of one length",
                param="text_2",
            )
        scores = await self._score(
            body.model, PairSet(first, second, pairs, "text_1", "text_2"), body.task, http
        )
        return {
            "id": new_id("score"),
            "object": "list",
            "created": int(time.time()),
            "model": scores.model,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores.values)],
            "usage": {"prompt_tokens": scores.tokens, "total_tokens": scores.tokens, "completion_tokens": 0},
        }

    def _encoder_for(self, requested: str | None) -> ServedEncoder | None:
        encoder = self.encoder
        if encoder is not None and (requested is None or encoder.answers_to(requested)):
            return encoder
        return None

    async def _score(self, requested: str | None, texts: PairSet, task: str | None, http: Request) -> Scores:
        limit = self.state.config.max_embedding_inputs
        if len(texts.pairs) > limit or len(texts.queries) > limit:
            raise invalid_request(
                f"{texts.document_param} has {len(texts.pairs)} items; at most {limit} per request",
                param=texts.document_param,
            )
        encoder = self._encoder_for(requested)
        watch = DisconnectWatch(http, self.state.engine)
        try:
            if encoder is None:
                name, lora_id = self.state.models.lookup(requested)
                judged = await self.state.preparation.run(self._judging_prompts, texts, task, watch=watch)
                values = await self.llm.scores(judged, lora_id, http, watch)
                return Scores(name, values, sum(len(p.prompt_token_ids) for p in judged))
            if task is not None:
                raise invalid_request(
                    "task is the instruction of an LLM judge; the embedding model scores without one",
                    param="task",
                )
            name = requested or encoder.model_id
            if encoder.is_cross_encoder:
                pair_ids = await self.state.preparation.run(self._pair_ids, encoder, texts, watch=watch)
                work = asyncio.ensure_future(encoder.score_pairs(pair_ids))
                values = await watch.unless_disconnected(work)
                return Scores(name, values, sum(len(p.token_ids) for p in pair_ids))
            ids = await self.state.preparation.run(self._text_ids, encoder, texts, watch=watch)
            vectors = await watch.unless_disconnected(asyncio.ensure_future(encoder.embed(ids)))
            return Scores(name, _cosines(vectors, texts), sum(len(i) for i in ids))
        finally:
            watch.close()

    def _check_cap(self, total: int, texts: PairSet) -> None:
        cap = self.state.config.max_embedding_tokens
        if total > cap:
            raise invalid_request(
                f"{texts.query_param} and {texts.document_param} have {total} tokens, over this server's limit "
                f"of {cap} tokens per request (max_embedding_tokens); send fewer {texts.document_param} per request",
                param=texts.document_param,
            )

    def _text_ids(self, encoder: ServedEncoder, texts: PairSet) -> list[list[int]]:
        """Queries' then documents' token ids (runs on a preparation thread)."""
        ids = [encoder.encode(q, texts.query_name(i)) for i, q in enumerate(texts.queries)]
        ids += [encoder.encode(d, texts.document_name(i)) for i, d in enumerate(texts.documents)]
        self._check_cap(sum(len(i) for i in ids), texts)
        return ids

    def _pair_ids(self, encoder: ServedEncoder, texts: PairSet) -> list[PairIds]:
        pairs = [
            encoder.encode_pair(texts.queries[q], texts.documents[d], texts.document_name(d))
            for q, d in texts.pairs
        ]
        self._check_cap(sum(len(p.token_ids) for p in pairs), texts)
        return pairs

    def _judging_prompts(self, texts: PairSet, task: str | None) -> list[JudgedPair]:
        judged = [
            self.llm.prompt(texts.queries[q], texts.documents[d], task, texts.document_name(d))
            for q, d in texts.pairs
        ]
        self._check_cap(sum(len(p.prompt_token_ids) for p in judged), texts)
        return judged


def _cosines(vectors: list[list[float]], texts: PairSet) -> list[float]:
    matrix = np.asarray(vectors, dtype=np.float64)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    queries, documents = matrix[: len(texts.queries)], matrix[len(texts.queries) :]
    return [float(np.clip(queries[q] @ documents[d], -1.0, 1.0)) for q, d in texts.pairs]
