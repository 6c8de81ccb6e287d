"""`ember tune create|list|get|cancel|resume|events`: fine-tuning jobs against a local data directory.

`create` registers the JSONL files as fine-tune files (validated as an upload would be), creates the job and,
unless --detach, runs the job queue in this process and follows the job with a progress bar (step, loss,
ETA) until it ends. A server on the same data directory may pick the job up instead; both claim jobs
atomically in the store, so a job runs once and the CLI follows it either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ember.tuning.file_storage import ConflictError, FileStorage, NotFoundError, UploadRejectedError
from ember.tuning.job_objects import openai_checkpoint, openai_job
from ember.tuning.job_request import JobRequest, JobRequestError
from ember.tuning.job_runner import RunnerConfig
from ember.tuning.job_service import FINAL_STATUSES, FineTuningService, tuning_db_path
from ember.tuning.job_store import JobEvent
from ember.tuning.multipart_upload import ReceivedUpload, incoming_upload_path
from ember.tuning.store import TuningStore
from ember.tuning.validation import validate_dataset

DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"


def default_data_dir() -> Path:
    return Path(os.environ.get("EMBER_DATA_DIR") or Path.home() / ".local" / "share" / "ember")


def add_tune_subparser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tune` with its sub-commands to the `ember` parser's subparsers."""
    tune = subparsers.add_parser("tune", help="fine-tune LoRA adapters (local data directory)")
    tune.add_argument(
        "--data-dir", type=Path, default=None, help="default: $EMBER_DATA_DIR or ~/.local/share/ember"
    )
    commands = tune.add_subparsers(dest="tune_command", required=True)

    create = commands.add_parser("create", help="create a job from JSONL files and follow it")
    create.add_argument(
        "--model", default=None, help="GGUF file or HF folder (default: the embedded SmolLM2-135M)"
    )
    create.add_argument(
        "--train",
        type=Path,
        required=True,
        help="training data, one example per line (chat rows; preference rows for --method dpo)",
    )
    create.add_argument(
        "--method",
        choices=("supervised", "dpo"),
        default="supervised",
        help="SFT, or DPO on preference pairs",
    )
    create.add_argument("--beta", type=float, default=None, help="DPO's beta (default: 0.1)")
    create.add_argument("--eval", type=Path, default=None, help="evaluation data (default: a carve-out)")
    create.add_argument("--epochs", type=int, default=None)
    create.add_argument("--learning-rate", type=float, default=None)
    create.add_argument("--lora-rank", type=int, default=None)
    create.add_argument("--lora-alpha", type=float, default=None)
    create.add_argument("--batch-size", type=int, default=None, help="examples per step (default: auto)")
    create.add_argument("--batch-tokens", type=int, default=None, help="tokens per packed micro-batch")
    create.add_argument("--max-context-length", type=int, default=None)
    create.add_argument("--early-stop", action="store_true")
    create.add_argument("--suffix", default=None, help="part of the fine-tuned model's name")
    create.add_argument("--seed", type=int, default=None)
    create.add_argument("--detach", action="store_true", help="create the job and return (a server runs it)")

    commands.add_parser("list", help="list jobs, newest first").add_argument("--limit", type=int, default=20)
    for name, text in (("get", "show a job as JSON"), ("cancel", "cancel a job"), ("resume", "resume a job")):
        commands.add_parser(name, help=text).add_argument("job_id")
    events = commands.add_parser("events", help="print a job's events (with --follow: until it ends)")
    events.add_argument("job_id")
    events.add_argument("--follow", action="store_true", help="show a progress bar until the job ends")
    commands.add_parser("checkpoints", help="list a job's checkpoints").add_argument("job_id")


