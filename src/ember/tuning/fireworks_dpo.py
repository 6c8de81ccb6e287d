"""Fireworks' DPO jobs (/v1/accounts/{a}/dpoJobs): create bodies as JobRequests, and jobs as the DpoJob
objects the API returns (`trainingConfig` and `lossConfig` nested, as fireworks-ai's DpoJob type has them).

Fields ember cannot honour on one machine without a network are refused with a 400 naming them rather than
ignored: warmStartFrom, jinjaTemplate (training renders with the base model's own template, as serving does),
a region, cloud storage configs, reservations, Weights & Biases, a curated renderer, and loss methods other
than DPO. Beta comes from lossConfig.dpo.beta (or lossConfig.klBeta, the older field), in Fireworks'
documented range 0 < beta < 0.5.
"""

from __future__ import annotations

import math
from typing import Any

from ember.tuning.job_objects import (
    FIREWORKS_STATES,
    dataset_name,
    fireworks_status,
    fireworks_timestamp,
    number_field,
    object_field,
    or_default,
    string_field,
)
from ember.tuning.job_request import JobRequest, JobRequestError
from ember.tuning.job_store import JobRecord

MAX_FIREWORKS_BETA = 0.5  # exclusive: "Must be > 0 and < 0.5" (fireworks-ai's DpoConfig)
_DPO_METHODS = (None, "METHOD_UNSPECIFIED", "DPO")  # unspecified means DPO for a DPO job
_REFUSED = {
    "awsS3Config": "datasets are read from this server's own storage",
    "azureBlobStorageConfig": "datasets are read from this server's own storage",
    "rendererHuggingFaceRepoId": "training renders with the base model's own chat template",
    "reservationTarget": "this server has no reservations",
}
_REFUSED_TRAINING = {
    "warmStartFrom": "a DPO job starts from a base model (trainingConfig.baseModel)",
    "jinjaTemplate": "training renders with the base model's own chat template, as serving does",
}


def fireworks_dpo_request(account: str, body: dict[str, Any], job_id: str | None = None) -> JobRequest:
    """POST /v1/accounts/{account}/dpoJobs."""
    if not isinstance(body.get("dataset"), str) or not body["dataset"]:
        raise JobRequestError("dataset is required and must be a string", "dataset")
    training = object_field(body.get("trainingConfig"), "trainingConfig")
    loss = object_field(body.get("lossConfig"), "lossConfig")
    _refuse_unsupported(body, training)
    base_model = training.get("baseModel")
    if not isinstance(base_model, str) or not base_model:
        raise JobRequestError(
            "trainingConfig.baseModel is required and must be a string", "trainingConfig.baseModel"
        )
    display_name = string_field(body.get("displayName"), "displayName")
    output_model = string_field(training.get("outputModel"), "trainingConfig.outputModel") or None
    if output_model is not None and "/" not in output_model:
        output_model = f"accounts/{account}/models/{output_model}"
    beta, reference_batch = _dpo_loss(loss)
    dataset = dataset_name(account, body["dataset"])

    def number(name: str, kind: type) -> Any:
        return number_field(training.get(name), f"trainingConfig.{name}", kind)

    return JobRequest(
        model=base_model,
        training_file=dataset,
        n_epochs=number("epochs", int),
        learning_rate=number("learningRate", float),
        batch_size=number("batchSizeSamples", int),
        batch_tokens=number("batchSize", int),
        lora_rank=number("loraRank", int),
        max_context_length=number("maxContextLength", int),
        grad_accumulation=or_default(number("gradientAccumulationSteps", int), 1),
        warmup_steps=or_default(number("learningRateWarmupSteps", int), 0),
        weight_decay=or_default(number("optimizerWeightDecay", float), 0.0),
        job_id=job_id,
        method="dpo",
        beta=beta,
        reference_batch_pairs=reference_batch,
        extra_metadata={
            "fireworks": {
                "account": account,
                "displayName": display_name,
                "dataset": dataset,
                "baseModel": base_model,
                "outputModel": output_model,
            }
        },
    )


