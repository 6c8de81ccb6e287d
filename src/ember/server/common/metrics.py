"""What the server measures of each request, and where it reports it: Fireworks' per-request numbers
(`perf_metrics` in the body and fireworks-* response headers), and GET /metrics in Prometheus' text format.

The Prometheus names are vLLM's own (`vllm:` prefix, `model_name` label), so dashboards and alerts written
for vLLM work unchanged against ember: vllm:num_requests_running, vllm:num_requests_waiting,
vllm:kv_cache_usage_perc, vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total, vllm:spec_decode_*,
vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:num_preemptions_total,
vllm:request_success_total{finished_reason}, and the histograms vllm:time_to_first_token_seconds,
vllm:inter_token_latency_seconds, vllm:e2e_request_latency_seconds. Engine gauges and counters are read
from AsyncEngine.stats() at scrape time; the latency histograms are observed by the server per request.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.engine.stats import EngineStats


@dataclass
class RequestTimer:
    """Wall-clock marks of one API request, taken by the server (monotonic clock)."""

    start: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    inter_token_gaps: list[float] = field(default_factory=list)

    def mark_tokens(self, count: int) -> None:
        """`count` new tokens arrived together (one engine step); the gap is shared among them."""
        if count <= 0:
            return
        now = time.monotonic()
        if self.first_token is None:
            self.first_token = now
            count -= 1
        elif self.last_token is not None:
            self.inter_token_gaps.extend([(now - self.last_token) / count] * count)
            count = 0
        self.last_token = now

    def mark_end(self) -> None:
        self.end = time.monotonic()

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def processing_time(self) -> float:
        return (self.end if self.end is not None else time.monotonic()) - self.start


@dataclass(frozen=True)
class TokenCounts:
    prompt: int
    cached: int
    generated: int
    accepted_prediction: int = 0  # speculative decoding: draft tokens kept in the reply
    rejected_prediction: int = 0  # draft tokens verified but not kept


def perf_metrics(counts: TokenCounts, timer: RequestTimer) -> dict[str, float | int]:
    """The body's `perf_metrics`, with Fireworks' hyphenated keys (times in seconds)."""
    total = timer.processing_time
    ttft = timer.time_to_first_token
    decode_time = total - ttft if ttft is not None else 0.0
    metrics: dict[str, float | int] = {
        "prompt-tokens": counts.prompt,
        "cached-prompt-tokens": counts.cached,
        "generated-tokens": counts.generated,
        "server-processing-time": round(total, 6),
        "tokens-per-second": round(counts.generated / total, 3) if total > 0 else 0.0,
        "generation-tokens-per-second": round((counts.generated - 1) / decode_time, 3)
        if counts.generated > 1 and decode_time > 0
        else 0.0,
    }
    if ttft is not None:
        metrics["server-time-to-first-token"] = round(ttft, 6)
    if counts.accepted_prediction or counts.rejected_prediction:
        metrics["speculation-accepted-tokens"] = counts.accepted_prediction
        metrics["speculation-rejected-tokens"] = counts.rejected_prediction
    return metrics


def perf_headers(counts: TokenCounts, timer: RequestTimer) -> dict[str, str]:
    """Response headers of a non-streamed answer (a stream's headers go out before these are known)."""
    headers = {
        "fireworks-prompt-tokens": str(counts.prompt),
        "fireworks-cached-prompt-tokens": str(counts.cached),
        "fireworks-generated-tokens": str(counts.generated),
        "fireworks-server-processing-time": f"{timer.processing_time:.6f}",
    }
    if timer.time_to_first_token is not None:
        headers["fireworks-server-time-to-first-token"] = f"{timer.time_to_first_token:.6f}"
    return headers


# -- Prometheus: GET /metrics ------------------------------------------------------------------------------

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines = []
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.total}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


