"""What a stopped server leaves on disk: a `.part` upload of a killed server is removed at the next start-up,
and a training job whose server was stopped with SIGTERM is paused (queued, with a checkpoint of the step it
was at, its attempt given back) and resumes from that step at the next start."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fine_tuning_server import start_tuning_server, write_tiny_model
from serve_process import HANG_GUARD_S, ServeProcess, start_serve

from ember.engine.testing import write_tiny_hf_folder
from ember.tuning.file_storage import FileStorage
from ember.tuning.job_service import tuning_db_path
from ember.tuning.job_store import JobEvent
from ember.tuning.multipart_upload import incoming_upload_path, upload_writer_gone
from ember.tuning.store import TuningStore
from ember.tuning.validation import validate_dataset

pytestmark = pytest.mark.timeout(900)  # a hang guard only: every wait below is on a state

ROW = b'{"messages": [{"role": "user", "content": "Tell me a fact."}, {"role": "assistant", "content": "Noon."}]}\n'


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def part_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "incoming").glob("*.part"))


def test_a_server_killed_mid_upload_leaves_no_part_file_after_its_restart(tmp_path: Path) -> None:
    serve = start_serve(tmp_path, "--kv-cache-gib", "0.1")
    release = threading.Event()
    boundary = "shutdownboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        yield ROW * 100
        release.wait(HANG_GUARD_S)  # the rest of the body never comes: the server dies first

    def upload() -> None:
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        try:
            httpx.post(f"{serve.url}/v1/files", content=body(), headers=headers, timeout=HANG_GUARD_S)
        except httpx.HTTPError:
            pass  # the server was killed under it

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    try:
        wait_until(lambda: part_files(serve.data_dir), "the upload's .part file")
        serve.process.send_signal(signal.SIGKILL)
        serve.wait()
    finally:
        release.set()
        serve.kill()
    sender.join(HANG_GUARD_S)
    left = part_files(serve.data_dir)
    assert len(left) == 1 and upload_writer_gone(left[0]) is True

    restarted = start_serve(tmp_path, "--kv-cache-gib", "0.1", name="restarted", data_dir=serve.data_dir)
    try:
        assert part_files(serve.data_dir) == []
        assert httpx.get(f"{restarted.url}/v1/files", timeout=30).json()["data"] == []
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.wait() == 0


def test_an_upload_cut_off_mid_body_leaves_no_file_and_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_tuning_server(write_tiny_model(tmp_path / "tiny-llama"), tmp_path / "data")
    uvicorn_log = logging.getLogger("uvicorn.error")  # does not propagate to the root logger caplog reads
    uvicorn_log.addHandler(caplog.handler)
    boundary = "cutoff"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="train.jsonl"\r\n\r\n'
        ).encode()
        yield ROW * 100
        raise ConnectionAbortedError("the client gives up mid-upload")

    try:
        caplog.set_level(logging.INFO)
        headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
        with pytest.raises(ConnectionAbortedError):
            httpx.post(f"{server.v1}/files", content=body(), headers=headers, timeout=HANG_GUARD_S)
        wait_until(lambda: not server._server.server_state.tasks, "the server to finish the request")
        assert part_files(server.data_dir) == []
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], [r.getMessage() for r in errors]
        assert httpx.get(f"{server.v1}/files", timeout=30).json()["data"] == []
    finally:
        uvicorn_log.removeHandler(caplog.handler)
        server.stop()


def test_start_up_removes_part_files_by_their_writer_and_the_rest_by_age(tmp_path: Path) -> None:
    store = TuningStore(tuning_db_path(tmp_path))
    storage = FileStorage(tmp_path, store, lambda path: validate_dataset(path))
    incoming = storage.incoming_dir
    # A writer that has exited: a real process that named a .part file, then ended.
    named = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from ember.tuning.multipart_upload import incoming_upload_path; "
         "p = incoming_upload_path(Path(sys.argv[1])); p.write_bytes(b'x'); print(p)", str(incoming)],
        capture_output=True, text=True, check=True, timeout=HANG_GUARD_S,
    )  # fmt: skip
    dead_writer = Path(named.stdout.strip())
    live_writer = incoming_upload_path(incoming)  # this process: an upload in flight
    live_writer.write_bytes(b"x")
    unnamed_fresh = incoming / "upload-0123456789abcdef.part"  # an older name: only its age can tell
    unnamed_stale = incoming / "upload-fedcba9876543210.part"
    for path in (unnamed_fresh, unnamed_stale):
        path.write_bytes(b"x")
    long_ago = time.time() - 7200
    os.utime(unnamed_stale, (long_ago, long_ago))

    assert upload_writer_gone(dead_writer) is True and upload_writer_gone(live_writer) is False
    assert upload_writer_gone(unnamed_fresh) is None
    assert sorted(storage.remove_orphans()) == sorted([dead_writer, unnamed_stale])
    assert live_writer.exists() and unnamed_fresh.exists()


TINY = "tiny-llama"


def job_events(serve: ServeProcess, job_id: str) -> list[JobEvent]:
    """Every event of the job, oldest first, read from the server's SQLite file (as `ember tune` does)."""
    return TuningStore(tuning_db_path(serve.data_dir)).list_job_events(job_id, after_seq=0, limit=10_000)


