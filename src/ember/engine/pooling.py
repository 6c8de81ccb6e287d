"""Mean pooling of an embedding input's final hidden states, accumulated one prefill chunk at a time, so an
input of any length is pooled with one chunk's activations in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MeanPool:
    """The running sum of one embedding input's final hidden states, and how many positions it covers."""

    total: torch.Tensor | None = (
        None  # [H] float64: summing in double keeps the chunked mean at the one-shot's
    )
    num_rows: int = 0

    def add_chunk(self, hidden: torch.Tensor, start_position: int) -> None:
        """hidden [N, H]: the rows of positions start_position .. start_position + N - 1.

        A chunk starting at position 0 starts over: a preempted input is recomputed from its first token (it never
        takes prefix-cached KV), and its earlier partial sum must not count twice."""
        if start_position == 0:
            self.total, self.num_rows = None, 0
        if start_position != self.num_rows:
            raise RuntimeError(f"pooling chunk starts at {start_position}, {self.num_rows} rows were pooled")
        chunk_sum = hidden.double().sum(0)  # [H]
        self.total = chunk_sum if self.total is None else self.total + chunk_sum
        self.num_rows += hidden.shape[0]

    def result(self) -> list[float]:
        """The mean over every position, L2-normalised (unit length, so cosine similarity is a dot product)."""
        if self.total is None or self.num_rows == 0:
            raise RuntimeError("nothing was pooled")
        mean = (self.total / self.num_rows).float()  # [H]
        return torch.nn.functional.normalize(mean, dim=0).tolist()
