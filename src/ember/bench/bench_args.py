"""`ember bench`'s flags for the long-context rows, the arrival workload and the llama-server peer, and the
bench config built from all its flags (kept out of cli.py so importing it stays light: no torch)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ember.bench.arrival_schedule import ARRIVAL_PROCESSES, ArrivalConfig
from ember.bench.llama_server import check_binary
from ember.engine.engine_config import KV_CACHE_DTYPES

# `ember bench --speculation`: no table, its table after the others, or only its table
SPECULATION_MODES = ("off", "also", "only")

if TYPE_CHECKING:
    from ember.bench.runner import BenchConfig


def parse_contexts(text: str) -> tuple[int, ...]:
    """'1k,4k,8k' -> (1024, 4096, 8192): a k is 1024 tokens, a plain number is tokens; '' -> no rows."""
    contexts: list[int] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        digits, scale = (item[:-1], 1024) if item.endswith("k") else (item, 1)
        if not digits.isdigit() or int(digits) == 0:
            raise ValueError(f"a context is a token count such as 4096 or 4k, got {item!r}")
        contexts.append(int(digits) * scale)
    return tuple(sorted(set(contexts)))


def context_label(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)


def _contexts(text: str) -> tuple[int, ...]:
    try:
        return parse_contexts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _llama_server_binary(path: str) -> str:
    try:
        return check_binary(path)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_long_bench_args(bench: argparse.ArgumentParser) -> None:
    """`ember bench`'s long-context rows, arrival workload and llama-server peer (all through HTTP)."""
    arrival = ArrivalConfig()
    bench.add_argument(
        "--contexts",
        type=_contexts,
        default=(1024, 4096, 8192),
        help="long-context rows: tokens at the end of each request, e.g. 1k,4k,8k,16k (a k is 1024); "
        "decode after and TTFT of a real-text prompt that long; empty for none (default: 1k,4k,8k)",
    )
    bench.add_argument(
        "--arrivals",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the arrival workload: new requests arriving beside running streams (default: on)",
    )
    bench.add_argument(
        "--arrival-streams", type=int, default=arrival.running, help="streams running through the arrival run"
    )
    bench.add_argument(
        "--arrival-interval-ms", type=float, default=arrival.interval_ms, help="mean gap between new requests"
    )
    bench.add_argument(
        "--arrival-process",
        choices=ARRIVAL_PROCESSES,
        default=arrival.process,
        help="gaps: exponential or fixed",
    )
    bench.add_argument(
        "--arrival-seconds",
        type=float,
        default=arrival.seconds,
        help="how long requests arrive (the pure-decode windows before and after them are as long)",
    )
    bench.add_argument(
        "--arrival-prompt-tokens", type=int, default=arrival.prompt_tokens, help="each new request's prompt"
    )
    bench.add_argument(
        "--arrival-new-tokens", type=int, default=arrival.new_tokens, help="tokens each new request generates"
    )
    bench.add_argument("--arrival-seed", type=int, default=arrival.seed, help="seed of the arrival times")
    bench.add_argument(
        "--short-rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the short rows: prefill 512, decode per --streams count, TTFT of a 1k prompt (engine-only, through "
        "HTTP and on the peers); --no-short-rows runs only the long-context and arrival rows (default: on)",
    )
    bench.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="the KV cache type of ember's engine and server, as `ember serve --kv-cache-dtype`; llama-server "
        "gets the same type (--cache-type-k/-v) unless auto (each server's default)",
    )
    bench.add_argument(
        "--speculation",
        choices=SPECULATION_MODES,
        default="off",
        help="speculative decoding on vs off (engine, same run): a code edit with its prediction, extraction "
        "with n-gram lookup, a story and 32 streams; 'also' adds its table after the others, 'only' runs just "
        "it (default: off)",
    )
    bench.add_argument(
        "--speculation-repeats", type=int, default=3, help="off/on alternations per speculation workload"
    )
    bench.add_argument(
        "--llama-server",
        type=_llama_server_binary,
        default=None,
        metavar="PATH",
        help="a llama.cpp llama-server binary: run the HTTP workloads on it too (same GGUF, threads and client) "
        "and show ember/llama-server (docs/benchmarks.md: how to build it)",
    )


def bench_arrival_config(args: argparse.Namespace) -> ArrivalConfig | None:
    """The arrival workload of `ember bench`'s flags, or None with --no-arrivals; ValueError for a bad value."""
    if not args.arrivals:
        return None
    return ArrivalConfig(
        running=args.arrival_streams,
        interval_ms=args.arrival_interval_ms,
        process=args.arrival_process,
        seconds=args.arrival_seconds,
        prompt_tokens=args.arrival_prompt_tokens,
        new_tokens=args.arrival_new_tokens,
        seed=args.arrival_seed,
    )


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """`ember bench`'s flags as its config; ValueError naming the flag's value that is wrong."""
    from ember.bench.runner import BenchConfig  # imports torch: only once the command runs
    from ember.threads import count_free_cores

    return BenchConfig(
        model=args.model,
        weight_format=args.weight_format,
        quantization=args.quantization,
        threads=args.threads or count_free_cores(),
        streams=tuple(int(s) for s in args.streams.split(",") if s),
        new_tokens=args.new_tokens,
        peers=tuple(p for p in args.peers.split(",") if p),
        http=args.http,
        contexts=args.contexts,
        arrival=bench_arrival_config(args),
        llama_server=args.llama_server,
        short_rows=args.short_rows,
        kv_cache_dtype=args.kv_cache_dtype,
        speculation=args.speculation,
        speculation_repeats=args.speculation_repeats,
    )
