"""Fine-tuning jobs as the JSON the OpenAI and Fireworks APIs return, and Fireworks create bodies as JobRequests.

Both APIs show the same job: OpenAI's `ftjob-...` id is also the last part of the Fireworks job name, so a job
created through one API can be read, cancelled and resumed through the other.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from ember.tuning.job_request import JobRequest, JobRequestError
from ember.tuning.job_service import EventPage, JobCheckpoint, JobPage
from ember.tuning.job_store import JobEvent, JobRecord

FIREWORKS_STATES = {
    "validating_files": "JOB_STATE_VALIDATING",
    "queued": "JOB_STATE_PENDING",
    "running": "JOB_STATE_RUNNING",
    "succeeded": "JOB_STATE_COMPLETED",
    "failed": "JOB_STATE_FAILED",
    "cancelled": "JOB_STATE_CANCELLED",
}


# -- OpenAI ------------------------------------------------------------------------------------------------


def openai_job(job: JobRecord) -> dict[str, Any]:
    hyperparameters = dict(job.hyperparameters)
    if job.method == "dpo":
        method = {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}
        hyperparameters = {
            k: v for k, v in hyperparameters.items() if k != "beta"
        }  # the legacy field's three
    else:
        method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": "ember",
        "result_files": [],
        "status": job.status,
        "validation_file": job.validation_file,
        "training_file": job.training_file,
        "hyperparameters": hyperparameters,
        "method": method,
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "user_provided_suffix": job.suffix,
        "seed": job.seed,
        "estimated_finish": None,
        "integrations": [],
        "metadata": None,
    }


def openai_job_list(page: JobPage) -> dict[str, Any]:
    return {"object": "list", "data": [openai_job(job) for job in page.data], "has_more": page.has_more}


def openai_event(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{event.job_id}-{event.seq}",
        "created_at": event.created_at,
        "level": event.level,
        "message": event.message,
        "data": event.data or {},
        "type": event.type,
    }


def event_cursor(after: str | None) -> int | None:
    """The seq an OpenAI `after` event id points at (ftevent-<job id>-<seq>); ValueError when it is not one."""
    if after is None:
        return None
    seq = after.rsplit("-", 1)[-1]
    if not after.startswith("ftevent-") or not seq.isdigit():
        raise ValueError(f"'after' must be an event id such as ftevent-<job id>-<n>, got {after!r}")
    return int(seq)


def openai_event_list(page: EventPage) -> dict[str, Any]:
    return {"object": "list", "data": [openai_event(e) for e in page.data], "has_more": page.has_more}


def openai_checkpoint(checkpoint: JobCheckpoint) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{checkpoint.job_id}-{checkpoint.step}",
        "created_at": checkpoint.created_at,
        "fine_tuned_model_checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "step_number": checkpoint.step,
        "metrics": {"step": checkpoint.step, **checkpoint.metrics},
        "fine_tuning_job_id": checkpoint.job_id,
    }


def openai_job_request(body: dict[str, Any]) -> JobRequest:
    """POST /v1/fine_tuning/jobs: a supervised job's hyperparameters top-level (legacy) or under
    method.supervised; a DPO job's (with beta) under method.dpo."""
    for required in ("model", "training_file"):
        if not isinstance(body.get(required), str) or not body[required]:
            raise JobRequestError(f"{required} is required and must be a string", required)
    method = object_field(body.get("method"), "method")
    kind = method.get("type", "supervised") if method else "supervised"
    if kind not in ("supervised", "dpo"):
        raise JobRequestError(
            f"method.type {kind!r} is not supported; use 'supervised' or 'dpo'", "method.type"
        )
    other = "dpo" if kind == "supervised" else "supervised"
    if method.get(other) is not None:
        raise JobRequestError(
            f"method.{other} does not apply to a {kind} job (method.type)", f"method.{other}"
        )
    if kind == "dpo" and body.get("hyperparameters") is not None:
        raise JobRequestError(
            "the top-level hyperparameters are for supervised jobs; put a DPO job's under "
            "method.dpo.hyperparameters",
            "hyperparameters",
        )
    chosen = object_field(method.get(kind), f"method.{kind}")
    prefix = f"method.{kind}.hyperparameters"
    hyper = object_field(chosen.get("hyperparameters"), prefix)
    if not hyper and kind == "supervised":
        prefix = "hyperparameters"
        hyper = object_field(body.get("hyperparameters"), prefix)
    beta = None
    if kind == "dpo":
        beta = _auto(hyper.get("beta"), f"{prefix}.beta", float)
        if beta is not None and not (0 < beta < math.inf):
            raise JobRequestError(f"{prefix}.beta must be a positive number, got {beta!r}", f"{prefix}.beta")
    elif "beta" in hyper:
        raise JobRequestError("beta applies to DPO jobs (method.type 'dpo')", f"{prefix}.beta")
    for optional in ("validation_file", "suffix"):
        string_field(body.get(optional), optional)
    return JobRequest(
        model=body["model"],
        training_file=body["training_file"],
        validation_file=body.get("validation_file"),
        suffix=body.get("suffix"),
        seed=number_field(body.get("seed"), "seed", int),
        n_epochs=_auto(hyper.get("n_epochs"), f"{prefix}.n_epochs", int),
        batch_size=_auto(hyper.get("batch_size"), f"{prefix}.batch_size", int),
        learning_rate_multiplier=_auto(
            hyper.get("learning_rate_multiplier"), f"{prefix}.learning_rate_multiplier", float
        ),
        method=kind,
        beta=beta,
    )


