"""Prompts of real English text for the long-context and arrival workloads, each one new from its first token.

Random token ids (workloads.PromptMaker) are fine for a matmul but not for attention over a long context: real
text has the repetitions and the token mix a chat history or a RAG document has. The text is Python's own
documentation (the stdlib's `pydoc_data.topics`, ~465k characters, ~100k tokens), so nothing is downloaded.
Every prompt starts with its own numbered header, then at a seeded random place in that text: no prompt shares
a first cache block with an earlier one, so neither ember's prefix cache nor llama-server's slot / RAM prompt
cache can serve any of it, and a rerun with the same seed sends the very same token ids."""

from __future__ import annotations

import random
from pydoc_data.topics import topics
from typing import Protocol


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...


def documentation_text() -> str:
    """The stdlib's documentation topics joined in a fixed (sorted) order, as prose: the rows of its ASCII
    tables dropped and runs of spaces closed up (a prompt of table borders would be a few tokens repeated)."""
    lines = []
    for line in "\n\n".join(topics[name].strip() for name in sorted(topics)).splitlines():
        if not line.lstrip().startswith(("+-", "+=", "|")):
            lines.append(" ".join(line.split()))
    return "\n".join(lines)


class TextPrompts:
    """Token-id prompts of exact lengths cut from real text; distinct starts, reproducible for one seed."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        seed: int = 0,
        label: str = "benchmark",
        corpus: list[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.label = label
        self.rng = random.Random(seed)
        # ~100k ids on the default model, tokenized once and shared by restarted copies
        self.corpus = tokenizer.encode(documentation_text()) if corpus is None else corpus
        self.count = 0

    def restarted(self) -> TextPrompts:
        """A copy back at the first prompt: the next server gets the very same token ids."""
        return TextPrompts(self.tokenizer, self.seed, self.label, self.corpus)

    def make(self, length: int) -> list[int]:
        """`length` token ids: a header naming this prompt, then the text from a random place (wrapping round)."""
        if length < 1:
            raise ValueError(f"a prompt needs at least one token, got {length}")
        self.count += 1
        header = self.tokenizer.encode(
            f"Document {self.count} of the {self.label} run. Read it, then answer.\n\n"
        )
        body_length = max(0, length - len(header))
        start = self.rng.randrange(len(self.corpus))
        body: list[int] = []
        while len(body) < body_length:  # a prompt longer than the corpus goes round it again
            body += self.corpus[start : start + body_length - len(body)]
            start = 0
        return (header + body)[:length]
