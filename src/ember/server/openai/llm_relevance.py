"""Relevance of a document to a query judged by the chat LLM, the way Qwen3-Reranker scores: the model is asked
whether the document meets the query (answer "yes" or "no"), and the score is P(yes) / (P(yes) + P(no)) of its
next token, i.e. the softmax over just those two logits.

The prompt is Qwen3-Reranker's (its system line, `<Instruct>` / `<Query>` / `<Document>`), rendered with the
served model's own chat template, thinking switched off (a Qwen3 template then ends with the empty think block
Qwen3-Reranker expects). Each pair runs through the engine as two one-token generations with the same prompt:
one with "yes" forced by logit_bias, one with "no". The engine reports the raw log-probability of the token it
sampled (before any bias), so the pair gives log P(yes) and log P(no) exactly; the second round finds the
prompt's full KV blocks in the prefix cache and computes only its last partial block."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastapi import Request

from ember.engine.sampling_params import SamplingParams
from ember.server.common.errors import APIError, invalid_request
from ember.server.common.generation import ClientLeft, DisconnectWatch, collect_finals
from ember.server.common.metrics import RequestTimer
from ember.server.common.preparation import CACHE_ISOLATION_HEADER, EngineRequest, new_id
from ember.server.common.services import ServingState

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"
JUDGE_INSTRUCTION = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
FORCE = 100.0  # logit_bias that makes the biased token the greedy choice
PAIRS_IN_FLIGHT = 16  # pairs judged at once (each is one engine request per round)


@dataclass(frozen=True)
class JudgedPair:
    prompt_token_ids: list[int]
    param: str  # the request field the pair came from, for a 400 about its length


class LlmRelevance:
    def __init__(self, state: ServingState) -> None:
        self.state = state

    def answer_token_ids(self) -> tuple[int, int]:
        """The ids of "yes" and "no"; a 400 when the tokenizer does not have each as one token."""
        tokenizer = self.state.engine.tokenizer
        ids = [tokenizer.encode(word, add_special_tokens=False) for word in ("yes", "no")]
        if any(len(i) != 1 for i in ids):
            raise invalid_request(
                "this model's tokenizer has no single tokens for 'yes' and 'no', so it cannot judge relevance",
                param="model",
            )
        return ids[0][0], ids[1][0]

    def prompt(self, query: str, document: str, task: str | None, param: str) -> JudgedPair:
        """Token ids of the judging prompt for one pair (runs on a preparation thread)."""
        encoder = self.state.preparation.encoder
        messages = [
            {"role": "system", "content": JUDGE_INSTRUCTION},
            {
                "role": "user",
                "content": f"<Instruct>: {task or DEFAULT_TASK}\n<Query>: {query}\n<Document>: {document}",
            },
        ]
        text = encoder.render_chat(messages, template_kwargs={"enable_thinking": False})
        ids = encoder.encode_chat(text)
        limit = self.state.max_model_len - 1  # room for the judged token
        if len(ids) > limit:
            raise invalid_request(
                f"{param} makes a judging prompt of {len(ids)} tokens; this model's context length allows {limit}",
                param=param,
                code="context_length_exceeded",
            )
        return JudgedPair(ids, param)

    async def scores(
        self, pairs: list[JudgedPair], lora_id: str | None, http: Request, watch: DisconnectWatch
    ) -> list[float]:
        yes, no = self.answer_token_ids()
        salt = http.headers.get(CACHE_ISOLATION_HEADER)
        scores: list[float] = []
        # A few pairs at a time: 256 documents at once would fill the engine's waiting queue (429s for everyone).
        for start in range(0, len(pairs), PAIRS_IN_FLIGHT):
            chunk = pairs[start : start + PAIRS_IN_FLIGHT]
            # Two rounds, not one: the second finds the first's prompt blocks in the prefix cache.
            log_yes = await self._forced_logprobs(chunk, yes, lora_id, salt, watch)
            log_no = await self._forced_logprobs(chunk, no, lora_id, salt, watch)
            scores += [_p_yes(y, n) for y, n in zip(log_yes, log_no, strict=True)]
        return scores

    async def _forced_logprobs(
        self,
        pairs: list[JudgedPair],
        token: int,
        lora_id: str | None,
        salt: str | None,
        watch: DisconnectWatch,
    ) -> list[float]:
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logit_bias={token: FORCE}, logprobs=0, ignore_eos=True
        )
        requests = [
            EngineRequest(new_id("rerank"), pair.prompt_token_ids, params, salt, pair.param, lora_id)
            for pair in pairs
        ]
        generations = await watch.open(requests)
        finals = await collect_finals(generations, RequestTimer())
        values = []
        for output in finals:
            sequence = output.outputs[0]
            if watch.client_left:
                raise ClientLeft()
            if output.error is not None or not sequence.logprobs or sequence.token_ids != [token]:
                raise APIError(
                    500, f"relevance judging failed: {output.error or 'no logprob'}", code="rerank_failed"
                )
            values.append(sequence.logprobs[0].logprob)
        return values


def _p_yes(log_yes: float, log_no: float) -> float:
    """P(yes) / (P(yes) + P(no)) from the two log-probabilities, without overflow."""
    return 1.0 / (1.0 + math.exp(log_no - log_yes)) if log_no - log_yes < 700 else 0.0
