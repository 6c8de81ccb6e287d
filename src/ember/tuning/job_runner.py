"""The server side of fine-tuning jobs: a thread that moves jobs through their statuses and runs one training
worker process at a time (the machine's cores serve requests too).

validating_files -> queued:   the job's files are checked (structure rules only; tokens are counted by the worker)
queued -> running:            claimed atomically in the store, then `python -m ember.tuning.jobs` is started
running -> failed/cancelled:  written by the worker (cancel: by the service; the worker notices)
running -> succeeded:         the worker saved the adapter and marked the job trained, then exited; the runner
                              calls `before_succeeded(job)` (the server serves the adapter there) and only then
                              writes `succeeded`, so a succeeded job's model answers at once. A hook that raises
                              fails the job instead.

A server that stops sends its worker SIGTERM: the worker saves a checkpoint of the step in progress and puts
its job back to `queued` itself, without using up an attempt (worker_stop.py). A worker that is gone while its
job is still `running` (killed, out of memory, too slow to stop) leaves the job re-queued, and the next worker resumes from the job's last checkpoint. After
`max_attempts` such losses the job fails instead of looping forever. At start-up, `running` jobs whose worker
process is still alive (it outlived a server restart) are adopted and watched until they end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ember.tuning.job_store import JobRecord
from ember.tuning.jobs import JobPaths
from ember.tuning.store import TuningStore
from ember.tuning.validation import validate_dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerConfig:
    poll_interval_s: float = 0.5
    max_attempts: int = 3  # worker losses before the job fails
    python: str = sys.executable
    worker_threads: int | None = None  # torch threads of the training worker; None: torch's default
    worker_nice: int = 10  # the worker yields the cores to serving (0: same priority as the server)
    # After SIGTERM, the time a worker gets to finish its step and save a checkpoint before it is killed.
    worker_stop_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {self.poll_interval_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"worker_nice must be in [0, 19], got {self.worker_nice}")
        if self.worker_stop_timeout_s < 0:
            raise ValueError(f"worker_stop_timeout_s must be 0 or more, got {self.worker_stop_timeout_s}")
        if self.worker_threads is not None and self.worker_threads < 1:
            raise ValueError(f"worker_threads must be at least 1 when set, got {self.worker_threads}")


@dataclass
class _Worker:
    job_id: str
    pid: int
    process: subprocess.Popen[bytes] | None  # None for a worker adopted from an earlier server process


class JobRunner:
    """Call `start()` once at server start-up and `stop()` at shutdown; `before_succeeded(job)` runs for every
    trained job before it turns succeeded (e.g. to serve its adapter), `on_finished(job)` for every job that
    reached a final status while this runner watched it."""

    def __init__(
        self,
        store: TuningStore,
        data_dir: Path,
        config: RunnerConfig | None = None,
        on_finished: Callable[[JobRecord], None] | None = None,
        before_succeeded: Callable[[JobRecord], None] | None = None,
    ) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self.config = config or RunnerConfig()
        self.on_finished = on_finished
        self.before_succeeded = before_succeeded
        self._worker: _Worker | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time (the thread, or a caller's `tick`)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("JobRunner is already started")
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="ember-job-runner", daemon=True)
        self._thread.start()

    def begin_stop(self, timeout_s: float = 10.0) -> None:
        """The first half of `stop`, returning at once: no new job starts, and the worker is asked to pause
        (SIGTERM), so it saves its checkpoint while the server does the rest of its shutdown."""
        self._stop_watching(timeout_s)
        worker = self._worker
        if worker is not None and worker.process is not None and worker.process.poll() is None:
            worker.process.terminate()

    def stop(self, terminate_worker: bool = True, timeout_s: float = 10.0) -> None:
        """Stop watching; by default also stop the worker: it pauses its job (`queued`, resumed at the next
        start) within `RunnerConfig.worker_stop_timeout_s`, or is killed (then the next start re-queues it)."""
        self._stop_watching(timeout_s)
        worker = self._worker
        if terminate_worker and worker is not None and worker.process is not None:
            worker.process.terminate()
            try:
                worker.process.wait(self.config.worker_stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "the training worker of job %s did not stop within %g s; killing it",
                    worker.job_id,
                    self.config.worker_stop_timeout_s,
                )
                worker.process.kill()
                worker.process.wait()
        self._worker = None

    def _stop_watching(self, timeout_s: float) -> None:
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)  # a tick in progress ends first: it may be starting a worker
            self._thread = None

    def wake(self) -> None:
        """Look at the queue now rather than at the next poll (after a create, cancel or resume)."""
        self._wake.set()

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return None if worker is None else worker.pid

    def recover(self) -> None:
        """Adopt `running` jobs whose worker still lives; re-queue the others so they resume from a checkpoint."""
        for job in self.store.list_jobs_with_status(("running",)):
            pid = job.metadata.get("worker_pid")
            if isinstance(pid, int) and _worker_alive(pid, job.id) and self._worker is None:
                self._worker = _Worker(job.id, pid, None)
                logger.info("adopted the running worker %d of job %s", pid, job.id)
            elif job.metadata.get("trained"):
                self._complete(job)
            else:
                self._lost_worker(job, "its worker process is gone (server restart)")

    def tick(self, only_job: str | None = None) -> None:
        """One pass: validate new jobs, reap the worker, start the next queued job (only `only_job` if given)."""
        with self._lock:
            for job in self.store.list_jobs_with_status(("validating_files",)):
                if only_job is None or job.id == only_job:
                    self._validate(job)
            self._reap()
            if self._worker is None:
                self._start_next(only_job)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # a bad tick must not end job processing for the server's lifetime
                logger.exception("fine-tuning job runner tick failed")
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()

    def _validate(self, job: JobRecord) -> None:
        for param, key in (("training_file", "training_path"), ("validation_file", "validation_path")):
            relative = job.metadata.get(key)
            if relative is None:
                continue
            path = self.data_dir / relative
            if not path.is_file():
                self._fail(job, f"the {param.replace('_', ' ')} is missing on disk ({relative})", param)
                return
            report = validate_dataset(path)
            if not report.ok:
                self._fail(job, f"invalid {param.replace('_', ' ')}: {report.summary()}", param)
                return
        if self.store.update_job(job.id, status="queued", expect_status=("validating_files",)):
            self.store.add_job_event(job.id, "Files validated; the job is queued")

    def _fail(self, job: JobRecord, message: str, param: str | None, code: str = "invalid_file") -> None:
        error = {"message": message, "param": param, "code": code}
        changed = self.store.update_job(
            job.id,
            status="failed",
            error=error,
            finished_at=int(time.time()),
            expect_status=(job.status,),
        )
        if changed:
            self.store.add_job_event(job.id, f"Job failed: {message}", level="error")
            self._finished(job.id)

    def _reap(self) -> None:
        worker = self._worker
        if worker is None:
            return
        if worker.process is not None:
            code = worker.process.poll()
            if code is None:
                return
        elif _worker_alive(worker.pid, worker.job_id):
            return
        else:
            code = None
        self._worker = None
        job = self.store.get_job(worker.job_id)
        if job is None:
            return
        if job.status == "running" and job.metadata.get("trained"):
            self._complete(job)
        elif job.status == "running":
            self._lost_worker(job, f"its worker process exited unexpectedly (exit code {code})")
        else:
            self._finished(job.id)

    def _complete(self, job: JobRecord) -> None:
        """A trained job: make its model callable (`before_succeeded`), then mark it succeeded."""
        if self.before_succeeded is not None:
            try:
                self.before_succeeded(job)
            except Exception as error:
                logger.exception("job %s trained but its model cannot be served", job.id)
                self._fail(
                    job, f"the adapter was trained but cannot be served: {error}", None, "serving_failed"
                )
                return
        name = job.metadata.get("fine_tuned_model")
        if self.store.update_job(
            job.id,
            status="succeeded",
            fine_tuned_model=name,
            finished_at=int(time.time()),
            expect_status=("running",),
        ):
            self.store.add_job_event(job.id, f"The job has successfully completed: {name}")
            self._finished(job.id)

    def _lost_worker(self, job: JobRecord, why: str) -> None:
        attempts = int(job.metadata.get("attempts", 1))
        if attempts >= self.config.max_attempts:
            self._fail(job, f"training stopped {attempts} times: {why}", None, "worker_lost")
            return
        metadata = {**job.metadata, "worker_pid": None}
        if self.store.update_job(job.id, status="queued", metadata=metadata, expect_status=("running",)):
            resume = "from its last checkpoint" if job.checkpoint_path else "from the start"
            self.store.add_job_event(
                job.id, f"Job re-queued because {why}; it resumes {resume}", level="warn"
            )

    def _start_next(self, only_job: str | None) -> None:
        for job in self.store.list_jobs_with_status(("queued",)):
            if only_job is not None and job.id != only_job:
                continue
            attempts = int(job.metadata.get("attempts", 0)) + 1
            started_at = job.started_at or int(time.time())
            if not self.store.update_job(
                job.id, status="running", started_at=started_at, expect_status=("queued",)
            ):
                continue  # cancelled between the listing and the claim
            paths = JobPaths(self.data_dir, job.id)
            paths.job_dir.mkdir(parents=True, exist_ok=True)
            command = [
                self.config.python,
                "-m",
                "ember.tuning.jobs",
                "--db",
                str(self.store.db_path),
                "--data-dir",
                str(self.data_dir),
                "--job-id",
                job.id,
            ]
            if self.config.worker_threads is not None:
                command += ["--threads", str(self.config.worker_threads)]
            if self.config.worker_nice:
                command += ["--nice", str(self.config.worker_nice)]
            with open(paths.log, "ab") as log:
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # a Ctrl-C meant for the server does not kill training mid-step
                )
            self.store.update_job(
                job.id,
                metadata={**job.metadata, "worker_pid": process.pid, "attempts": attempts, "trained": None},
            )
            self._worker = _Worker(job.id, process.pid, process)
            self.store.add_job_event(
                job.id, f"Training worker started (pid {process.pid}, attempt {attempts})"
            )
            return

    def _finished(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or self.on_finished is None:
            return
        try:
            self.on_finished(job)
        except Exception:  # the server's hook failing must not stop the runner
            logger.exception("on_finished hook failed for job %s", job_id)


def _worker_alive(pid: int, job_id: str) -> bool:
    """Whether `pid` is a live training worker of `job_id` (its command line names the job: pids get reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.exists():
        return True  # no /proc: trust the pid
    try:
        raw = cmdline.read_bytes()
    except OSError:
        return False
    if not raw:
        return False  # a zombie has an empty command line
    return b"ember.tuning.jobs" in raw and job_id.encode() in raw
