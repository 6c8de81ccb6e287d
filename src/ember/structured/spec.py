"""What a request constrains its output to: pure data, so the API layer and the engine can share it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SpecKind = Literal["json_schema", "gbnf", "lark", "regex", "choice"]
SPEC_KINDS: tuple[str, ...] = ("json_schema", "gbnf", "lark", "regex", "choice")


@dataclass(frozen=True)
class ReasoningSection:
    """Free text the model may think in before the constrained output (Qwen3 / DeepSeek-R1 style)."""

    start_tag: str = "<think>"
    end_tag: str = "</think>"
    opened: bool = False  # the prompt already opened it: the reply starts inside the reasoning

    def __post_init__(self) -> None:
        if not self.start_tag or not self.end_tag:
            raise ValueError("reasoning start and end tags must be non-empty")


@dataclass(frozen=True)
class OpeningChoice:
    """A decision the reply's first token takes by a rule instead of by sampling: the reply opens `marker`
    (a tool call) when the model gives the tokens that spell the start of the marker a probability of at
    least `threshold` (softmax of its raw logits), and opens with anything else otherwise. The grammar must
    make a reply that starts with the marker's first character be the marker (structured/tools.py)."""

    marker: str
    threshold: float

    def __post_init__(self) -> None:
        if not self.marker:
            raise ValueError("the opening marker must be non-empty")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the opening threshold must be between 0 and 1, got {self.threshold}")


@dataclass(frozen=True)
class StructuredSpec:
    """One output constraint, kept as text so it hashes, compares and crosses process boundaries.

    kind        source holds
    json_schema a JSON schema serialized as JSON ({"type": "object"} for json_object mode)
    gbnf        a llama.cpp GBNF grammar (root rule `root`); a Lark grammar is recognised and accepted too
    lark        a llguidance Lark grammar (start rule `start`; may embed `%json {schema}`)
    regex       a regular expression the whole output must match
    choice      a JSON list of the strings the output may be
    strict      json_schema only: reject schema keywords that cannot be enforced instead of ignoring them
    reasoning   when set, the constraint applies to what follows the reasoning section, which stays free
    opening     when set (never with reasoning), the first token chooses between the marker and the rest by
                OpeningChoice's rule
    """

    kind: SpecKind
    source: str
    strict: bool = False
    reasoning: ReasoningSection | None = None
    opening: OpeningChoice | None = None

    def __post_init__(self) -> None:
        if self.opening is not None and self.reasoning is not None:
            raise ValueError(
                "an opening choice applies at the reply's start, which a reasoning section takes"
            )
        if self.kind not in SPEC_KINDS:
            raise ValueError(
                f"structured output kind must be one of {', '.join(SPEC_KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"structured output of kind {self.kind!r} needs a non-empty source")