def fireworks_dpo_job(job: JobRecord) -> dict[str, Any]:
    """The DpoJob object of a job."""
    fields = job.metadata.get("fireworks") or {}
    account = fields.get("account", "ember")
    trainer = job.metadata.get("trainer", {})
    dpo = job.metadata.get("dpo", {})
    loss_dpo: dict[str, Any] = {"beta": dpo.get("beta")}
    if dpo.get("reference_batch_pairs") is not None:
        loss_dpo["refCacheBatchSize"] = dpo["reference_batch_pairs"]
    return {
        "name": f"accounts/{account}/dpoJobs/{job.id}",
        "displayName": fields.get("displayName") or job.id,
        "createTime": fireworks_timestamp(job.created_at),
        "completedTime": fireworks_timestamp(job.finished_at),
        "dataset": fields.get("dataset", job.training_file),
        "state": FIREWORKS_STATES[job.status],
        "status": fireworks_status(job),
        "createdBy": job.owner or account,
        "trainingConfig": {
            "baseModel": fields.get("baseModel", job.model),
            "outputModel": fields.get("outputModel") or f"accounts/{account}/models/{job.id}",
            "learningRate": trainer.get("learning_rate"),
            "maxContextLength": trainer.get("max_context_length"),
            "loraRank": job.metadata.get("lora", {}).get("rank"),
            "epochs": trainer.get("epochs"),
            "batchSize": trainer.get("batch_tokens"),
            "batchSizeSamples": trainer.get("batch_examples"),
            "gradientAccumulationSteps": trainer.get("grad_accumulation"),
            "learningRateWarmupSteps": trainer.get("warmup_steps"),
            "optimizerWeightDecay": trainer.get("weight_decay"),
        },
        "lossConfig": {"method": "DPO", "dpo": loss_dpo},
    }


def _refuse_unsupported(body: dict[str, Any], training: dict[str, Any]) -> None:
    for name, why in _REFUSED.items():
        if body.get(name):
            raise JobRequestError(f"{name} is not supported: {why}", name)
    if body.get("useReservation"):
        raise JobRequestError(
            "useReservation is not supported: this server has no reservations", "useReservation"
        )
    wandb = object_field(body.get("wandbConfig"), "wandbConfig")
    if wandb.get("enabled"):
        raise JobRequestError(
            "wandbConfig.enabled is not supported: this server logs to the job's events and metrics file",
            "wandbConfig.enabled",
        )
    for name, why in _REFUSED_TRAINING.items():
        if training.get(name):
            raise JobRequestError(f"trainingConfig.{name} is not supported: {why}", f"trainingConfig.{name}")
    region = training.get("region")
    if region not in (None, "REGION_UNSPECIFIED"):
        raise JobRequestError(
            f"trainingConfig.region {region!r} is not supported: jobs train on this server",
            "trainingConfig.region",
        )
    interval = training.get("samplerCheckpointSaveIntervalSteps")
    if interval not in (None, 0):
        raise JobRequestError(
            "trainingConfig.samplerCheckpointSaveIntervalSteps is not supported: checkpoints are saved at the "
            "end of every epoch",
            "trainingConfig.samplerCheckpointSaveIntervalSteps",
        )


def _dpo_loss(loss: dict[str, Any]) -> tuple[float | None, int | None]:
    """(beta, reference pairs per forward) of a lossConfig; None: the default."""
    method = loss.get("method")
    if method not in _DPO_METHODS:
        raise JobRequestError(
            f"lossConfig.method {method!r} is not supported by dpoJobs; use 'DPO'", "lossConfig.method"
        )
    dpo = object_field(loss.get("dpo"), "lossConfig.dpo")
    beta = number_field(dpo.get("beta"), "lossConfig.dpo.beta", float)
    kl_beta = number_field(loss.get("klBeta"), "lossConfig.klBeta", float)
    if beta is not None and kl_beta is not None and beta != kl_beta:
        raise JobRequestError(
            f"lossConfig.dpo.beta ({beta}) and lossConfig.klBeta ({kl_beta}) disagree; give one",
            "lossConfig.klBeta",
        )
    param = "lossConfig.dpo.beta" if beta is not None else "lossConfig.klBeta"
    beta = beta if beta is not None else kl_beta
    if beta is not None and not (0 < beta < MAX_FIREWORKS_BETA and math.isfinite(beta)):
        raise JobRequestError(f"{param} must be > 0 and < {MAX_FIREWORKS_BETA}, got {beta}", param)
    for name in ("refCacheBatchSize", "refCacheConcurrency"):
        value = number_field(dpo.get(name), f"lossConfig.dpo.{name}", int)
        if value is not None and value < 1:
            raise JobRequestError(
                f"lossConfig.dpo.{name} must be at least 1, got {value}", f"lossConfig.dpo.{name}"
            )
    # refCacheConcurrency bounds concurrent reference passes; the worker runs them one at a time.
    return beta, number_field(dpo.get("refCacheBatchSize"), "lossConfig.dpo.refCacheBatchSize", int)
