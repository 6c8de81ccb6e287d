"""Soak `ember serve` on loopback for N minutes with a mix of ordinary and hostile traffic, then print a table.

Clients loop until the time is up, each request drawn from benchmarks/soak_cases.py: streams (OpenAI and
Anthropic), whole completions, streams the client leaves early, grammar-constrained replies, embeddings,
training-data uploads (valid, invalid, cut off mid-body) and the audit's bad inputs. A prober reads /health
throughout. Reported per kind: requests, status classes (2xx, intended 4xx, other 4xx, 429, 5xx, error events
inside 200 streams, connection errors, timeouts) and p50/p99 latency; the server's RSS at the start, end and
peak; and after the load, once idle: /metrics' running and waiting requests and KV usage (all must be 0), the
`.part` files left in the data directory and the tracebacks in the server's log.

By default it starts its own `ember serve` (default model, a temporary data directory, a free loopback port);
with --url it attaches to a running one (loopback only; --pid lets it read that process's RSS).

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--clients 8] [--bad-share 0.25] [--seed 0]
                                        [--threads N] [--url http://127.0.0.1:8000 [--api-key K] [--pid P]]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
from soak_cases import Case, bad_input, ordinary

from ember.bench.http_server import free_port, wait_until_healthy

MODEL = "SmolLM2-135M-Instruct"
REQUEST_TIMEOUT_S = 180.0
CLASSES = ("2xx", "4xx ok", "4xx other", "429", "5xx", "stream err", "conn err", "timeout")


@dataclass
class Tally:
    classes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # what a 5xx / bad stream / unexpected status said

    def add(self, cls: str, seconds: float, note: str | None = None) -> None:
        self.classes[cls] += 1
        self.latencies.append(seconds)
        if note and len(self.findings) < 3:
            self.findings.append(note[:300])


@dataclass
class Soak:
    url: str
    headers: dict[str, str]
    deadline: float
    tallies: dict[str, Tally] = field(default_factory=dict)
    rss_mib: list[float] = field(default_factory=list)
    crashed: str | None = None

    def tally(self, kind: str) -> Tally:
        return self.tallies.setdefault(kind, Tally())


def classify(case: Case, status: int, body: str) -> tuple[str, str | None]:
    """The status class of a finished response, and a note when it is a finding."""
    if status == 429:
        return "429", None
    if 200 <= status < 300:
        return "2xx", (f"accepted: {body[:200]}" if case.expect == "4xx" else None)
    if status >= 500:
        return "5xx", f"{status}: {body}"
    enveloped = '"error"' in body and '"message"' in body
    if case.expect == "4xx" and enveloped:
        return "4xx ok", None
    return "4xx other", f"{status}: {body}"


async def run_case(
    soak: Soak, client: httpx.AsyncClient, case: Case, rng: random.Random, previous: str
) -> str:
    """Sends one case and tallies it; returns its class (the next request of this client notes it)."""
    started = time.monotonic()
    tally = soak.tally(case.kind)
    try:
        cls, note = await asyncio.wait_for(send(soak, client, case, rng), REQUEST_TIMEOUT_S)
    except TimeoutError:
        cls, note = "timeout", f"no answer within {REQUEST_TIMEOUT_S:g} s"
    except httpx.TransportError as error:
        # A pooled connection the server closed after the previous answer fails the next request this way.
        cls, note = "conn err", f"{type(error).__name__} {error}; this client's previous request: {previous}"
    if note and case.label:
        note = f"{case.label} -> {note}"
    tally.add(cls, time.monotonic() - started, note)
    return f"{case.kind} ({cls})"


async def send(
    soak: Soak, client: httpx.AsyncClient, case: Case, rng: random.Random
) -> tuple[str, str | None]:
    url = soak.url + case.path
    if case.mode == "upload_abort":
        return await upload_cut_off(client, url)
    if case.mode == "upload":
        response = await client.post(url, files=case.files, data=case.data)
        if response.status_code == 200:  # keep the data directory small: the soak is not a disk test
            await client.delete(f"{soak.url}/v1/files/{response.json()['id']}")
        return classify(case, response.status_code, response.text)
    if case.mode == "whole":
        if case.raw is not None:
            response = await client.post(url, content=case.raw, headers={"content-type": "application/json"})
        else:
            response = await client.post(url, json=case.body)
        return classify(case, response.status_code, response.text)
    async with client.stream("POST", url, json=case.body) as response:
        if response.status_code != 200:
            return classify(case, response.status_code, (await response.aread()).decode(errors="replace"))
        keep = rng.randint(1, 6) if case.mode == "disconnect" else None
        lines = []
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
            if keep is not None and len(lines) >= keep:
                return "2xx", None  # the client leaves: the server must free what the request held
    return stream_class(lines)


def stream_class(lines: list[str]) -> tuple[str, str | None]:
    """A 200 stream is whole when it ends as its API says ([DONE] / message_stop) with no error event."""
    errors = [line for line in lines if line.startswith('data: {"error"') or line == "event: error"]
    if errors:
        at = lines.index(errors[0])
        return "stream err", " ".join(lines[at : at + 2])
    if lines and (lines[-1] == "data: [DONE]" or lines[-1].startswith('data: {"type":"message_stop"')):
        return "2xx", None
    return "stream err", f"ended without its end marker: {lines[-2:]}"


async def upload_cut_off(client: httpx.AsyncClient, url: str) -> tuple[str, str | None]:
    """Starts a multipart upload and drops the connection mid-body; the server must leave no file behind."""
    boundary = "soakboundary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        ).encode()
        yield b'{"messages": [{"role": "user", "content": "hi"}]}\n' * 200
        await asyncio.sleep(0.05)
        raise ConnectionAbortedError("the soak client drops the upload")

    try:
        await client.post(
            url, content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
    except (ConnectionAbortedError, httpx.TransportError):
        return "2xx", None  # cut off as intended
    return "4xx other", "the server answered an upload that never finished"


async def client_loop(soak: Soak, seed: int, bad_share: float) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(headers=soak.headers, timeout=REQUEST_TIMEOUT_S) as client:
        previous = "none"
        while time.monotonic() < soak.deadline and soak.crashed is None:
            case = bad_input(rng, MODEL) if rng.random() < bad_share else ordinary(rng, MODEL)
            previous = await run_case(soak, client, case, rng, previous)


async def probe_health(soak: Soak) -> None:
    async with httpx.AsyncClient(headers=soak.headers, timeout=REQUEST_TIMEOUT_S) as client:
        while time.monotonic() < soak.deadline and soak.crashed is None:
            started = time.monotonic()
            try:
                response = await client.get(f"{soak.url}/health")
                cls, note = ("2xx", None) if response.status_code == 200 else ("5xx", response.text)
            except httpx.TransportError as error:
                cls, note = "conn err", str(error)
            soak.tally("/health probe").add(cls, time.monotonic() - started, note)
            await asyncio.sleep(0.25)


async def watch_process(soak: Soak, pid: int | None, process: subprocess.Popen[bytes] | None) -> None:
    while time.monotonic() < soak.deadline and soak.crashed is None:
        if process is not None and process.poll() is not None:
            soak.crashed = f"the server exited with code {process.returncode}"
            return
        if pid is not None and (rss := rss_mib(pid)) is not None:
            soak.rss_mib.append(rss)
        await asyncio.sleep(1.0)


def rss_mib(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) / 1024 if match else None


def idle_metrics(url: str, headers: dict[str, str]) -> dict[str, float]:
    """/metrics once nothing runs or waits any more (up to a minute after the load: aborts settle)."""
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
    deadline = time.monotonic() + 60
    while True:
        text = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
        values = {}
        for name in names:
            match = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
            values[name] = float(match[1]) if match else float("nan")
        if all(v == 0 for v in values.values()) or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def print_report(soak: Soak, minutes: float, idle: dict[str, float] | None, extra: list[str]) -> None:
    header = ["kind", "n", *CLASSES, "p50 ms", "p99 ms"]
    rows = []
    for kind in sorted(soak.tallies, key=lambda k: (k.startswith("/"), k.startswith("bad"), k)):
        tally = soak.tallies[kind]
        counts = [str(tally.classes.get(c, 0)) for c in CLASSES]
        p50, p99 = percentile(tally.latencies, 50) * 1000, percentile(tally.latencies, 99) * 1000
        rows.append([kind, str(len(tally.latencies)), *counts, f"{p50:.0f}", f"{p99:.0f}"])
    total = Counter[str]()
    for tally in soak.tallies.values():
        total.update(tally.classes)
    rows.append(["total", str(sum(total.values())), *(str(total.get(c, 0)) for c in CLASSES), "", ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\nsoak: {minutes:g} min on {soak.url}\n")
    for row in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()
    if soak.rss_mib:
        start, end, peak = soak.rss_mib[0], soak.rss_mib[-1], max(soak.rss_mib)
        print(
            f"server RSS: start {start:.0f} MiB, end {end:.0f} MiB, max {peak:.0f} MiB (drift {end - start:+.0f})"
        )
    print(f"server crash: {soak.crashed or 'none'}")
    if idle is not None:
        print("after the load, idle: " + ", ".join(f"{k} {v:g}" for k, v in idle.items()))
    for line in extra:
        print(line)
    findings = [(kind, note) for kind, tally in soak.tallies.items() for note in tally.findings]
    if findings:
        print("\nfindings (first 3 per kind):")
        for kind, note in findings:
            print(f"  [{kind}] {note}")


def start_server(folder: Path, threads: int | None) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = folder / "serve.log"
    command = [sys.executable, "-m", "ember.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(folder / "data")]
    if threads:
        command += ["--threads", str(threads)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url, log, timeout_s=600)
    return process, url, folder / "data"


async def soak_for(
    soak: Soak, args: argparse.Namespace, pid: int | None, process: subprocess.Popen[bytes] | None
) -> None:
    tasks = [client_loop(soak, args.seed + i, args.bad_share) for i in range(args.clients)]
    await asyncio.gather(*tasks, probe_health(soak), watch_process(soak, pid, process))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--bad-share", type=float, default=0.25, help="share of requests that are bad inputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="the started server's --threads")
    parser.add_argument("--url", default=None, help="attach to this running server (loopback only)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--pid", type=int, default=None, help="the attached server's pid, for its RSS")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60 or args.clients < 1:
        parser.error("--minutes must be in (0, 1440] and --clients at least 1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.url is not None and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be a loopback address: the soak sends hostile inputs")
    with tempfile.TemporaryDirectory(prefix="ember-soak-") as folder:
        if args.url is None:
            process, url, data_dir = start_server(Path(folder), args.threads)
            soak = Soak(url, headers, time.monotonic() + args.minutes * 60)
            try:
                asyncio.run(soak_for(soak, args, process.pid, process))
                idle = None if soak.crashed else idle_metrics(url, headers)
                parts = len(list((data_dir / "incoming").glob("*.part")))
            finally:
                code = stop_server(process)
            log = Path(folder) / "serve.log"
            kept = Path(tempfile.gettempdir()) / "ember-soak-serve.log"
            shutil.copy(log, kept)
            extra = [
                f".part files left in the data directory: {parts}",
                f"server exit code after SIGTERM: {code}; tracebacks in its log: "
                f"{log.read_text(errors='replace').count('Traceback')} (log kept as {kept})",
            ]
        else:
            soak = Soak(args.url.rstrip("/"), headers, time.monotonic() + args.minutes * 60)
            asyncio.run(soak_for(soak, args, args.pid, None))
            idle = None if soak.crashed else idle_metrics(soak.url, headers)
            extra = []
    print_report(soak, args.minutes, idle, extra)
    return 1 if soak.crashed or any(t.classes.get("5xx") for t in soak.tallies.values()) else 0


def stop_server(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


if __name__ == "__main__":
    sys.exit(main())
