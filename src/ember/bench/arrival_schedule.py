"""When the arrival workload's new requests are sent: a seeded Poisson process or a fixed interval.

Poisson arrivals (exponential gaps) are what vLLM's serving benchmark sends with --request-rate; a fixed interval
is the easy case to reason about. The same seed gives the same offsets, so ember and llama-server see the very
same arrival times."""

from __future__ import annotations

import random
from dataclasses import dataclass

ARRIVAL_PROCESSES = ("poisson", "fixed")


@dataclass(frozen=True)
class ArrivalConfig:
    """The arrival workload: `running` long streams decode while new requests arrive beside them."""

    running: int = 16
    """Streams that decode through the whole run (the "pure N-stream decode" the ratio is taken against)."""
    interval_ms: float = 400.0
    """Mean gap between two new requests."""
    process: str = "poisson"
    """poisson (exponential gaps, seeded) or fixed (every interval_ms)."""
    seconds: float = 20.0
    """How long requests keep arriving; the pure-decode windows before and after it are as long."""
    prompt_tokens: int = 128
    """Each new request's prompt (real text, new from its first token)."""
    new_tokens: int = 32
    """Tokens each new request generates."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.process not in ARRIVAL_PROCESSES:
            raise ValueError(
                f"arrival process must be one of {', '.join(ARRIVAL_PROCESSES)}, got {self.process!r}"
            )
        for name in ("running", "prompt_tokens", "new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"arrival {name} must be at least 1, got {getattr(self, name)}")
        for name in ("interval_ms", "seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"arrival {name} must be positive, got {getattr(self, name)}")
        if not self.offsets():
            raise ValueError(
                f"no request arrives within {self.seconds} s at a mean interval of {self.interval_ms} ms"
            )

    def offsets(self) -> list[float]:
        """Seconds after the start of the arrival window at which each new request is sent (all < seconds)."""
        rng = random.Random(self.seed)
        mean_s = self.interval_ms / 1e3
        offsets: list[float] = []
        at = 0.0
        while True:
            at += rng.expovariate(1 / mean_s) if self.process == "poisson" else mean_s
            if at >= self.seconds:
                return offsets
            offsets.append(at)
