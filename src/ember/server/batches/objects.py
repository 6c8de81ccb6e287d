"""Batches as the JSON the APIs return: OpenAI's batch object, and Fireworks' batchInferenceJob."""

from __future__ import annotations

from typing import Any

from ember.server.batches.store import BatchRecord
from ember.server.fine_tuning.file_objects import rfc3339

FIREWORKS_STATES = {
    "validating": "JOB_STATE_VALIDATING",
    "in_progress": "JOB_STATE_RUNNING",
    "finalizing": "JOB_STATE_WRITING_RESULTS",
    "completed": "JOB_STATE_COMPLETED",
    "failed": "JOB_STATE_FAILED",
    "expired": "JOB_STATE_EXPIRED",
    "cancelling": "JOB_STATE_CANCELLING",
    "cancelled": "JOB_STATE_CANCELLED",
}


def openai_batch(record: BatchRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "batch",
        "endpoint": record.endpoint,
        "model": record.model,
        "errors": None if not record.errors else {"object": "list", "data": record.errors},
        "input_file_id": record.input_file_id,
        "completion_window": record.completion_window,
        "status": record.status,
        "output_file_id": record.output_file_id,
        "error_file_id": record.error_file_id,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "expires_at": record.expires_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "failed_at": record.failed_at,
        "expired_at": record.expired_at,
        "cancelling_at": record.cancelling_at,
        "cancelled_at": record.cancelled_at,
        "request_counts": {"total": record.total, "completed": record.completed, "failed": record.failed},
        "usage": {
            "input_tokens": record.input_tokens,
            "input_tokens_details": {"cached_tokens": record.cached_tokens},
            "output_tokens": record.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": record.input_tokens + record.output_tokens,
        },
        "metadata": record.metadata,
    }


def fireworks_job(record: BatchRecord) -> dict[str, Any]:
    fields = record.fireworks or {}
    processed = record.completed + record.failed
    status = {"code": "OK", "message": ""}
    if record.errors:
        status = {"code": "INVALID_ARGUMENT", "message": record.errors[0].get("message", "")}
    updated = max(
        t
        for t in (
            record.created_at,
            record.in_progress_at,
            record.finalizing_at,
            record.completed_at,
            record.failed_at,
            record.expired_at,
            record.cancelling_at,
            record.cancelled_at,
        )
        if t is not None
    )
    return {
        "name": fields["name"],
        "displayName": fields.get("displayName") or record.id,
        "createTime": rfc3339(record.created_at),
        "createdBy": record.owner or "",
        "state": FIREWORKS_STATES[record.status],
        "status": status,
        "model": record.model,
        "inputDatasetId": record.input_file_id,
        "outputDatasetId": fields["outputDatasetId"],
        "inferenceParameters": fields.get("inferenceParameters") or {},
        "updateTime": rfc3339(updated),
        "precision": fields.get("precision", "PRECISION_UNSPECIFIED"),
        "jobProgress": {
            "percent": 100 if record.total == 0 else processed * 100 // record.total,
            "epoch": 0,
            "totalInputRequests": record.total,
            "totalProcessedRequests": processed,
            "successfullyProcessedRequests": record.completed,
            "failedRequests": record.failed,
            "outputRows": processed,
            "inputTokens": record.input_tokens,
            "outputTokens": record.output_tokens,
            "cachedInputTokenCount": record.cached_tokens,
        },
        "continuedFromJobName": fields.get("continuedFromJobName") or "",
    }
