"""What a running batch costs live traffic: a streamed live chat's TTFT and total time on `ember serve` (default
model, its own data directory, a free loopback port), idle, beside a running batch, and beside the same work sent
as concurrent live requests (what the batch would cost without the background priority).

    .venv/bin/python benchmarks/bench_batch_priority.py [--lines 48] [--tokens 96] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from openai import OpenAI

from ember.bench.http_server import free_port, wait_until_healthy

MODEL = "SmolLM2-135M-Instruct"


def live_once(client: OpenAI) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three fruits."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
    return first if first is not None else float("nan"), time.perf_counter() - start


def measure(client: OpenAI, label: str, samples: int) -> None:
    rows = [live_once(client) for _ in range(samples)]
    ttft, total = [r[0] * 1000 for r in rows], [r[1] * 1000 for r in rows]
    print(
        f"{label:44s} TTFT p50 {statistics.median(ttft):6.0f} ms  max {max(ttft):6.0f} ms   "
        f"total p50 {statistics.median(total):6.0f} ms",
        flush=True,
    )


def batch_bodies(count: int, tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Write a story about the number {i}."}],
            "max_tokens": tokens,
            "temperature": 0,
        }
        for i in range(count)
    ]


def run(client: OpenAI, args: argparse.Namespace) -> None:
    measure(client, "idle", args.samples)
    bodies = batch_bodies(args.lines, args.tokens)
    lines = [
        {
            "custom_id": f"b{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**b, "ignore_eos": True},
        }
        for i, b in enumerate(bodies)
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("batch.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(2)
    measure(client, f"beside a batch of {args.lines} x {args.tokens} tokens", args.samples)
    counts = client.batches.retrieve(batch.id).request_counts
    print(f"  (the batch meanwhile: {counts})", flush=True)
    client.batches.cancel(batch.id)
    time.sleep(2)

    stop = threading.Event()

    def live_load(worker: int) -> None:
        for i in range(worker, 10**9, 8):
            if stop.is_set():
                return
            client.chat.completions.create(**bodies[i % len(bodies)], extra_body={"ignore_eos": True})

    threads = [threading.Thread(target=live_load, args=(w,), daemon=True) for w in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    measure(client, f"beside 8 live requests of {args.tokens} tokens", args.samples)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-bench-batch-") as folder:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path(folder) / "serve.log"
        command = [
            sys.executable,
            "-m",
            "ember.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            f"{folder}/data",
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_until_healthy(process, url, log_path, 300.0)
            run(OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), args)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