# -- Fireworks ---------------------------------------------------------------------------------------------


def fireworks_job_request(account: str, body: dict[str, Any], job_id: str | None = None) -> JobRequest:
    """POST /v1/accounts/{account}/supervisedFineTuningJobs."""
    for required in ("dataset", "baseModel"):
        if not isinstance(body.get(required), str) or not body[required]:
            raise JobRequestError(f"{required} is required and must be a string", required)
    dataset = dataset_name(account, body["dataset"])
    evaluation = string_field(body.get("evaluationDataset"), "evaluationDataset")
    output_model = string_field(body.get("outputModel"), "outputModel") or None
    string_field(body.get("displayName"), "displayName")
    for flag in ("earlyStop", "evalAutoCarveout"):
        if not isinstance(body.get(flag, False), bool):
            raise JobRequestError(f"{flag} must be true or false, got {body[flag]!r}", flag)
    if output_model is not None and "/" not in output_model:
        output_model = f"accounts/{account}/models/{output_model}"
    extra = {
        "fireworks": {
            "account": account,
            "displayName": body.get("displayName"),
            "dataset": dataset,
            "evaluationDataset": None if evaluation is None else dataset_name(account, evaluation),
            "baseModel": body["baseModel"],
            "outputModel": output_model,
            "evalAutoCarveout": bool(body.get("evalAutoCarveout", evaluation is None)),
        }
    }
    return JobRequest(
        model=body["baseModel"],
        training_file=dataset,
        validation_file=None if evaluation is None else dataset_name(account, evaluation),
        # left out: the same dataset-size rule as OpenAI's "auto" (hyperparameters.py)
        n_epochs=number_field(body.get("epochs"), "epochs", int),
        learning_rate=number_field(body.get("learningRate"), "learningRate", float),
        batch_size=number_field(body.get("batchSizeSamples"), "batchSizeSamples", int),
        lora_rank=number_field(body.get("loraRank"), "loraRank", int),
        max_context_length=number_field(body.get("maxContextLength"), "maxContextLength", int),
        batch_tokens=number_field(body.get("batchSize"), "batchSize", int),
        grad_accumulation=or_default(
            number_field(body.get("gradientAccumulationSteps"), "gradientAccumulationSteps", int), 1
        ),
        warmup_steps=or_default(
            number_field(body.get("learningRateWarmupSteps"), "learningRateWarmupSteps", int), 0
        ),
        weight_decay=or_default(
            number_field(body.get("optimizerWeightDecay"), "optimizerWeightDecay", float), 0.0
        ),
        early_stop=bool(body.get("earlyStop", False)),
        job_id=job_id,
        extra_metadata=extra,
    )


