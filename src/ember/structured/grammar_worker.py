"""A small process that compiles untrusted grammars first, so a crash in llguidance's native code (SIGSEGV,
abort) or a compilation that runs too long costs a 400, not the server.

    verify_grammar(grammar)   None if llguidance compiles it within its limits, else a short error message

Verdicts are cached by the SHA-256 of the grammar text (the last 1024), so a repeated schema costs a dict
lookup. Grammars under 4 KiB are checked in this process: past grammar_limits' checks nothing that small
crashes or takes long. The rest go to the worker: one per process, a `python -c` running main() below,
started on first use, restarted after it dies or overruns its time budget (killed and
waited for: no zombies), stopped at exit. The worker compiles on a thread with a 2 MiB stack, a quarter of
the 8 MiB the server's threads have on Linux, so what compiled there has room to spare here.

Protocol: each message is a 4-byte big-endian length and that many bytes of UTF-8 JSON; the worker answers
{"ready": true} once started, then {"error": str | null} for each {"grammar": str}.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from typing import IO, Any

from ember.structured.grammar_check import check_grammar

logger = logging.getLogger(__name__)

WORKER_STACK_BYTES = 2 * 1024 * 1024
WORKER_MEMORY_BYTES = 4 * 1024 * 1024 * 1024  # address space: an allocation past it aborts the worker only
IN_PROCESS_MAX_BYTES = 4096
DEFAULT_TIME_BUDGET_S = 5.0
CACHE_SIZE = 1024
_STARTUP_TIMEOUT_S = 60.0
_HEADER = struct.Struct(">I")


class GrammarWorkerError(RuntimeError):
    """The worker could not be started or answered nonsense: ember's fault, not the grammar's."""


class GrammarWorker:
    """One worker process and the pipes to it; thread-safe (one grammar at a time)."""

    def __init__(self, time_budget_s: float = DEFAULT_TIME_BUDGET_S) -> None:
        self.time_budget_s = time_budget_s
        self.round_trips = 0  # grammars sent to a worker process
        self.starts = 0  # worker processes started
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._owner = os.getpid()  # a forked child must not use (or stop) its parent's worker

    @property
    def pid(self) -> int | None:
        process = self._process
        return None if process is None else process.pid

    def check(self, grammar: str) -> str | None:
        """None if the worker compiled `grammar`; its error, or why the worker died or was stopped, if not."""
        request = json.dumps({"grammar": grammar}).encode("utf-8")
        with self._lock:
            process = self._running()
            self.round_trips += 1
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(_HEADER.pack(len(request)) + request)
                process.stdin.flush()
                reply = _read_message(process.stdout, time.monotonic() + self.time_budget_s)
            except TimeoutError:
                self._stop_locked()
                return f"too complex to compile within {self.time_budget_s:g} s"
            except (OSError, EOFError):
                return self._died_locked()
        if not isinstance(reply, dict) or "error" not in reply:
            raise GrammarWorkerError(f"the grammar worker answered {reply!r}")
        error = reply["error"]
        return None if error is None else str(error)

    def stop(self) -> None:
        if os.getpid() != self._owner:
            return
        with self._lock:
            self._stop_locked()

    def _running(self) -> subprocess.Popen[bytes]:
        process = self._process
        if process is not None and process.poll() is None:
            return process
        if process is not None:
            self._stop_locked()
        return self._start_locked()

    def _start_locked(self) -> subprocess.Popen[bytes]:
        self._stderr = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [sys.executable, "-c", "from ember.structured.grammar_worker import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            close_fds=True,
            env=_worker_environment(),
        )
        self._process = process
        self.starts += 1
        assert process.stdout is not None
        try:
            ready = _read_message(process.stdout, time.monotonic() + _STARTUP_TIMEOUT_S)
        except (TimeoutError, OSError, EOFError):
            ready = None
        if ready != {"ready": True}:
            detail = self._stderr_tail()
            self._stop_locked()
            raise GrammarWorkerError(f"the grammar worker did not start: {detail or ready!r}")
        return process

    def _died_locked(self) -> str:
        process = self._process
        code = process.wait() if process is not None else None
        detail = self._stderr_tail()
        self._stop_locked()
        if code is not None and code < 0:
            try:
                how = signal.Signals(-code).name
            except ValueError:
                how = f"signal {-code}"
        else:
            how = f"exit status {code}"
        last_line = detail.splitlines()[-1][:300] if detail else ""
        logger.warning("the grammar worker died compiling a grammar (%s) %s", how, last_line)
        return f"crashed the grammar compiler ({how}); it is too large or too deeply nested"

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            for pipe in (process.stdin, process.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass
            if process.poll() is None:
                try:
                    process.wait(timeout=0.05)  # a closed stdin ends an idle worker
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 2000))
            return self._stderr.read().decode("utf-8", errors="replace").strip()
        except (OSError, ValueError):
            return ""


def _worker_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RUST_BACKTRACE", None)  # panics are caught and reported; their backtraces are noise
    source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source_root, env.get("PYTHONPATH")) if p)
    return env


def _read_message(stream: IO[bytes], deadline: float) -> Any:
    header = _read_exactly(stream, _HEADER.size, deadline)
    (length,) = _HEADER.unpack(header)
    return json.loads(_read_exactly(stream, length, deadline))


def _read_exactly(stream: IO[bytes], count: int, deadline: float) -> bytes:
    """`count` bytes from a pipe; TimeoutError past `deadline`, EOFError if the writer is gone."""
    fd = stream.fileno()
    chunks: list[bytes] = []
    while count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            raise TimeoutError
        chunk = os.read(fd, min(count, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


class VerdictCache:
    """Verdicts by the SHA-256 of the grammar: "" for a grammar that compiles, else its error. Thread-safe."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._verdicts: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> str | None:
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
            return verdict

    def put(self, key: bytes, verdict: str) -> None:
        with self._lock:
            self._verdicts[key] = verdict
            self._verdicts.move_to_end(key)
            while len(self._verdicts) > self._size:
                self._verdicts.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._verdicts.clear()

    def reset_lock(self) -> None:
        self._lock = threading.Lock()


