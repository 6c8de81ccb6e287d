"""The bodies of POST /v1/rerank (Fireworks' and Cohere's shape, as vLLM and llama.cpp serve it) and vLLM's
POST /v1/score."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field

from ember.server.common.protocol import APIModel


class RerankDocument(APIModel):
    """Cohere's older document object; only its text is ranked."""

    text: str


class RerankRequest(APIModel):
    model: str | None = None
    query: str
    documents: Annotated[list[str | RerankDocument], Field(min_length=1)]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool | None = None
    task: str | None = None  # Fireworks: the instruction an LLM reranker judges by
    # Defined by Cohere or vLLM, not computed here: refused when sent (serving_rerank.refuse_unsupported).
    max_chunks_per_doc: Any = None
    max_tokens_per_doc: Any = None
    rank_fields: Any = None
    truncate_prompt_tokens: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = (
        "max_chunks_per_doc",
        "max_tokens_per_doc",
        "rank_fields",
        "truncate_prompt_tokens",
    )

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class ScoreRequest(APIModel):
    """vLLM's /score: text_1 against text_2, one to one, one to many, or pairwise for two lists of one length."""

    model: str | None = None
    text_1: str | Annotated[list[str], Field(min_length=1)]
    text_2: str | Annotated[list[str], Field(min_length=1)]
    task: str | None = None  # as in /rerank: the instruction an LLM reranker judges by
    truncate_prompt_tokens: Any = None

    UNSUPPORTED: ClassVar[tuple[str, ...]] = ("truncate_prompt_tokens",)
