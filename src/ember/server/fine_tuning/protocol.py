"""The bodies of the fine-tuning routes as pydantic models: OpenAI's POST /fine_tuning/jobs and /files (a
multipart form), Fireworks' dataset and supervised fine-tuning job creates and dataset uploads.

They check JSON types at every level (a wrong type is a 400 naming the field, never an AttributeError deep in
the job code) and are what /openapi.json shows. Values (ranges, ids, names) are checked where they are used:
tuning/job_objects.py, the job service and the trainer's settings; unknown fields pass through."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ember.server.common.protocol import APIModel

# Only bounds that keep a value storable and its derived values finite: SQLite holds 64-bit integers (10**30
# was an OverflowError, a 500), and a learning rate of 1e308 turned into inf when shown as a multiplier (every
# later job listing failed). The trainer's settings check what makes sense (positive, at least 2 tokens...).
Int64 = Annotated[int, Field(le=2**63 - 1)]
JobSeed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
MAX_LEARNING_RATE = 10.0
MAX_LEARNING_RATE_MULTIPLIER = 10_000.0  # x ember's 2e-4
LearningRate = Annotated[float, Field(le=MAX_LEARNING_RATE)]
AutoInt = Literal["auto"] | Int64
AutoFloat = Literal["auto"] | Annotated[float, Field(le=MAX_LEARNING_RATE_MULTIPLIER)]


class Hyperparameters(APIModel):
    n_epochs: AutoInt | None = None
    batch_size: AutoInt | None = None
    learning_rate_multiplier: AutoFloat | None = None


class SupervisedMethod(APIModel):
    hyperparameters: Hyperparameters | None = None


class DpoHyperparameters(Hyperparameters):
    beta: AutoFloat | None = Field(default=None, description="'auto': 0.1; must be positive")


class DpoMethod(APIModel):
    hyperparameters: DpoHyperparameters | None = None


class FineTuningMethod(APIModel):
    type: str | None = Field(default=None, description="'supervised' (chat rows) or 'dpo' (preference rows)")
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None


class FineTuningJobCreate(APIModel):
    """POST /v1/fine_tuning/jobs. Hyperparameters go under method.supervised (or, legacy, top-level)."""

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: JobSeed | None = None
    hyperparameters: Hyperparameters | None = None
    method: FineTuningMethod | None = None


class SupervisedFineTuningJobCreate(APIModel):
    """POST /v1/accounts/{account}/supervisedFineTuningJobs (Fireworks); batchSize counts tokens."""

    dataset: str
    baseModel: str  # noqa: N815 - Fireworks' field names
    evaluationDataset: str | None = None  # noqa: N815
    outputModel: str | None = None  # noqa: N815
    displayName: str | None = None  # noqa: N815
    earlyStop: bool = False  # noqa: N815
    evalAutoCarveout: bool = False  # noqa: N815
    epochs: Int64 | None = None
    learningRate: LearningRate | None = None  # noqa: N815
    loraRank: Int64 | None = None  # noqa: N815
    maxContextLength: Int64 | None = None  # noqa: N815
    batchSize: Int64 | None = None  # noqa: N815


class DpoTrainingConfig(APIModel):
    """trainingConfig of a Fireworks DPO job; batchSize counts tokens, batchSizeSamples pairs."""

    baseModel: str | None = None  # noqa: N815 - Fireworks' field names
    outputModel: str | None = None  # noqa: N815
    learningRate: LearningRate | None = None  # noqa: N815
    maxContextLength: Int64 | None = None  # noqa: N815
    loraRank: Int64 | None = None  # noqa: N815
    epochs: Int64 | None = None
    batchSize: Int64 | None = None  # noqa: N815
    batchSizeSamples: Int64 | None = None  # noqa: N815
    gradientAccumulationSteps: Int64 | None = None  # noqa: N815
    learningRateWarmupSteps: Int64 | None = None  # noqa: N815
    optimizerWeightDecay: float | None = None  # noqa: N815
    warmStartFrom: str | None = Field(default=None, description="refused: a DPO job starts from baseModel")  # noqa: N815
    jinjaTemplate: str | None = Field(default=None, description="refused: the base model's template is used")  # noqa: N815
    region: str | None = None


class DpoConfig(APIModel):
    beta: float | None = Field(default=None, description="0 < beta < 0.5; default 0.1")
    refCacheBatchSize: Int64 | None = None  # noqa: N815
    refCacheConcurrency: Int64 | None = None  # noqa: N815


class DpoLossConfig(APIModel):
    method: str | None = Field(default=None, description="'DPO' (or METHOD_UNSPECIFIED)")
    klBeta: float | None = None  # noqa: N815
    dpo: DpoConfig | None = None


class WandbConfig(APIModel):
    enabled: bool | None = Field(default=None, description="refused when true")


class DpoJobCreate(APIModel):
    """POST /v1/accounts/{account}/dpoJobs (Fireworks): preference pairs from a dataset of preference rows."""

    dataset: str
    displayName: str | None = None  # noqa: N815
    trainingConfig: DpoTrainingConfig  # noqa: N815
    lossConfig: DpoLossConfig | None = None  # noqa: N815
    wandbConfig: WandbConfig | None = None  # noqa: N815


class DatasetFields(APIModel):
    displayName: str | None = None  # noqa: N815


class DatasetCreate(APIModel):
    """POST /v1/accounts/{account}/datasets (Fireworks): the dataset exists empty until its :upload."""

    datasetId: str  # noqa: N815
    dataset: DatasetFields | None = None


class FileUpload(APIModel):
    """POST /v1/files: a JSONL file of chat rows, validated before it is stored."""

    file: bytes
    purpose: str = Field(description="'fine-tune'")


class DatasetUpload(APIModel):
    """POST /v1/accounts/{account}/datasets/{dataset_id}:upload: the dataset's JSONL file."""

    file: bytes


class DatasetUpdate(APIModel):
    """PATCH /v1/accounts/{account}/datasets/{dataset_id} (Fireworks): only the display name changes; fields
    ember derives from the uploaded file are refused by name."""

    displayName: str | None = None  # noqa: N815
    format: str | None = None
    exampleCount: str | int | None = None  # noqa: N815
    userUploaded: dict[str, object] | None = None  # noqa: N815


class DatasetUploadEndpoint(APIModel):
    """POST .../datasets/{dataset_id}:getUploadEndpoint: the files to upload (name -> size in bytes)."""

    filenameToSize: dict[str, str | int]  # noqa: N815
    readMask: str | None = None  # noqa: N815


class DatasetValidateUpload(APIModel):
    """POST .../datasets/{dataset_id}:validateUpload: an empty object, once every registered file is PUT."""