class ServerMetrics:
    """Per-request latency histograms and finish counts; rendered together with a snapshot of engine stats."""

    def __init__(self, model_name: str) -> None:
        escaped = model_name.replace("\\", "\\\\").replace('"', '\\"')
        self.labels = f'model_name="{escaped}"'
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.finished: Counter[str] = Counter()

    def observe_request(self, timer: RequestTimer, finish_reasons: list[str | None]) -> None:
        if timer.time_to_first_token is not None:
            self.ttft.observe(timer.time_to_first_token)
        for gap in timer.inter_token_gaps:
            self.inter_token.observe(gap)
        self.e2e.observe(timer.processing_time)
        for reason in finish_reasons:
            self.finished[reason or "unknown"] += 1

    def _render_spec_decode(self, stats: EngineStats, metric: Callable[..., None], lines: list[str]) -> None:
        """Speculative decoding under vLLM's names: drafts verified, their tokens, the tokens kept, and the
        tokens kept per draft position."""
        metric(
            "vllm:spec_decode_num_drafts_total", "counter", "Drafts verified.", stats.spec_decode_num_drafts
        )
        metric(
            "vllm:spec_decode_num_draft_tokens_total",
            "counter",
            "Draft tokens verified.",
            stats.spec_decode_num_draft_tokens,
        )
        metric(
            "vllm:spec_decode_num_accepted_tokens_total",
            "counter",
            "Draft tokens accepted.",
            stats.spec_decode_num_accepted_tokens,
        )
        name = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
        lines += [f"# HELP {name} Draft tokens accepted at each draft position.", f"# TYPE {name} counter"]
        for position, count in enumerate(stats.spec_decode_accepted_per_pos):
            lines.append(f'{name}{{{self.labels},position="{position}"}} {count}')

    def render(self, stats: EngineStats) -> str:
        labels = self.labels
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, value: float) -> None:
            lines.extend(
                (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {value}")
            )

        metric("vllm:num_requests_running", "gauge", "Requests in the running batch.", stats.num_running)
        metric("vllm:num_requests_waiting", "gauge", "Requests waiting to be scheduled.", stats.num_waiting)
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "Fraction of KV-cache blocks in use (0 to 1).",
            stats.kv_usage,
        )
        metric(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            stats.prefix_cache_queries,
        )
        metric(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            stats.prefix_cache_hits,
        )
        metric("vllm:prompt_tokens_total", "counter", "Prompt tokens processed.", stats.prompt_tokens_total)
        metric("vllm:generation_tokens_total", "counter", "Tokens generated.", stats.generation_tokens_total)
        metric(
            "vllm:num_preemptions_total",
            "counter",
            "Requests preempted to free KV cache.",
            stats.num_preemptions,
        )
        self._render_spec_decode(stats, metric, lines)
        lines += [
            "# HELP vllm:request_success_total Finished requests by finish reason.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, count in sorted(self.finished.items()):
            lines.append(f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {count}')
        for name, histogram, help_text in (
            ("vllm:time_to_first_token_seconds", self.ttft, "Time to first token."),
            ("vllm:inter_token_latency_seconds", self.inter_token, "Time between consecutive output tokens."),
            ("vllm:e2e_request_latency_seconds", self.e2e, "Request latency from arrival to last token."),
        ):
            lines += [
                f"# HELP {name} {help_text}",
                f"# TYPE {name} histogram",
                *histogram.render(name, labels),
            ]
        return "\n".join(lines) + "\n"


def merge_expositions(parts: list[str]) -> str:
    """Several models' renders as one Prometheus exposition: each metric's HELP and TYPE once, then the samples
    of every model under it (Prometheus refuses a metric family declared twice)."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for part in parts:
        family = ""
        for line in part.splitlines():
            if line.startswith("# HELP "):
                family = line.split(" ", 3)[2]
                if family not in headers:
                    headers[family] = [line]
                    samples[family] = []
            elif line.startswith("# TYPE "):
                if len(headers[family]) == 1:
                    headers[family].append(line)
            elif line:
                samples[family].append(line)
    lines = [line for family, header in headers.items() for line in (*header, *samples[family])]
    return "\n".join(lines) + "\n"
