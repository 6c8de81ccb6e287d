"""The benchmark's rows from the measured figures: ember engine-only and through HTTP, and the peers beside them."""

from __future__ import annotations

from dataclasses import dataclass

from ember.bench.arrival_schedule import ArrivalConfig
from ember.bench.bench_args import context_label
from ember.bench.ember_runs import EmberFigures, HttpFigures
from ember.bench.peers import PeerResult
from ember.bench.process_memory import ProcessMemory
from ember.bench.report import Row
from ember.bench.server_suite import LongFigures


@dataclass
class HttpPeer:
    """A peer server measured with the same client and workloads as `ember serve` (llama-server)."""

    name: str
    http: HttpFigures | None  # None when the short rows were not run (--no-short-rows)
    long: LongFigures
    memory: ProcessMemory | None = None  # read after its workloads; None without /proc


def _plural(count: int) -> str:
    return f"{count} stream{'s' if count > 1 else ''}"


def short_rows(ember: EmberFigures, peers: list[PeerResult], http_peer: HttpPeer | None) -> list[Row]:
    """Prefill 512, decode at each stream count, TTFT of a 1k prompt cold and prefix-cached."""
    ours = ember.http

    def peer_values(in_process: dict[str, float | None], over_http: float | None) -> dict[str, float | None]:
        return in_process | ({http_peer.name: over_http} if http_peer else {})

    theirs = http_peer.http if http_peer else None
    rows = [
        Row(
            "prefill 512 tok/s",
            ember.prefill_tokens_per_s,
            peer_values(
                {p.name: p.prefill_tokens_per_s for p in peers},
                theirs.prefill_tokens_per_s if theirs else None,
            ),
            http=ours.prefill_tokens_per_s if ours else None,
        )
    ]
    for s, d in ember.decode.items():
        gemm = ember.gemm_only_tokens_per_s[s]
        rows.append(
            Row(
                f"decode tok/s, {_plural(s)}",
                d.tokens_per_s,
                peer_values(
                    {p.name: p.decode_tokens_per_s.get(s) for p in peers},
                    theirs.decode[s].tokens_per_s if theirs else None,
                ),
                extra=f"GEMM-only {gemm:.0f} ({d.tokens_per_s / gemm:.0%}); step {d.step_ms:.1f} ms, "
                f"outside forward {d.overhead_ms:.2f} ms",
                http=ours.decode[s].tokens_per_s if ours else None,
            )
        )
    ttft = ember.ttft
    rows.append(
        Row(
            "TTFT 1k prompt, cold (ms)",
            ttft.cold_ms,
            peer_values({}, theirs.ttft.cold_ms if theirs else None),
            lower_is_better=True,
            http=ours.ttft.cold_ms if ours else None,
        )
    )
    rows.append(
        Row(
            "TTFT 1k prompt, prefix cached (ms)",
            ttft.cached_ms,
            peer_values({}, theirs.ttft.cached_ms if theirs else None),
            lower_is_better=True,
            extra=f"{ttft.cached_ms / ttft.cold_ms:.1%} of cold",
            http=ours.ttft.cached_ms if ours else None,
        )
    )
    return rows


def long_rows(ours: LongFigures, arrival: ArrivalConfig | None, http_peer: HttpPeer | None) -> list[Row]:
    """HTTP-only rows: decode after and TTFT of each long real-text prompt, then the arrival workload."""
    theirs = http_peer.long if http_peer else None
    name = http_peer.name if http_peer else ""
    rows = []
    for context, result in ours.long_context.items():
        peer = theirs.long_context[context] if theirs else None
        label = context_label(context)
        rows.append(
            Row(
                f"decode tok/s after a {label} context, 1 stream",
                None,
                {name: peer.decode_tokens_per_s} if peer else {},
                extra=f"prompt {result.prompt_tokens} tokens of real text",
                http=result.decode_tokens_per_s,
            )
        )
        rows.append(
            Row(
                f"TTFT {label} context (ms)",
                None,
                {name: peer.ttft_ms} if peer else {},
                lower_is_better=True,
                http=result.ttft_ms,
            )
        )
    if ours.arrival is None or arrival is None:
        return rows
    got, peer_arrival = ours.arrival, theirs.arrival if theirs else None
    every = f"1 new / {arrival.interval_ms:.0f} ms ({arrival.process})"

    def peer_value(value: float | None) -> dict[str, float | None]:
        return {name: value} if peer_arrival else {}

    rows.append(
        Row(
            f"pure decode tok/s, {_plural(arrival.running)}",
            None,
            peer_value(peer_arrival.pure_tokens_per_s if peer_arrival else None),
            extra=f"the running streams alone, {arrival.seconds:.0f} s before and {arrival.seconds:.0f} s after the arrivals",
            http=got.pure_tokens_per_s,
        )
    )
    rows.append(
        Row(
            f"arrivals: tok/s, {arrival.running} running + {every}",
            None,
            peer_value(peer_arrival.tokens_per_s if peer_arrival else None),
            extra=f"{got.ratio:.0%} of pure (target >= 80%)"
            + (f"; {name} {peer_arrival.ratio:.0%}" if peer_arrival else ""),
            http=got.tokens_per_s,
        )
    )
    for label, percent in (("p50", 50.0), ("p99", 99.0)):
        rows.append(
            Row(
                f"arrivals: TTFT {label} (ms)",
                None,
                peer_value(peer_arrival.ttft_percentile_ms(percent) if peer_arrival else None),
                lower_is_better=True,
                extra=f"{got.arrivals} arrivals of {arrival.prompt_tokens} prompt + {arrival.new_tokens} new tokens"
                if label == "p50"
                else "nearest rank: the slowest arrival when there are fewer than 100",
                http=got.ttft_percentile_ms(percent),
            )
        )
    return rows


def memory_rows(ours: ProcessMemory | None, http_peer: HttpPeer | None) -> list[Row]:
    """The servers' resident memory after every workload (VmRSS; the peak VmHWM in the notes), then the same
    without the KV pool each allocated: the pools are sized by different rules (ember's --kv-cache-gib,
    llama-server's --ctx-size), the rest is what each needs to serve the model."""
    theirs = http_peer.memory if http_peer else None
    if ours is None and theirs is None:
        return []
    name = http_peer.name if http_peer else ""
    peaks = [f"ember {ours.peak_mib:,.0f}"] if ours else []
    peaks += [f"{name} {theirs.peak_mib:,.0f}"] if theirs else []
    pools = [f"ember {ours.kv_pool_mib:,.0f}"] if ours else []
    pools += [f"{name} {theirs.kv_pool_mib:,.0f}"] if theirs else []
    return [
        Row(
            "server RSS (MiB)",
            None,
            {name: theirs.rss_mib} if theirs else {},
            lower_is_better=True,
            extra=f"VmRSS after the workloads; peak VmHWM {', '.join(peaks)}",
            http=ours.rss_mib if ours else None,
        ),
        Row(
            "server RSS less its KV pool (MiB)",
            None,
            {name: theirs.rss_mib - theirs.kv_pool_mib} if theirs else {},
            lower_is_better=True,
            extra=f"KV pools {', '.join(pools)}",
            http=ours.rss_mib - ours.kv_pool_mib if ours else None,
        ),
    ]