def run_tune(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the parsed `tune` command; returns the process exit code."""
    out = out or sys.stdout
    data_dir = Path(args.data_dir or default_data_dir())
    model_path = getattr(args, "model", None)
    model_name = DEFAULT_BASE_MODEL if model_path is None else _model_name(model_path)
    service = FineTuningService(
        TuningStore(tuning_db_path(data_dir)),
        data_dir,
        {model_name: model_path},
        runner_config=RunnerConfig(poll_interval_s=0.5),
    )
    try:
        return _dispatch(args, service, data_dir, model_name, out)
    except (NotFoundError, ConflictError, JobRequestError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _dispatch(
    args: argparse.Namespace, service: FineTuningService, data_dir: Path, model_name: str, out: TextIO
) -> int:
    command = args.tune_command
    if command == "create":
        return _create(args, service, data_dir, model_name, out)
    if command == "list":
        page = service.list_jobs(limit=args.limit)
        out.write(f"{'ID':<32} {'STATUS':<17} {'MODEL':<28} FINE-TUNED MODEL\n")
        for job in page.data:
            out.write(f"{job.id:<32} {job.status:<17} {job.model[:28]:<28} {job.fine_tuned_model or '-'}\n")
        return 0
    if command == "get":
        out.write(json.dumps(openai_job(service.get_job(args.job_id)), indent=2) + "\n")
        return 0
    if command == "cancel":
        out.write(f"{service.cancel_job(args.job_id).id} cancelled\n")
        return 0
    if command == "resume":
        out.write(f"{service.resume_job(args.job_id).id} queued again\n")
        return 0
    if command == "checkpoints":
        for checkpoint in service.list_checkpoints(args.job_id):
            out.write(json.dumps(openai_checkpoint(checkpoint)) + "\n")
        return 0
    if command == "events":
        service.get_job(args.job_id)
        if args.follow:
            return _follow(service, args.job_id, out, run_queue=False)
        for event in service.events_since(args.job_id, limit=10_000):
            out.write(_event_line(event) + "\n")
        return 0
    raise ValueError(f"unknown tune command {command!r}")


def _create(
    args: argparse.Namespace, service: FineTuningService, data_dir: Path, model_name: str, out: TextIO
) -> int:
    storage = FileStorage(data_dir, service.store, lambda path: validate_dataset(path))
    try:
        training = _register(storage, args.train)
        validation = None if args.eval is None else _register(storage, args.eval)
    except UploadRejectedError as rejected:
        print(f"error: {rejected}", file=sys.stderr)
        for problem in rejected.report.problems[:20]:
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.beta is not None and args.method != "dpo":
        raise ValueError("--beta applies to DPO jobs (--method dpo)")
    job = service.create_job(
        JobRequest(
            model=model_name,
            training_file=training,
            validation_file=validation,
            suffix=args.suffix,
            seed=args.seed,
            n_epochs=args.epochs,
            learning_rate=args.learning_rate,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            batch_size=args.batch_size,
            batch_tokens=args.batch_tokens,
            max_context_length=args.max_context_length,
            early_stop=args.early_stop,
            method=args.method,
            beta=args.beta,
        )
    )
    out.write(f"created {job.id} (training file {training})\n")
    if args.detach:
        return 0
    return _follow(service, job.id, out, run_queue=True)


def _register(storage: FileStorage, path: Path) -> str:
    """Copy a local JSONL file into the data directory as a validated fine-tune file; returns its id."""
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    incoming = incoming_upload_path(storage.incoming_dir)
    shutil.copyfile(path, incoming)
    upload = ReceivedUpload(incoming, path.name, incoming.stat().st_size, {})
    return storage.create_file(upload, "fine-tune").id


def _follow(service: FineTuningService, job_id: str, out: TextIO, run_queue: bool) -> int:
    """Print events as they come, with a one-line progress bar for metrics, until the job ends."""
    if run_queue:
        service.runner.recover()
    seen = 0
    origin: tuple[int, float] | None = None  # (time, progress) of the first metrics event: the ETA's base
    bar_shown = False
    try:
        while True:
            if run_queue:
                service.runner.tick(only_job=job_id)
            for event in service.events_since(job_id, after_seq=seen):
                seen = event.seq
                if event.type == "metrics" and event.data:
                    progress = float(event.data.get("progress") or 0.0)
                    origin = origin or (event.created_at, progress)
                    eta = None
                    if progress > origin[1]:
                        eta = (event.created_at - origin[0]) / (progress - origin[1]) * (1 - progress)
                    out.write("\r" + _progress_bar(event.data, eta))
                    bar_shown = True
                else:
                    out.write(("\n" if bar_shown else "") + _event_line(event) + "\n")
                    bar_shown = False
                out.flush()
            job = service.get_job(job_id)
            if job.status in FINAL_STATUSES and service.runner.worker_pid is None:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        out.write(
            f"\nstopped {job_id}; it resumes from its last checkpoint when a runner (server or CLI) starts\n"
        )
        service.runner.stop()
        return 130
    if bar_shown:
        out.write("\n")
    out.write(f"{job.id} {job.status}" + (f": {job.fine_tuned_model}" if job.fine_tuned_model else "") + "\n")
    if job.error:
        out.write(f"error: {job.error.get('message')}\n")
    return 0 if job.status == "succeeded" else 1


def _progress_bar(data: dict[str, Any], eta_s: float | None, width: int = 30) -> str:
    """`[#####.....]  50.0% step 2/4 loss 1.2345 acc 0.61 valid 1.3 ETA 0:42` (ETA --:-- until two steps are in)."""
    progress = float(data.get("progress") or 0.0)
    filled = int(round(width * progress))
    text = (
        f"[{'#' * filled}{'.' * (width - filled)}] {100 * progress:5.1f}% "
        f"step {data.get('step')}/{data.get('total_steps')} loss {float(data.get('train_loss') or 0.0):.4f}"
    )
    if data.get("train_mean_token_accuracy") is not None:
        text += f" acc {float(data['train_mean_token_accuracy']):.2f}"
    if data.get("train_reward_accuracy") is not None:  # a DPO step
        text += f" reward acc {float(data['train_reward_accuracy']):.2f}"
    if data.get("valid_loss") is not None:
        text += f" valid {float(data['valid_loss']):.4f}"
    if eta_s is None:
        return text + " ETA --:--"
    return text + f" ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}"


def _event_line(event: JobEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.created_at))
    return f"{stamp} {event.level:<5} {event.message}"


def _model_name(path: str) -> str:
    from ember.models.loader import model_name_for

    return model_name_for(path)