def fireworks_job(
    job: JobRecord, latest: dict[str, Any] | None = None, jobs_url: str | None = None
) -> dict[str, Any]:
    """The Fireworks job object. `latest`: the data of its latest metrics event, when known; `jobs_url`: the
    supervisedFineTuningJobs collection URL its metrics file (one JSON line per step) is served under."""
    fields = job.metadata.get("fireworks") or {}
    account = fields.get("account", "ember")
    trainer = job.metadata.get("trainer", {})
    output_model = fields.get("outputModel") or f"accounts/{account}/models/{job.id}"
    return {
        "name": f"accounts/{account}/supervisedFineTuningJobs/{job.id}",
        "displayName": fields.get("displayName") or job.id,
        "createTime": fireworks_timestamp(job.created_at),
        "completedTime": fireworks_timestamp(job.finished_at),
        "state": FIREWORKS_STATES[job.status],
        "status": fireworks_status(job),
        "dataset": fields.get("dataset", job.training_file),
        "evaluationDataset": fields.get("evaluationDataset", job.validation_file),
        "evalAutoCarveout": fields.get("evalAutoCarveout", job.validation_file is None),
        "baseModel": fields.get("baseModel", job.model),
        "outputModel": output_model,
        "epochs": trainer.get("epochs"),
        "learningRate": trainer.get("learning_rate"),
        "loraRank": job.metadata.get("lora", {}).get("rank"),
        "maxContextLength": trainer.get("max_context_length"),
        "batchSize": trainer.get("batch_tokens"),
        "batchSizeSamples": trainer.get("batch_examples"),
        "gradientAccumulationSteps": trainer.get("grad_accumulation"),
        "learningRateWarmupSteps": trainer.get("warmup_steps"),
        "optimizerWeightDecay": trainer.get("weight_decay"),
        "earlyStop": trainer.get("early_stop", False),
        "jobProgress": _job_progress(job, latest),
        "metricsFileSignedUrl": None
        if jobs_url is None or latest is None
        else f"{jobs_url}/{job.id}/metrics",
    }


def fireworks_status(job: JobRecord) -> dict[str, str]:
    """Fireworks' `status` of a job: OK, or the error a failed job records."""
    if not job.error:
        return {"code": "OK", "message": ""}
    return {
        "code": "INTERNAL" if job.error.get("code") == "internal_error" else "INVALID_ARGUMENT",
        "message": job.error.get("message", ""),
    }


def _job_progress(job: JobRecord, latest: dict[str, Any] | None) -> dict[str, Any]:
    progress = 1.0 if job.status == "succeeded" else float((latest or {}).get("progress") or 0.0)
    shown: dict[str, Any] = {"percent": round(100 * progress, 1)}
    if latest is not None:
        shown["epoch"] = max(int(latest.get("epoch", 1)) - 1, 0)  # Fireworks counts epochs from 0
        shown["inputTokens"] = job.trained_tokens
    return shown


def fireworks_output_model(job: JobRecord) -> str:
    """The `accounts/<a>/models/<id>` name a succeeded job's adapter is served under."""
    fields = job.metadata.get("fireworks") or {}
    return fields.get("outputModel") or f"accounts/{fields.get('account', 'ember')}/models/{job.id}"


def dataset_name(account: str, dataset: str) -> str:
    return dataset if dataset.startswith(("accounts/", "file-")) else f"accounts/{account}/datasets/{dataset}"


def fireworks_timestamp(unix: int | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _auto(value: Any, param: str, kind: type) -> Any:
    return None if value == "auto" else number_field(value, param, kind)


def object_field(value: Any, param: str) -> dict[str, Any]:
    """A JSON object field: {} when absent or null, a 400 naming it when it is anything else."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise JobRequestError(f"{param} must be an object, got {value!r}", param)
    return value


def string_field(value: Any, param: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise JobRequestError(f"{param} must be a string, got {value!r}", param)
    return value


def number_field(value: Any, param: str, kind: type) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        expected = "an integer" if kind is int else "a number"
        raise JobRequestError(f"{param} must be {expected} or 'auto', got {value!r}", param)
    return kind(value)
