"""The batch runner: one asyncio task beside the HTTP server that works through the unfinished batches, oldest
first, a few requests in flight at a time (each at the background priority, so the scheduler serves live
requests first), then writes the output and error files and closes the batch.

Everything it knows is in the batches db: at start-up it picks up every batch a stopped server left unfinished,
runs the requests still pending and keeps those done. A cancel aborts the requests in flight (they stay
pending) and closes the batch with the finished ones; a batch past its completion window closes as expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path

from ember.server.batches.line_runner import LineRunner, NotNow, output_line, unrun_line
from ember.server.batches.store import BatchRecord, BatchStore, LineRecord
from ember.server.common.tenancy import Tenant
from ember.tuning.file_storage import FileStorage

logger = logging.getLogger(__name__)

LINES_IN_FLIGHT = 8  # at most; BatchesServing.build keeps it within the scheduler's background rows
RETRY_DELAY_S = 0.5  # before a request the engine could not take (queue full) is tried again


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        files: FileStorage,
        lines: LineRunner,
        server_account: str,
        lines_in_flight: int = LINES_IN_FLIGHT,
    ) -> None:
        self.store = store
        self.files = files
        self.lines = lines
        self.server_account = server_account
        self.lines_in_flight = lines_in_flight
        self.work_dir = files.data_dir / "batches"
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._running_id: str | None = None  # the batch whose requests run now
        self._closing: set[str] = set()  # cancelled batches closed beside it
        self._side_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._loop(), name="ember-batches")

    async def stop(self) -> None:
        """Stops at once: requests in flight are aborted and stay pending, to run after the next start."""
        for task in [self._task, *self._side_tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """The batch was moved to `cancelling`: abort what runs of it. A batch still waiting its turn is closed
        at once, beside the one running (its cancel does not wait for another batch to finish)."""
        self._cancel_event(batch_id).set()
        if batch_id != self._running_id and batch_id not in self._closing:
            self._closing.add(batch_id)
            task = asyncio.create_task(self._close_cancelled(batch_id))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
        self._wake.set()

    async def _close_cancelled(self, batch_id: str) -> None:
        try:
            record = self.store.get(batch_id)
            if record is not None and record.status == "cancelling":
                await self._finalize(record, "cancelled")
        except Exception:  # noqa: BLE001 - the loop retries it as any unfinished batch
            logger.exception("closing the cancelled batch %s failed", batch_id)
        finally:
            self._closing.discard(batch_id)
            self._cancels.pop(batch_id, None)
            self._wake.set()

    def _cancel_event(self, batch_id: str) -> asyncio.Event:
        return self._cancels.setdefault(batch_id, asyncio.Event())

    def tenant_of(self, record: BatchRecord) -> Tenant:
        account = record.owner or self.server_account
        return Tenant(account=account, owns_unowned=account == self.server_account)

    # -- the loop ------------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            batches = [b for b in self.store.unfinished() if b.id not in self._closing]
            if not batches:
                await self._wake.wait()
                continue
            self._running_id = batches[0].id  # before any await: a cancel from now on is this run's to handle
            try:
                await self._run(batches[0])
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - one broken batch must not stop the others
                logger.exception("batch %s failed", batches[0].id)
                self.store.set_status(
                    batches[0].id,
                    "failed",
                    only_from=("validating", "in_progress", "finalizing", "cancelling"),
                    failed_at=int(time.time()),
                    errors=[
                        {"code": "internal_error", "message": f"the batch failed: {error}", "line": None}
                    ],
                )

    async def _run(self, record: BatchRecord) -> None:
        cancelled = self._cancel_event(record.id)
        if record.status == "validating":  # validated when created; a restart may have stopped right after
            self.store.set_status(record.id, "in_progress", only_from=("validating",), in_progress_at=_now())
        elif record.status == "cancelling":
            cancelled.set()
        if record.status in ("validating", "in_progress"):
            await self._run_lines(record, cancelled)
            unfinished = not cancelled.is_set() and _now() < record.expires_at
            if unfinished and self.store.pending_lines(record.id, limit=1):
                await asyncio.sleep(RETRY_DELAY_S)  # a line came back unfinished: the loop runs it again
                return
        # a cancel that came meanwhile has made it `cancelling`: then this does nothing
        self.store.set_status(record.id, "finalizing", only_from=("in_progress",), finalizing_at=_now())
        current = self.store.get(record.id)
        if current is None:  # deleted meanwhile (Fireworks' delete)
            self._cancels.pop(record.id, None)
            return
        if current.status == "cancelling":
            final = "cancelled"
        elif _now() >= current.expires_at and self.store.pending_lines(record.id, limit=1):
            final = "expired"
        else:
            final = "completed"
        await self._finalize(current, final)
        self._cancels.pop(record.id, None)

    async def _run_lines(self, record: BatchRecord, cancelled: asyncio.Event) -> None:
        """The pending requests, `lines_in_flight` at a time, until done, cancelled or past the window. The
        db is read a page at a time off the event loop: a 50,000-line batch is never all in memory, and a big
        body's JSON is never parsed on the loop."""
        queue: asyncio.Queue[LineRecord | None] = asyncio.Queue(maxsize=self.lines_in_flight)
        tenant = self.tenant_of(record)

        def stopped() -> bool:
            return cancelled.is_set() or _now() >= record.expires_at

        async def feed() -> None:
            last = 0
            while not stopped():
                page = await asyncio.to_thread(self.store.pending_lines, record.id, 32, last)
                if not page:
                    break
                for line in page:
                    await queue.put(line)
                last = page[-1].line
            for _ in range(self.lines_in_flight):
                await queue.put(None)

        async def work() -> None:
            while (line := await queue.get()) is not None:
                outcome = None
                while not stopped():
                    try:
                        outcome = await self.lines.run(line, tenant, cancelled)
                        break
                    except NotNow:
                        await asyncio.sleep(RETRY_DELAY_S)
                if outcome is not None:
                    await asyncio.to_thread(
                        self.store.finish_line,
                        record.id,
                        line.line,
                        outcome.ok,
                        outcome.result,
                        outcome.usage,
                    )

        tasks = [asyncio.create_task(feed())] + [
            asyncio.create_task(work()) for _ in range(self.lines_in_flight)
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- closing a batch -----------------------------------------------------------------------------------

    async def _finalize(self, record: BatchRecord, final: str) -> None:
        """Writes the output and error files (the finished requests; the unrun ones of a cancelled or expired
        batch into the error file), then gives the batch its final status."""
        unrun_code = {"cancelled": "batch_cancelled", "expired": "batch_expired"}.get(
            final, "batch_incomplete"
        )
        folder = self.work_dir / _safe(record.id)
        folder.mkdir(parents=True, exist_ok=True)
        output, errors = folder / "output.jsonl", folder / "errors.jsonl"
        counts = await asyncio.to_thread(self._write_files, record, output, errors, unrun_code)
        values: dict[str, object] = {f"{final}_at": _now()}
        if record.api == "fireworks":
            await asyncio.to_thread(self._store_dataset, record, output, errors, counts)
        else:
            if counts[0]:
                values["output_file_id"] = self.files.add_output_file(
                    output, "batch_output", f"{record.id}_output.jsonl", record.owner
                ).id
            if counts[1]:
                values["error_file_id"] = self.files.add_output_file(
                    errors, "batch_output", f"{record.id}_error.jsonl", record.owner
                ).id
        self.store.set_status(record.id, final, only_from=("finalizing", "cancelling"), **values)
        for path in (output, errors):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()

    def _write_files(
        self, record: BatchRecord, output: Path, errors: Path, unrun_code: str
    ) -> tuple[int, int]:
        written = [0, 0]
        message = {
            "batch_cancelled": "the batch was cancelled before this request ran",
            "batch_expired": "the batch's completion window ended before this request ran",
        }.get(unrun_code, "the request did not run")
        with open(output, "w", encoding="utf-8") as out, open(errors, "w", encoding="utf-8") as err:
            for line in self.store.lines(record.id):
                if line.state == "completed":
                    out.write(json.dumps(output_line(line)) + "\n")
                    written[0] += 1
                else:
                    row = (
                        output_line(line) if line.state == "failed" else unrun_line(line, unrun_code, message)
                    )
                    err.write(json.dumps(row) + "\n")
                    written[1] += 1
        return written[0], written[1]

    def _store_dataset(
        self, record: BatchRecord, output: Path, errors: Path, counts: tuple[int, int]
    ) -> None:
        """A Fireworks job's results: one output dataset, the successful rows, then the failed ones."""
        fields = record.fireworks or {}
        name = fields["outputDatasetName"]
        with open(output, "a", encoding="utf-8") as out, open(errors, encoding="utf-8") as err:
            for row in err:
                out.write(row)
        self.files.add_output_dataset(name, output, counts[0] + counts[1], "BIJ_results.jsonl")


def _now() -> int:
    return int(time.time())


def _safe(batch_id: str) -> str:
    return batch_id.replace("/", "_")
