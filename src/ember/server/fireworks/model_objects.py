"""Fireworks' Model and DeployedModel objects (what the fireworks-ai SDK's `Model` and `DeployedModel` types
read) for what ember serves: its base model (HF_BASE_MODEL) and its LoRA adapters (HF_PEFT_ADDON), each served
on ember's one deployment, the server itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ember.lora.manager import LoraInfo
from ember.models.config import ModelConfig
from ember.server.common.served_models import ServedAdapter
from ember.server.fine_tuning.file_objects import rfc3339

MODEL_FIELDS = frozenset(
    {
        "name", "displayName", "description", "createTime", "updateTime", "state", "status", "kind",
        "contextLength", "baseModelDetails", "peftDetails", "conversationConfig", "tunable", "supportsLora",
        "supportsServerless", "supportsImageInput", "supportsTools", "public", "fineTuningJob",
        "deployedModelRefs", "importedFrom", "huggingFaceUrl", "githubUrl", "calibrated", "cluster",
        "defaultDraftModel", "defaultDraftTokenCount", "defaultSamplingParams", "deprecationDate",
        "rlTunable", "snapshotType", "supportedPrecisions", "supportedPrecisionsWithCalibration",
        "teftDetails", "trainingContextLength", "useHfApplyChatTemplate",
    }
)  # fmt: skip
DEPLOYED_MODEL_FIELDS = frozenset(
    {
        "name", "displayName", "description", "createTime", "updateTime", "model", "deployment", "default",
        "state", "serverless", "status", "public",
    }
)  # fmt: skip


@dataclass(frozen=True)
class BaseModelFacts:
    """What the Model object of the served base model says about it."""

    name: str  # accounts/<account>/models/<model name>
    display_name: str
    created: float
    context_length: int
    config: ModelConfig
    source_format: str  # "gguf" | "safetensors"
    chat_template: str | None
    tunable: bool  # fine-tuning is on (the server has a data directory)


@dataclass(frozen=True)
class DeploymentLabels:
    """What a client set on a deployed LoRA (lora.load / lora.update); ember keeps it while it is loaded."""

    display_name: str | None = None
    description: str | None = None
    updated: float | None = None


def parameter_count(config: ModelConfig) -> int:
    """The decoder's parameters as its checkpoint stores them (embeddings, the layers' projections and norms, the
    final norm, and an untied output matrix)."""
    hidden, q_width, kv_width = (
        config.hidden_size,
        config.num_heads * config.head_dim,
        config.num_kv_heads * config.head_dim,
    )
    attention = hidden * q_width * 2 + hidden * kv_width * 2
    if config.attention_bias:
        attention += q_width + 2 * kv_width
    if config.qk_norm:
        attention += 2 * config.head_dim
    layer = attention + 3 * hidden * config.intermediate_size + 2 * hidden
    embeddings = config.vocab_size * hidden * (1 if config.tie_word_embeddings else 2)
    return embeddings + config.num_layers * layer + hidden


def base_model_object(facts: BaseModelFacts) -> dict[str, Any]:
    details: dict[str, Any] = {
        "modelType": facts.config.architecture,
        "parameterCount": str(parameter_count(facts.config)),
        "moe": False,
        "tunable": facts.tunable,
        "worldSize": 1,
    }
    if facts.source_format == "safetensors":
        details["checkpointFormat"] = "HUGGINGFACE"
    model: dict[str, Any] = {
        "name": facts.name,
        "displayName": facts.display_name,
        "createTime": rfc3339(facts.created),
        "updateTime": rfc3339(facts.created),
        "state": "READY",
        "status": {"code": "OK", "message": ""},
        "kind": "HF_BASE_MODEL",
        "contextLength": facts.context_length,
        "baseModelDetails": details,
        "tunable": facts.tunable,
        "supportsLora": True,
        "supportsServerless": True,  # served as it is, no deployment to create
        "public": True,  # every key of the server may use it
    }
    if facts.chat_template:
        model["conversationConfig"] = {"style": "jinja", "template": facts.chat_template}
    return model


def adapter_model_object(
    name: str,
    adapter: ServedAdapter,
    info: LoraInfo | None,
    base_model: str,
    context_length: int,
    labels: DeploymentLabels,
    fine_tuning_job: str | None,
) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": name,
        "displayName": labels.display_name or adapter.lora_id,
        "createTime": rfc3339(adapter.created),
        "updateTime": rfc3339(labels.updated or adapter.created),
        "state": "READY",
        "status": {"code": "OK", "message": ""},
        "kind": "HF_PEFT_ADDON",
        "contextLength": context_length,
        "peftDetails": {
            "baseModel": base_model,
            "r": 0 if info is None else info.rank,
            "targetModules": [] if info is None else list(info.target_modules),
        },
        "tunable": False,
        "supportsLora": False,
        "supportsServerless": False,
        "public": adapter.owner is None,
    }
    if labels.description is not None:
        model["description"] = labels.description
    if fine_tuning_job is not None:
        model["fineTuningJob"] = fine_tuning_job
    return model


def deployed_model_object(
    account: str, model_name: str, adapter: ServedAdapter, deployment: str, labels: DeploymentLabels
) -> dict[str, Any]:
    deployed_id = model_name.rsplit("/", 1)[-1]
    deployed: dict[str, Any] = {
        "name": f"accounts/{account}/deployedModels/{deployed_id}",
        "model": model_name,
        "deployment": deployment,
        "displayName": labels.display_name or adapter.lora_id,
        "createTime": rfc3339(adapter.created),
        "updateTime": rfc3339(labels.updated or adapter.created),
        "state": "DEPLOYED",
        "status": {"code": "OK", "message": ""},
        "default": True,  # ember's one deployment is every model's
        "public": adapter.owner is None,
        "serverless": False,
    }
    if labels.description is not None:
        deployed["description"] = labels.description
    return deployed


def deployed_model_ref(deployed: dict[str, Any]) -> dict[str, Any]:
    """The Model object's `deployedModelRefs` entry of one deployed model."""
    return {key: deployed[key] for key in ("name", "deployment", "state", "default", "public")}