_worker: GrammarWorker | None = None
_worker_lock = threading.Lock()
_cache = VerdictCache()


def shared_worker() -> GrammarWorker:
    """This process's worker (the object; its process starts on the first grammar sent to it)."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = GrammarWorker()
            atexit.register(_worker.stop)
        return _worker


def _forget_parents_worker() -> None:
    """In a forked child: the parent's worker and locks (perhaps held at the fork) are not ours."""
    global _worker, _worker_lock
    _worker = None
    _worker_lock = threading.Lock()
    _cache.reset_lock()


os.register_at_fork(after_in_child=_forget_parents_worker)


def verify_grammar(grammar: str) -> str | None:
    """None if llguidance compiles `grammar` within its limits and its first steps work, else a short error.

    Call only with grammars under grammar_limits: small ones are compiled in this process."""
    key = hashlib.sha256(grammar.encode("utf-8", errors="surrogatepass")).digest()
    verdict = _cache.get(key)
    if verdict is None:
        if len(grammar) < IN_PROCESS_MAX_BYTES:
            error = check_grammar(grammar)
        else:
            error = shared_worker().check(grammar)
        verdict = error or ""
        _cache.put(key, verdict)
    return verdict or None


def clear_cache() -> None:
    _cache.clear()


# ---------------------------------------------------------------------------------------------------- worker


def _serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    def send(message: dict[str, Any]) -> None:
        data = json.dumps(message).encode("utf-8")
        replies.write(_HEADER.pack(len(data)) + data)
        replies.flush()

    send({"ready": True})
    while True:
        header = requests.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return  # the server closed the pipe, or exited
        (length,) = _HEADER.unpack(header)
        request = json.loads(requests.read(length))
        try:
            error = check_grammar(request["grammar"])
        except Exception as exc:  # noqa: BLE001 - anything llguidance raises is the grammar's fault
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        send({"error": error})


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which closes our stdin
    # Replies go to a private copy of stdout; fd 1 then points at stderr, so nothing native code prints can
    # corrupt the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    threading.stack_size(WORKER_STACK_BYTES)
    thread = threading.Thread(target=_serve, args=(requests, replies), name="grammar-worker")
    thread.start()
    thread.join()
