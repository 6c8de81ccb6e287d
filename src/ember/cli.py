"""`ember serve`, `ember bench`, `ember tune` and `ember keys`: the command line entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ember.bench.bench_args import add_long_bench_args, bench_config
from ember.engine.engine_config import KV_CACHE_DTYPES
from ember.engine.speculation.config import PROMPT_LOOKUP_MODES, SpeculationConfig
from ember.keys_command import add_keys_subparser, run_keys
from ember.serve_access import add_access_args
from ember.tuning.cli_tune import add_tune_subparser, run_tune


def _add_model_args(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            metavar="[NAME=]PATH",
            help="GGUF file or HF checkpoint folder, optionally served as NAME; repeat it to serve several models, "
            "each on its own engine (the first is the default; without any: the embedded SmolLM2-135M)",
        )
    else:
        parser.add_argument(
            "--model", default=None, help="GGUF file or HF checkpoint folder (default: embedded SmolLM2-135M)"
        )
    parser.add_argument(
        "--weight-format",
        default="auto",
        choices=["auto", "fp32", "bf16", "packed"],
        help="how weights are held: fp32 reference, bf16 (GPU), packed GGUF blocks; auto picks per device",
    )
    parser.add_argument(
        "--quantization",
        default=None,
        type=str.lower,
        choices=["q8_0", "q4_0", "q4_k"],
        help="quantize a safetensors checkpoint's linear weights to this GGUF block format at load "
        "(served packed, like a GGUF)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--threads", type=int, default=0, help="compute threads (default: the idle cores)")


def _add_speculation_args(serve: argparse.ArgumentParser) -> None:
    """Speculative decoding without a draft model (engine/speculation); requests may override each value."""
    defaults = SpeculationConfig()
    serve.add_argument(
        "--prompt-lookup",
        choices=PROMPT_LOOKUP_MODES,
        default=defaults.prompt_lookup,
        help="n-gram prompt lookup drafts: off, on, or auto (on, pausing for sequences whose drafts keep failing)",
    )
    serve.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=defaults.num_speculative_tokens,
        help="most tokens drafted per sequence and step (prediction and prompt lookup)",
    )
    serve.add_argument(
        "--prompt-lookup-min", type=int, default=defaults.prompt_lookup_min, help="shortest n-gram looked up"
    )
    serve.add_argument(
        "--prompt-lookup-max", type=int, default=defaults.prompt_lookup_max, help="longest n-gram looked up"
    )
    serve.add_argument(
        "--speculation-max-batch",
        type=int,
        default=defaults.max_batch,
        help="no drafting in steps with more decoding sequences than this (0: never draft)",
    )


def _add_several_models_args(serve: argparse.ArgumentParser) -> None:
    """Several models in one server (server/common/model_registry.py; README "Several models")."""
    serve.add_argument(
        "--models-file",
        type=Path,
        default=None,
        metavar="TOML",
        help="models to serve besides --model: [[models]] tables with name, path, aliases, lazy, keep_alive, "
        "kv_cache_gib, threads, max_model_len and lora = {NAME = PATH}",
    )
    serve.add_argument(
        "--lazy",
        action="store_true",
        help="load the models after the first on their first request instead of at start-up",
    )
    serve.add_argument(
        "--keep-alive",
        default=None,
        metavar="DURATION",
        help="unload a model (not the first) after this long without requests, Ollama-style: 5m, 1h, 30s; 0: as "
        "soon as it is idle; -1: never (the default); a request reloads it",
    )
    serve.add_argument(
        "--concurrent-engine-steps",
        action="store_true",
        help="let several models' engines step at the same time, each on all its threads (default: they take "
        "turns, one step at a time on every core, so two OpenMP teams never share the cores)",
    )
    serve.add_argument(
        "--memory-budget-gib",
        type=float,
        default=None,
        help="what all loaded models may take together (weights + KV cache, estimated before a load); a load "
        "beyond it, or beyond the memory the system has available, is refused with a 503 (default: the latter)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember", description="Self-hosted LLM inference and fine-tuning")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the OpenAI/Fireworks-compatible HTTP API")
    _add_model_args(serve, several=True)
    _add_several_models_args(serve)
    serve.add_argument("--port", type=int, default=8000)
    add_access_args(serve)
    serve.add_argument(
        "--served-model-name", default=None, help="name clients use (default: the model's name)"
    )
    serve.add_argument(
        "--max-model-len", type=int, default=8192, help="context window served (capped by the model)"
    )
    serve.add_argument("--max-num-seqs", type=int, default=64, help="sequences decoded together per step")
    serve.add_argument("--max-num-batched-tokens", type=int, default=512, help="token budget of one step")
    serve.add_argument("--max-waiting", type=int, default=256, help="queued requests before 429")
    serve.add_argument(
        "--max-embedding-tokens",
        type=int,
        default=65_536,
        help="tokens of all inputs of one /v1/embeddings request together; above it a 400",
    )
    serve.add_argument(
        "--embedding-model",
        default=None,
        metavar="PATH|none",
        help="encoder folder (BERT family: safetensors, tokenizer.json, sentence-transformers pooling) served "
        "beside the chat model on /v1/embeddings, /v1/rerank and /v1/score (default: the bundled "
        "all-MiniLM-L6-v2; none: no embedding model, the chat model embeds)",
    )
    serve.add_argument(
        "--kv-cache-gib", type=float, default=1.0, help="memory reserved for the paged KV cache"
    )
    serve.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    serve.add_argument(
        "--kv-cache-dtype",
        choices=KV_CACHE_DTYPES,
        default="auto",
        help="how the KV cache stores keys and values: fp32, fp16, bf16 (2x the tokens per GiB), q8_0 (int8 with "
        "a scale per head row, ~3.8x; as llama.cpp's -ctk/-ctv q8_0); auto: fp16 when the native fused decode "
        "step serves the model (packed GGUF on an AVX2 + F16C CPU), else the model's dtype",
    )
    serve.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    serve.add_argument(
        "--generation-config",
        default="auto",
        metavar="auto|vllm|FOLDER",
        help="sampling defaults of requests that leave them out: auto, the checkpoint's generation_config.json or "
        "GGUF general.sampling.* (for the embedded SmolLM2, its model card's temperature 0.2, top_p 0.9); vllm, "
        "none (temperature 1); a folder, its generation_config.json (as vLLM's flag)",
    )
    serve.add_argument(
        "--override-generation-config",
        default=None,
        metavar="JSON",
        help='sampling defaults over the above, e.g. \'{"temperature": 0.7, "top_k": 40}\' (temperature, top_p, '
        "top_k, repetition_penalty; as vLLM's flag)",
    )
    serve.add_argument(
        "--no-generic-tools",
        action="store_true",
        help="refuse tools (400) when the chat template has no tool support, instead of ember's generic "
        "tool format (a request's generic_tools field overrides this)",
    )
    serve.add_argument(
        "--tool-call-threshold",
        type=float,
        default=None,
        help="generic tool format under tool_choice auto: open a tool call when the model gives opening one at "
        "least this probability at the reply's first token (0..1; default: ember's measured value; a "
        "request's tool_call_threshold field overrides this)",
    )
    serve.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the PEFT LoRA adapter folder PATH as model NAME (repeatable)",
    )
    serve.add_argument(
        "--max-loras", type=int, default=8, help="adapters kept in memory; more are reloaded on demand (LRU)"
    )
    _add_speculation_args(serve)
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="uploads, fine-tuning jobs and their adapters (default: $EMBER_DATA_DIR or ~/.local/share/ember)",
    )
    serve.add_argument(
        "--no-fine-tuning",
        action="store_true",
        help="serve without the files, datasets and fine-tuning routes (and no training worker)",
    )
    serve.add_argument(
        "--max-upload-mib", type=int, default=512, help="largest training-data upload accepted (MiB)"
    )
    serve.add_argument(
        "--ssl-certfile",
        default=None,
        metavar="PEM",
        help="serve https with this certificate chain (with --ssl-keyfile); the fireworks-ai SDK's dataset upload "
        "helper only PUTs to https URLs",
    )
    serve.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the private key of --ssl-certfile")
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long requests in flight may finish before they are ended with an error "
        "(default: 30; a second signal ends them at once)",
    )

    bench = sub.add_parser("bench", help="benchmark the engine against installed peers and print a table")
    _add_model_args(bench)
    bench.add_argument("--streams", default="1,8,32", help="concurrent streams for the decode rows")
    bench.add_argument("--new-tokens", type=int, default=64, help="tokens generated per stream")
    bench.add_argument("--peers", default="transformers,llama.cpp", help="comma list; empty for none")
    bench.add_argument(
        "--http",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run every workload through `ember serve` on loopback and show HTTP/engine (default: on)",
    )
    add_long_bench_args(bench)

    add_tune_subparser(sub)
    add_keys_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        from ember.serve_command import serve_from_args

        return serve_from_args(args)
    if args.command == "bench":
        from ember.bench.runner import run_benchmark

        try:
            cfg = bench_config(args)
        except ValueError as error:
            print(f"ember bench: {error}", file=sys.stderr)
            return 2
        run_benchmark(cfg)
        return 0
    if args.command == "tune":
        return run_tune(args)
    if args.command == "keys":
        return run_keys(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
