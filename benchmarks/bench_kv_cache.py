"""The KV cache's dtype on the default model (SmolLM2-135M-Instruct, GGUF Q4_1): decode speed after long prompts
and the accuracy guard, fp32 vs fp16 vs bf16 vs q8_0 KV.

Text: ember's own docs and sources, concatenated and tokenized (nothing is downloaded).

Speed (`--speed`): the cache holds random rows in place of an 8k-token prompt's (a decode step reads every row
of its context whatever it holds, and a real 8k prefill costs 1-20 minutes on a shared machine), encoded as each
dtype's write path encodes them. One stream then decodes greedily after the first 1k / 4k / 8k positions: each step
is the fused native decode step plus the lm_head and argmax (the engine's step without its scheduler). tok/s from
the median step time; the spread is [min, max] over the steps. With --threads 1 a second figure comes from the
thread's CPU time per step, which a shared machine's other processes inflate far less than the wall clock (with
more threads, OpenMP's barriers make CPU time meaningless, so it is left out).

Accuracy (`--accuracy`): for each dtype a >= 4k-token prompt is prefilled in 512-token chunks into a cache of
that dtype (later chunks read the earlier ones' compact rows, as serving does), then `--decode-tokens` tokens of
the same text are fed one decode step at a time (teacher forcing). Top-1 agreement with the fp32-KV run over
every position after the first chunk, and over the decode steps alone. Targets: >= 99% fp16/bf16, >= 98% q8_0.
Add `fp32/256` to --dtypes for the floor: fp32 KV prefilled in chunks of 256, i.e. the same values summed in another
order. On packed weights any perturbation re-rolls the int8 activations' rounding, so compare each dtype with that
floor, or run with --weight-format fp32 to see the dtype's own effect.

    .venv/bin/python benchmarks/bench_kv_cache.py --threads 2 [--speed] [--accuracy] [--dtypes fp32,fp16,q8_0]

Run it from an older checkout (PYTHONPATH=that/src) with --dtypes fp32 --speed for the figures before a change:
only the fp32 rows need nothing but the fused step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ember.bench.machine import cpu_name, load_average
from ember.engine.forward_path import ForwardPath, NetworkForward
from ember.models.attention_metadata import AttentionMetadata
from ember.models.kv_cache import allocate_kv_caches
from ember.models.loader import LoadConfig, LoadedModel, load_model
from ember.threads import configure_torch_threads

BLOCK_SIZE = 16
PREFILL_CHUNK = 512
REPO = Path(__file__).resolve().parent.parent


def long_text_ids(model: LoadedModel, count: int, root: Path = REPO) -> list[int]:
    """The first `count` tokens of ember's docs and Python sources under `root`, in a fixed order."""
    files = sorted((root / "docs").glob("*.md")) + sorted((root / "src" / "ember").rglob("*.py"))
    ids: list[int] = []
    for path in files:
        ids += model.tokenizer.encode(path.read_text())
        if len(ids) >= count:
            return ids[:count]
    raise SystemExit(f"only {len(ids)} tokens of text in the repository, {count} wanted")


