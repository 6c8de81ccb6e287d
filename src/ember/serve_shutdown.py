"""`ember serve`'s shutdown on SIGTERM or SIGINT: stop accepting connections, let the requests in flight finish
for up to the drain timeout, then end each one still running with an error (a stream: its error event, then
`[DONE]`; a whole response: a 503) and exit 0. A second signal ends the drain at once; a third quits without
waiting for anything, as uvicorn's second Ctrl-C does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from ember.engine.errors import ServerShuttingDownError

if TYPE_CHECKING:
    from ember.engine.async_engine import AsyncEngine

logger = logging.getLogger("ember.serve")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_S = (
    0.1  # a signal handler may only set flags; the drain looks at them this often (as uvicorn's loop does)
)


@dataclass(frozen=True)
class DrainConfig:
    timeout_s: float = 30.0  # --drain-timeout: how long requests in flight may run on after the signal
    # After the requests were ended: time for their last bytes (error event, [DONE]) to reach the clients.
    # A client that does not read them by then has its connection closed, so shutdown never waits on it.
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.timeout_s < math.inf:
            raise ValueError(
                f"--drain-timeout must be a finite number of seconds, 0 or more; got {self.timeout_s}"
            )

    @property
    def uvicorn_timeout_s(self) -> float:
        """uvicorn's own graceful-shutdown timeout: a last resort past the drain (it cancels what is left)."""
        return self.timeout_s + self.grace_s + 5.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with ember's drain: uvicorn stops accepting and waits for the connections to end;
    the drain ends the requests that would outlive the timeout, so every connection does end, cleanly."""

    def __init__(
        self,
        config: uvicorn.Config,
        engines: Callable[[], Sequence[AsyncEngine]],
        drain: DrainConfig,
        on_drain_start: Sequence[Callable[[], None]] = (),
    ) -> None:
        super().__init__(config)
        self.engines = (
            engines  # every engine loaded when the drain starts and ends (a server may have several)
        )
        self.drain = drain
        self.on_drain_start = tuple(on_drain_start)  # blocking calls, run in threads (e.g. stop training)
        self._signals_seen = 0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs as the signal handler, so it only sets flags: 1st signal drain, 2nd end the drain, 3rd quit."""
        self._signals_seen += 1
        self.should_exit = True
        if self._signals_seen >= 3:
            self.force_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, except that the signal is not raised again on the way out: uvicorn re-raises it to the
        default handler, which makes a drained server die "by SIGTERM" (exit status 143) instead of exiting 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        uvicorn_logger = logging.getLogger("uvicorn.error")
        quiet = _QuietCancellation()
        uvicorn_logger.addFilter(quiet)
        drain = asyncio.create_task(self._drain())
        try:
            await super().shutdown(sockets)  # closes the listeners, then waits for the connections to end
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            uvicorn_logger.removeFilter(quiet)

    async def _drain(self) -> None:
        in_flight = sum(s.num_running + s.num_waiting for s in (e.stats() for e in self.engines()))
        logger.info(
            "shutting down: no new connections; %d requests in flight have up to %g s to finish "
            "(a second signal ends them now)",
            in_flight,
            self.drain.timeout_s,
        )
        hooks = [asyncio.create_task(asyncio.to_thread(hook)) for hook in self.on_drain_start]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain.timeout_s
        while loop.time() < deadline and self._signals_seen < 2:
            if (
                not self.server_state.connections
            ):  # everything finished: uvicorn moves on to the app's shutdown
                await asyncio.gather(*hooks, return_exceptions=True)
                return
            await asyncio.sleep(_POLL_S)
        why = (
            "a second signal" if self._signals_seen >= 2 else f"the {self.drain.timeout_s:g} s drain timeout"
        )
        error = ServerShuttingDownError(
            f"the server is shutting down: {why} ended this request before it finished"
        )
        ended = sum([await engine.end_all_requests(error) for engine in self.engines()])
        if ended:
            logger.warning(
                "%s ended the drain: %d requests still running were ended with an error", why, ended
            )
        await asyncio.sleep(self.drain.grace_s)
        stalled = list(self.server_state.connections)
        for connection in stalled:
            connection.transport.abort()  # type: ignore[attr-defined]  # both uvicorn protocols have it
        if stalled:
            logger.warning("closed %d connections whose clients did not read their last bytes", len(stalled))
        await asyncio.gather(*hooks, return_exceptions=True)


class _QuietCancellation(logging.Filter):
    """uvicorn logs a full traceback for each request task it cancels at its own timeout. By then the drain
    has ended every request and closed every stalled connection, so such a task is one stuck elsewhere: one
    line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            record.msg = "a request still running after the drain was cancelled"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True
