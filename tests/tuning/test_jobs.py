"""Fine-tuning jobs end to end on a real SQLite file with real worker processes and a tiny random model on disk:
queued -> running -> succeeded, cancel within a few steps, and a job whose worker died resumes from its
checkpoint, also across a server restart."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tuning_helpers import good_row, write_jsonl

from ember.engine.testing import write_tiny_hf_folder
from ember.tuning.cli_tune import add_tune_subparser, run_tune
from ember.tuning.file_storage import ConflictError, FileStorage
from ember.tuning.job_objects import (
    fireworks_job,
    fireworks_job_request,
    openai_event,
    openai_job,
    openai_job_request,
)
from ember.tuning.job_request import JobRequest, JobRequestError
from ember.tuning.job_runner import RunnerConfig
from ember.tuning.job_service import FineTuningService, tuning_db_path
from ember.tuning.job_store import JobRecord
from ember.tuning.multipart_upload import ReceivedUpload
from ember.tuning.store import TuningStore
from ember.tuning.validation import validate_dataset

pytestmark = pytest.mark.timeout(300)  # a hang guard only: the waits below poll states


def write_tiny_model(folder: Path) -> Path:
    return write_tiny_hf_folder(folder, max_position_embeddings=512)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


class Server:
    """What a server process holds: the store, file storage and the job service with its runner."""

    def __init__(self, data_dir: Path, model_dir: Path) -> None:
        self.data_dir = data_dir
        self.store = TuningStore(tuning_db_path(data_dir))
        self.files = FileStorage(data_dir, self.store, lambda path: validate_dataset(path))
        self.succeeded: list[JobRecord] = []
        self.frozen_pids: list[int] = []  # workers a test stopped with SIGSTOP
        self.service = FineTuningService(
            self.store,
            data_dir,
            {"tiny-llama": str(model_dir)},
            runner_config=RunnerConfig(poll_interval_s=0.1, worker_threads=1, worker_nice=0),
            on_succeeded=self.succeeded.append,
        )
        self.service.start()

    def upload(self, rows: list[dict[str, object]]) -> str:
        path = write_jsonl(self.files.incoming_dir / "upload-test.part", rows)
        return self.files.create_file(
            ReceivedUpload(path, "train.jsonl", path.stat().st_size, {}), "fine-tune"
        ).id

    def create(self, epochs: int, **fields: object) -> JobRecord:
        rows = [good_row(f"Tell me fact {i}.", "Purple elephants dance at noon.") for i in range(4)]
        request = JobRequest(
            model="tiny-llama",
            training_file=self.upload(rows),
            suffix="facts",
            seed=5,
            n_epochs=epochs,
            learning_rate=2e-2,
            max_context_length=128,
            batch_tokens=512,
            **{"batch_size": 4, **fields},  # type: ignore[arg-type]  # all 4 rows: one step per epoch
        )
        return self.service.create_job(request)


@pytest.fixture
def servers(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[[], Server]]:
    started: list[Server] = []

    def start() -> Server:
        server = Server(tmp_path / "data", tiny_model_dir)
        started.append(server)
        return server

    yield start
    for server in started:
        for pid in server.frozen_pids:  # a failed test may leave a worker stopped, deaf to stop()'s SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.service.stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 240.0, server: Server | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            history = ""
            if server is not None:
                for job in server.service.list_jobs().data:
                    events = server.service.events_since(job.id, limit=10_000)
                    history += f"\n{job.id} {job.status}: " + "; ".join(e.message for e in events[-15:])
            raise AssertionError("timed out waiting for the job" + history)
        time.sleep(0.05)


def metrics_steps(server: Server, job_id: str) -> list[int]:
    return [e.data["step"] for e in server.service.events_since(job_id, limit=10_000) if e.type == "metrics"]


def test_job_runs_to_succeeded_in_a_worker_process(servers: Callable[[], Server]) -> None:
    server = servers()
    job = server.create(epochs=6)
    assert job.status == "validating_files" and job.fine_tuned_model is None
    wait_for(lambda: server.service.get_job(job.id).status in ("succeeded", "failed"))
    done = server.service.get_job(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-llama:facts:{job.id}"
    assert done.trained_tokens and done.started_at and done.finished_at

    messages = [e.message for e in server.service.events_since(job.id, limit=10_000)]
    assert any("queued" in m for m in messages) and any("worker started" in m for m in messages)
    metrics = [e.data for e in server.service.events_since(job.id, limit=10_000) if e.type == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"] and metrics[-1]["progress"] == 1.0

    adapter = server.service.adapter_path(done)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    wait_for(lambda: len(server.succeeded) == 1)
    assert server.succeeded[0].id == job.id
    checkpoints = server.service.list_checkpoints(job.id)
    epoch_ends = {
        max(m["step"] for m in metrics if m["epoch"] == epoch) for epoch in {m["epoch"] for m in metrics}
    }
    assert [c.step for c in checkpoints] == sorted(epoch_ends, reverse=True)[: len(checkpoints)]
    assert (
        checkpoints[0].fine_tuned_model_checkpoint
        == f"{done.fine_tuned_model}:ckpt-step-{checkpoints[0].step}"
    )

    page = server.service.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more and page.data[0].seq > page.data[1].seq
    assert (
        openai_job(done)["status"] == "succeeded"
        and openai_event(page.data[0])["object"] == "fine_tuning.job.event"
    )
    assert fireworks_job(done)["state"] == "JOB_STATE_COMPLETED"
    with pytest.raises(ConflictError):
        server.service.cancel_job(job.id)


EPOCHS = 24  # one step each: seconds of training after the first checkpoint, for the tests that interrupt it


def frozen_after_first_checkpoint(server: Server, job_id: str) -> int:
    """Waits for the job's first checkpoint, then stops its worker with SIGSTOP, so what the test checks next
    holds for a job that is certainly still running, however fast this machine trains. Returns the pid. The
    job is read just before the stop, never while the worker is stopped: a worker stopped while closing the
    last SQLite connection holds WAL's exclusive lock, and every reader would wait on it. (A step takes far
    longer than the microseconds between the read and the stop.)"""
    wait_for(lambda: server.service.get_job(job_id).checkpoint_path is not None)
    pid = server.service.runner.worker_pid
    assert pid is not None
    job = server.service.get_job(job_id)
    steps = metrics_steps(server, job_id)
    os.kill(pid, signal.SIGSTOP)
    server.frozen_pids.append(pid)
    assert job.status == "running", f"the job ended before the test could interrupt it: {job.status}"
    assert max(steps) < EPOCHS
    return pid


def test_cancel_stops_the_worker_within_a_few_steps(servers: Callable[[], Server]) -> None:
    server = servers()
    job = server.create(epochs=400)
    wait_for(lambda: len(metrics_steps(server, job.id)) >= 3)
    server.service.cancel_job(job.id)
    at_cancel = max(metrics_steps(server, job.id))
    wait_for(lambda: server.service.runner.worker_pid is None)
    assert server.service.get_job(job.id).status == "cancelled"
    assert max(metrics_steps(server, job.id)) <= at_cancel + 2
    assert server.succeeded == []

    resumed = server.service.resume_job(job.id)
    assert resumed.status == "queued"
    wait_for(lambda: server.service.get_job(job.id).status == "running")
    server.service.cancel_job(job.id)


def test_killed_worker_resumes_from_its_checkpoint(servers: Callable[[], Server]) -> None:
    server = servers()
    job = server.create(epochs=EPOCHS)
    pid = frozen_after_first_checkpoint(server, job.id)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: server.service.get_job(job.id).status in ("succeeded", "failed"), server=server)
    done = server.service.get_job(job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in server.service.events_since(job.id, limit=10_000)]
    assert any("re-queued" in m for m in messages)
    assert any(m.startswith("Resumed from checkpoint at step") for m in messages)
    steps = metrics_steps(server, job.id)
    assert max(steps) == EPOCHS  # one step per epoch, and every step of the run happened
    assert set(steps) == set(range(1, EPOCHS + 1))


def test_server_restart_resumes_a_running_job(servers: Callable[[], Server]) -> None:
    first = servers()
    job = first.create(epochs=EPOCHS)
    pid = frozen_after_first_checkpoint(first, job.id)
    os.kill(pid, signal.SIGCONT)  # a stopped process would not act on the SIGTERM of stop() below
    first.service.stop()  # SIGTERM: the worker saves the step it is at and puts the job back in the queue
    paused = first.service.get_job(job.id)
    assert paused.status == "queued" and paused.metadata["attempts"] == 0
    paused_at = max(metrics_steps(first, job.id))
    assert paused.checkpoint_path is not None and paused.checkpoint_path.endswith(f"step-{paused_at:06d}")

    second = servers()  # the queue picks it up again
    wait_for(lambda: second.service.get_job(job.id).status in ("succeeded", "failed"))
    assert second.service.get_job(job.id).status == "succeeded"
    wait_for(lambda: len(second.succeeded) == 1)  # the runner reaps the worker, then calls the hook
    assert [j.id for j in second.succeeded] == [job.id]
    messages = [e.message for e in second.service.events_since(job.id, limit=10_000)]
    assert any(m.startswith("Training paused: the worker received SIGTERM") for m in messages)
    assert any(m.startswith(f"Resumed from checkpoint at step {paused_at} ") for m in messages)
    assert metrics_steps(second, job.id) == list(range(1, EPOCHS + 1))  # no step lost, none done twice


def test_restarted_server_adopts_a_worker_that_outlived_it(servers: Callable[[], Server]) -> None:
    first = servers()
    job = first.create(epochs=EPOCHS)
    pid = frozen_after_first_checkpoint(first, job.id)
    # Thawed before any write: a stopped worker may hold the database's write lock. The job still has most of
    # its steps to go while one server stops and the next starts.
    os.kill(pid, signal.SIGCONT)
    first.service.runner.stop(terminate_worker=False)  # the server dies; its worker lives on
    second = servers()
    assert second.service.runner.worker_pid == pid  # adopted, not re-queued
    wait_for(lambda: len(second.succeeded) == 1, server=second)
    messages = [e.message for e in second.service.events_since(job.id, limit=10_000)]
    assert not any("re-queued" in m for m in messages)
    assert metrics_steps(second, job.id) == list(range(1, EPOCHS + 1))


def test_failed_job_records_why(servers: Callable[[], Server]) -> None:
    server = servers()
    rows = [
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "y", "reasoning_content": "z"},
            ]
        }
    ] * 3
    job = server.service.create_job(
        JobRequest(
            model="tiny-llama", training_file=server.upload(rows), max_context_length=128, batch_tokens=512
        )
    )
    wait_for(lambda: server.service.get_job(job.id).status in ("succeeded", "failed"))
    failed = server.service.get_job(job.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error["param"] == "training_file"
    assert "reasoning_content" in failed.error["message"]
    assert fireworks_job(failed)["status"]["code"] == "INVALID_ARGUMENT"


def test_requests_are_checked_before_a_job_exists(servers: Callable[[], Server]) -> None:
    server = servers()
    with pytest.raises(JobRequestError, match="unknown base model") as error:
        server.service.create_job(JobRequest(model="gpt-4o", training_file="file-x"))
    assert error.value.param == "model"
    with pytest.raises(JobRequestError, match="no file") as error:
        server.service.create_job(JobRequest(model="tiny-llama", training_file="file-missing"))
    assert error.value.param == "training_file"
    training = server.upload([good_row()] * 3)
    with pytest.raises(JobRequestError, match="hyperparameters"):
        server.service.create_job(JobRequest(model="tiny-llama", training_file=training, lora_rank=-1))
    assert server.service.list_jobs().data == []

    openai = openai_job_request(
        {
            "model": "tiny-llama",
            "training_file": training,
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}},
            },
        }
    )
    assert openai.n_epochs == 2 and openai.batch_size is None
    fireworks = fireworks_job_request(
        "acme",
        {
            "dataset": "my-data",
            "baseModel": "accounts/fireworks/models/tiny-llama",
            "loraRank": 4,
            "epochs": 2,
        },
    )
    assert fireworks.training_file == "accounts/acme/datasets/my-data" and fireworks.lora_rank == 4


def test_cli_creates_follows_and_lists_a_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    parser = argparse.ArgumentParser(prog="ember")
    add_tune_subparser(parser.add_subparsers(dest="command", required=True))
    train = write_jsonl(
        tmp_path / "train.jsonl", [good_row(f"Fact {i}?", "Purple elephants.") for i in range(4)]
    )
    data_dir = ["tune", "--data-dir", str(tmp_path / "data")]

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = run_tune(parser.parse_args([*data_dir, *argv]), out)
        return code, out.getvalue()

    code, output = run(
        "create", "--model", str(tiny_model_dir), "--train", str(train), "--epochs", "3",
        "--learning-rate", "0.02", "--max-context-length", "128", "--batch-tokens", "512", "--batch-size", "4",
        "--suffix", "cli",
    )  # fmt: skip
    assert code == 0, output
    assert "step 3/3" in output and "100.0%" in output and "ETA" in output
    job_id = output.split()[1]
    assert output.rstrip().endswith(f"{job_id} succeeded: ft:tiny-llama:cli:{job_id}")

    code, listing = run("list")
    assert code == 0 and job_id in listing and "succeeded" in listing
    code, shown = run("get", job_id)
    assert code == 0 and json.loads(shown)["fine_tuned_model"] == f"ft:tiny-llama:cli:{job_id}"
    code, events = run("events", job_id)
    assert code == 0 and "Step 3/3: training loss=" in events
    code, _ = run("cancel", job_id)
    assert code == 1  # a finished job cannot be cancelled