def allocate(model: LoadedModel, dtype_name: str, num_blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if dtype_name == "fp32":
        return allocate_kv_caches(model.config, num_blocks, BLOCK_SIZE, torch.float32, "cpu")
    from ember.models.kv_cache_format import kv_cache_format  # absent before #15: fp32 rows only there

    return allocate_kv_caches(model.config, num_blocks, BLOCK_SIZE, kv_cache_format(dtype_name), "cpu")


def encoded_like(
    fp32_caches: list[tuple[torch.Tensor, torch.Tensor]], dtype_name: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if dtype_name == "fp32":
        return fp32_caches
    from ember.models.kv_cache_format import kv_cache_format

    kv_format = kv_cache_format(dtype_name)
    return [(kv_format.encode(k), kv_format.encode(v)) for k, v in fp32_caches]


def metadata(table: torch.Tensor, start: int, end: int) -> AttentionMetadata:
    """Positions start .. end - 1 of one sequence whose blocks are `table` [nb]."""
    positions = torch.arange(start, end)
    slots = table[positions // BLOCK_SIZE] * BLOCK_SIZE + positions % BLOCK_SIZE
    return AttentionMetadata(
        query_lens=[end - start],
        context_lens=[end],
        query_start_loc=torch.tensor([0, end - start]),
        context_lens_tensor=torch.tensor([end]),
        block_tables=table[None],
        slot_mapping=slots,
        block_size=BLOCK_SIZE,
    )


def prefill(
    forward: NetworkForward,
    ids: list[int],
    table: torch.Tensor,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    keep_argmax: bool,
    chunk: int = PREFILL_CHUNK,
) -> list[int]:
    """The prompt in chunks; the argmax at every position when asked."""
    top: list[int] = []
    model = forward.network
    for start in range(0, len(ids), chunk):
        end = min(len(ids), start + chunk)
        hidden, _ = forward(
            torch.tensor(ids[start:end]), torch.arange(start, end), metadata(table, start, end), caches
        )
        if keep_argmax:
            top += model.compute_logits(hidden).argmax(dim=-1).tolist()
    return top


def decode_step(
    forward: NetworkForward,
    token: int,
    position: int,
    table: torch.Tensor,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
    require_fused: bool = True,
) -> int:
    hidden, path = forward(
        torch.tensor([token]), torch.tensor([position]), metadata(table, position, position + 1), caches
    )
    if require_fused and path is not ForwardPath.FUSED:
        raise SystemExit("the decode step did not run fused: no native kernels for this model here")
    return int(forward.network.compute_logits(hidden).argmax())


def run_speed(model: LoadedModel, dtypes: list[str], contexts: list[int], steps: int, root: Path) -> None:
    longest = max(contexts)
    ids = long_text_ids(model, longest, root)
    forward = NetworkForward(model.network)
    prompt_blocks = longest // BLOCK_SIZE
    decode_blocks = -(-steps // BLOCK_SIZE) + 1
    table = torch.arange(prompt_blocks + decode_blocks)
    fp32_caches = allocate(model, "fp32", len(table))
    generator = torch.Generator().manual_seed(0)
    for keys, values in fp32_caches:
        keys.normal_(std=2.0, generator=generator)
        values.normal_(std=0.5, generator=generator)
    print(
        f"\n{'KV':<6}{'context':>8}{'tok/s':>8}  {'[min, max]':<14}{'CPU-time tok/s':>15}{'KV MiB/token':>14}  CPU / load"
    )
    for name in dtypes:
        caches = encoded_like(fp32_caches, name)
        per_token = sum(k[0, 0].nbytes + v[0, 0].nbytes for k, v in caches) / 2**20
        for context in contexts:
            # The first `context` positions are the prompt's; the decoded tokens go to blocks after all of them.
            seq_table = torch.cat([table[: context // BLOCK_SIZE], table[prompt_blocks:]])
            token = ids[context - 1]
            times, cpu_times = [], []
            with torch.inference_mode():
                for step in range(steps):
                    begin, begin_cpu = time.perf_counter(), time.thread_time()
                    token = decode_step(forward, token, context + step, seq_table, caches)
                    times.append(time.perf_counter() - begin)
                    cpu_times.append(time.thread_time() - begin_cpu)
            times, cpu_times = times[2:], cpu_times[2:]  # warm-up
            median = statistics.median(times)
            by_cpu = f"{1 / statistics.median(cpu_times):.1f}" if torch.get_num_threads() == 1 else "-"
            spread = f"[{1 / max(times):.0f}, {1 / min(times):.0f}]"
            print(
                f"{name:<6}{context:>8}{1 / median:>8.1f}  {spread:<14}{by_cpu:>15}{per_token:>14.4f}"
                f"  {cpu_name()} / {load_average()}"
            )


def run_accuracy(
    model: LoadedModel, dtypes: list[str], prompt_len: int, decode_tokens: int, root: Path
) -> None:
    ids = long_text_ids(model, prompt_len + decode_tokens + 1, root)
    forward = NetworkForward(model.network)
    table = torch.arange(-(-len(ids) // BLOCK_SIZE))
    tops: dict[str, tuple[list[int], list[int]]] = {}
    # "fp32/256": fp32 KV again, prefilled in chunks of 256: the same values summed in another order, the floor
    # of what any perturbation costs (on packed weights each one re-rolls the int8 activations' rounding).
    for name in ["fp32"] + [d for d in dtypes if d != "fp32"]:
        started = time.perf_counter()
        dtype_name, chunk = ("fp32", 256) if name == "fp32/256" else (name, PREFILL_CHUNK)
        with torch.inference_mode():
            caches = allocate(model, dtype_name, len(table))
            prompt_top = prefill(forward, ids[:prompt_len], table, caches, keep_argmax=True, chunk=chunk)
            decoded = [
                decode_step(forward, ids[p], p, table, caches, require_fused=forward.fused is not None)
                for p in range(prompt_len, prompt_len + decode_tokens)
            ]
        tops[name] = (prompt_top[PREFILL_CHUNK:], decoded)
        print(
            f"{name}: {prompt_len}-token prefill + {decode_tokens} decodes in {time.perf_counter() - started:.1f} s"
        )
    ref_prompt, ref_decoded = tops["fp32"]
    print(
        f"\nteacher-forced top-1 agreement with fp32 KV ({prompt_len}-token prompt; {cpu_name()}, load {load_average()})"
    )
    print(f"{'KV':<9}{'prefill positions':>20}{'decode steps':>15}{'all':>8}")
    for name, (prompt_top, decoded) in tops.items():
        if name == "fp32":
            continue
        same_prompt = sum(a == b for a, b in zip(prompt_top, ref_prompt, strict=True))
        same_decode = sum(a == b for a, b in zip(decoded, ref_decoded, strict=True))
        total = len(prompt_top) + len(decoded)
        print(
            f"{name:<9}{same_prompt / len(prompt_top):>19.2%} {same_decode / len(decoded):>14.2%}"
            f"{(same_prompt + same_decode) / total:>8.2%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="fp32,fp16,bf16,q8_0")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--contexts", default="1024,4096,8000", help="decode after these many prompt tokens")
    parser.add_argument("--steps", type=int, default=34, help="decode steps timed per row (2 warm-up)")
    parser.add_argument("--prompt-tokens", type=int, default=4096)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument(
        "--weight-format",
        choices=("packed", "fp32"),
        default="packed",
        help="packed: the GGUF's blocks on the int8 kernels (fused decodes); fp32: the exact reference path, where "
        "the accuracy rows show the KV dtype's own effect (--accuracy only: the speed rows need the fused step)",
    )
    parser.add_argument(
        "--text-root", type=Path, default=REPO, help="a checkout whose docs and sources are the text"
    )
    args = parser.parse_args()
    threads = configure_torch_threads(args.threads)
    model = load_model(LoadConfig(weight_format=args.weight_format))
    dtypes = args.dtypes.split(",")
    print(f"{model.name}, {threads} threads, {cpu_name()}, load {load_average()}")
    if args.speed or not args.accuracy:
        run_speed(model, dtypes, [int(c) for c in args.contexts.split(",")], args.steps, args.text_root)
    if args.accuracy:
        run_accuracy(model, dtypes, args.prompt_tokens, args.decode_tokens, args.text_root)


if __name__ == "__main__":
    main()