def metric_steps(events: list[JobEvent]) -> list[int]:
    return [int(e.data["step"]) for e in events if e.type == "metrics" and e.data is not None]


def test_sigterm_pauses_a_training_job_which_resumes_from_that_step(tmp_path: Path) -> None:
    model = write_tiny_hf_folder(tmp_path / TINY, max_position_embeddings=2048)
    args = ("--model", str(model), "--served-model-name", TINY, "--kv-cache-gib", "0.05")
    serve = start_serve(tmp_path, *args)
    try:
        files = {"file": ("train.jsonl", ROW * 4, "application/jsonl")}
        file_id = httpx.post(f"{serve.url}/v1/files", files=files, data={"purpose": "fine-tune"}, timeout=60)
        assert file_id.status_code == 200, file_id.text
        created = httpx.post(
            f"{serve.url}/v1/fine_tuning/jobs",
            json={
                "model": TINY,
                "training_file": file_id.json()["id"],
                "seed": 5,
                "hyperparameters": {"n_epochs": 400, "learning_rate_multiplier": 100},
            },
            timeout=60,
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        wait_until(lambda: len(metric_steps(job_events(serve, job_id))) >= 2, "two training steps")
        serve.process.send_signal(signal.SIGTERM)
        assert serve.wait() == 0
        assert "Traceback" not in serve.log_text()
    finally:
        serve.kill()

    job = TuningStore(tuning_db_path(serve.data_dir)).get_job(job_id)
    assert job is not None and job.status == "queued", job
    assert job.metadata["attempts"] == 0 and job.metadata["worker_pid"] is None
    assert job.checkpoint_path is not None
    paused_at = int(Path(job.checkpoint_path).name.removeprefix("step-"))

    restarted = start_serve(tmp_path, *args, name="restarted", data_dir=serve.data_dir)
    try:
        wait_until(
            lambda: paused_at + 1 in metric_steps(job_events(restarted, job_id)), "the resumed run's step"
        )
        events = job_events(restarted, job_id)
        messages = [e.message for e in events]
        paused = [m for m in messages if m.startswith("Training paused")]
        assert paused == [
            f"Training paused: the worker received SIGTERM (the server is shutting down); the job is queued "
            f"and resumes from checkpoint step-{paused_at:06d}"
        ]
        assert any(m.startswith(f"Resumed from checkpoint at step {paused_at} ") for m in messages)
        before = metric_steps(events[: messages.index(paused[0])])
        assert before == list(
            range(1, paused_at + 1)
        )  # every step done before the pause is in the checkpoint
        assert sum("attempt 1)" in m for m in messages) == 2  # the pause did not use up an attempt
        httpx.post(f"{restarted.url}/v1/fine_tuning/jobs/{job_id}/cancel", timeout=30)
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        assert restarted.wait() == 0
