"""The encoder a server runs beside its chat model (all-MiniLM-L6-v2 by default): its names and model card, and
its work cut into bounded batches that run on the engine thread between two engine steps.

Running there shares the machine's threads with the engine instead of competing for them: the engine thread
already uses the compute threads the ThreadGovernor allows, and a second torch pool busy at the same time on a
2-core machine would slow both several times over. A batch is at most `max_batch_tokens` padded tokens, so a
big embeddings request holds running streams back by one short batch at a time, not by the whole request."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ember.engine.errors import EngineDeadError
from ember.models.encoder.encoder_model import EncoderModel, PairIds, plan_batches
from ember.server.common.errors import invalid_request
from ember.server.common.preparation import CONTEXT_LENGTH_EXCEEDED
from ember.server.common.prompts import check_encodable, check_token_ids

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

T = TypeVar("T")
HEAD_CHARS = 65_536  # a longer text is first measured by its head
WORD_CUT_MARGIN = 100  # BERT's tokenizers turn longer words into one [UNK]


@dataclass(frozen=True)
class EncoderLimits:
    max_batch_tokens: int = 1024
    """Padded tokens (rows x longest row) of one forward: ~21 GFLOP for MiniLM-L6, less than one engine step
    that prefills a 512-token chunk of the default chat model (docs/decisions.md has the measured times)."""
    max_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.max_batch_tokens < 1 or self.max_batch_size < 1:
            raise ValueError("max_batch_tokens and max_batch_size must be at least 1")


class ServedEncoder:
    def __init__(
        self, model: EncoderModel, engine: AsyncEngine, account: str, limits: EncoderLimits | None = None
    ) -> None:
        self.model = model
        self.engine = engine
        self.limits = limits or EncoderLimits()
        self.model_id = f"accounts/{account}/models/{model.name}"
        self.owner = account
        self.names = frozenset((self.model_id, model.name, *model.aliases))
        self.created = int(time.time())

    @property
    def is_cross_encoder(self) -> bool:
        return self.model.is_cross_encoder

    def answers_to(self, requested: str | None) -> bool:
        return requested is not None and requested in self.names

    def card(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owner,
            "context_length": self.model.max_input_tokens,
            "aliases": sorted(self.names - {self.model_id}),
            # vLLM's word for what a pooling model serves: embeddings, or a cross-encoder's scores
            "task": "score" if self.is_cross_encoder else "embed",
        }

    def encode(self, item: str | list[int], param: str) -> list[int]:
        """Token ids of one input: a text gets the model's special tokens ([CLS] ... [SEP]); token ids are taken
        as they are (in the encoder's vocabulary). A 400 naming `param` when it is empty, not Unicode, outside
        the vocabulary or longer than the model takes."""
        if isinstance(item, str):
            check_encodable(item, param)
            if not item:
                raise invalid_request(f"{param} must not be empty", param=param)
            self._refuse_if_far_too_long(item, param)
            ids = self.model.encode(item)
        else:
            ids = check_token_ids(item, self.model.vocab_size, param)
        self.check_length(len(ids), param)
        return ids

    def encode_pair(self, query: str, document: str, param: str) -> PairIds:
        """A cross-encoder's input for one (query, document) pair; a 400 naming `param` when too long."""
        check_encodable(query, param)
        check_encodable(document, param)
        self._refuse_if_far_too_long(query + " " + document, param)
        pair = self.model.encode_pair(query, document)
        self.check_length(len(pair.token_ids), param)
        return pair

    def _refuse_if_far_too_long(self, text: str, param: str) -> None:
        """A text of megabytes is refused from its head alone: tokenizing all of it only to say it is over a
        256-token limit would hold a preparation thread (and the GIL while the ids are handed over) for seconds."""
        if len(text) <= HEAD_CHARS:
            return
        head = len(self.model.encode(text[:HEAD_CHARS]))
        # A word cut at the end of the head can split into more pieces than it has whole: at most one per character.
        if head - WORD_CUT_MARGIN > self.model.max_input_tokens:
            raise invalid_request(
                f"{param} is more than {head - WORD_CUT_MARGIN} tokens long; the embedding model {self.model.name} "
                f"takes at most {self.model.max_input_tokens} tokens per input",
                param=param,
                code=CONTEXT_LENGTH_EXCEEDED,
            )

    def check_length(self, length: int, param: str) -> None:
        limit = self.model.max_input_tokens
        if length > limit:
            raise invalid_request(
                f"{param} is {length} tokens long; the embedding model {self.model.name} takes at most {limit} "
                "tokens per input",
                param=param,
                code=CONTEXT_LENGTH_EXCEEDED,
            )

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """A vector per input (token ids with the model's special tokens), in input order."""
        return await self._batched(
            [len(i) for i in inputs], lambda rows: self.model.embed([inputs[i] for i in rows])
        )

    async def score_pairs(self, pairs: list[PairIds]) -> list[float]:
        """A cross-encoder's relevance in [0, 1] per pair, in input order."""
        return await self._batched(
            [len(p.token_ids) for p in pairs], lambda rows: self.model.score_pairs([pairs[i] for i in rows])
        )

    async def _batched(self, lengths: list[int], run: Callable[[list[int]], list[T]]) -> list[T]:
        results: list[T | None] = [None] * len(lengths)
        for rows in plan_batches(lengths, self.limits.max_batch_tokens, self.limits.max_batch_size):
            # One batch per engine call: the engine steps between two batches, and a cancelled request (its
            # client left) stops before its next batch.
            outputs = await self._on_engine_thread(lambda rows=rows: run(rows))
            for row, output in zip(rows, outputs, strict=True):
                results[row] = output
        return results  # type: ignore[return-value]

    async def _on_engine_thread(self, fn: Callable[[], list[T]]) -> list[T]:
        if not self.engine.is_running:
            raise EngineDeadError("the engine is not running")
        return await self.engine.run_on_engine(lambda _: fn())
