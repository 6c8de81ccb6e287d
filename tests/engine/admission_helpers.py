"""What the admission hammers share: healthy greedy streams, requests that fail at each stage of admission (and
one that fails inside a step), a real adapter folder whose files go bad, and the idle checks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ember.engine.engine_config import EngineConfig
from ember.engine.generation_budget import GenerationBudgetError
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.testing import tiny_engine_config
from ember.lora.adapter import LoraAdapter, save_peft_adapter
from ember.lora.config import LoraConfig
from ember.lora.errors import LoraError
from ember.lora.targets import module_shapes
from ember.models.config import ModelConfig
from ember.models.loader import LoadedModel
from ember.structured.spec import StructuredSpec

MAX_MODEL_LEN = 512
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
# One of the healthy streams is named like the second sample of a request "victim" with n=2: that request's
# fan-out collides with it half-way, and must leave no trace (and no harm to this stream).
HEALTHY_PROMPTS = {
    "h0": "The quick brown fox",
    "h1": "Once upon a time, in a land far away,",
    "victim#1": "1 2 3 4 5 6 7",
    "h3": "import numpy as np\n",
    "h4": "Dear diary, today",
}


def engine_config() -> EngineConfig:
    """Small token budget (prompts prefill over steps, failures land mid-stream); one adapter in memory, so a
    registered adapter is evicted and reloaded from its folder on demand."""
    config = tiny_engine_config(max_num_batched_tokens=32, max_model_len=MAX_MODEL_LEN)
    return dataclasses.replace(config, lora=LoraConfig(max_loaded=1))


def small_adapter(config: ModelConfig, seed: int) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    out_features, in_features = module_shapes(config)["q_proj"]
    weights = {
        (layer, "q_proj"): (
            torch.randn(2, in_features, generator=gen) / in_features**0.5,
            torch.randn(out_features, 2, generator=gen) * 0.3,
        )
        for layer in range(config.num_layers)
    }
    return LoraAdapter(f"a{seed}", 2, 4.0, ("q_proj",), weights)


def adapter_folders(model: LoadedModel, folder: Path) -> dict[str, str]:
    """Two real PEFT folders. Registered in this order on an engine holding one adapter in memory, "broken" is
    evicted by "other"; break_adapter then spoils its files, so a request for it reloads them and that fails."""
    paths = {}
    for name, seed in (("broken", 1), ("other", 2)):
        paths[name] = str(folder / name)
        save_peft_adapter(small_adapter(model.config, seed), paths[name], model.name)
    return paths


def break_adapter(path: str) -> None:
    with open(Path(path) / "adapter_model.safetensors", "wb") as f:
        f.write(b"\x00not a safetensors file" * 10)


@dataclass(frozen=True)
class BadRequest:
    """A request that admission must refuse, and the exception type it must raise."""

    name: str
    prompt: list[int]
    params: SamplingParams
    error: type[Exception]
    lora_id: str | None = None


def bad_requests(model: LoadedModel) -> list[BadRequest]:
    tok = model.tokenizer
    vocab = model.config.vocab_size
    prompt = tok.encode("Tell me a story")
    ref_chain = {"$defs": {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(5000)}, "$ref": "#/$defs/d0"}
    ref_chain["$defs"]["d5000"] = {"type": "string"}
    return [
        # the grammar matcher: #12's 66,000-string choice list and its 5000-step $ref chain
        BadRequest(
            "choice list",
            prompt,
            SamplingParams(structured=StructuredSpec("choice", json.dumps([f"c{i}" for i in range(66_000)]))),
            ValueError,
        ),
        BadRequest(
            "$ref chain",
            prompt,
            SamplingParams(structured=StructuredSpec("json_schema", json.dumps(ref_chain))),
            ValueError,
        ),
        BadRequest("adapter with bad files", prompt, GREEDY, LoraError, lora_id="broken"),
        BadRequest("unknown adapter", prompt, GREEDY, ValueError, lora_id="nope"),
        BadRequest(
            "logit_bias outside the vocabulary",
            prompt,
            SamplingParams(logit_bias={vocab + 7: 5.0}),
            ValueError,
        ),
        BadRequest("prompt ids outside the vocabulary", [1, vocab, 2], GREEDY, ValueError),
        BadRequest("prompt over the context", [5] * MAX_MODEL_LEN, GREEDY, GenerationBudgetError),
        BadRequest("n=2 colliding half-way", prompt, SamplingParams(n=2, max_tokens=4), ValueError),
    ]


def bad_request_id(bad: BadRequest, round_number: int) -> str:
    # the colliding fan-out must be named "victim" (its sample 1 is "victim#1", a healthy stream)
    return "victim" if bad.name.startswith("n=2") else f"bad-{round_number}-{bad.name}"


class PoisonedForward:
    """The runner's forward, raising whenever a batch contains `poison`: one request's fault inside a step (the
    narrowly scoped stand-in for a kernel fault on its inputs)."""

    def __init__(self, forward: Callable[..., tuple[torch.Tensor, object]], poison: int) -> None:
        self.forward = forward
        self.poison = poison
        self.raised = 0

    def __call__(
        self, input_ids: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, object]:
        if bool((input_ids == self.poison).any()):
            self.raised += 1
            raise RuntimeError("simulated kernel fault on a poisoned input")
        return self.forward(input_ids, *args, **kwargs)


def unused_token(model: LoadedModel, used: set[int]) -> int:
    """A token id no healthy stream reads or writes, to poison with."""
    return next(t for t in range(1000, model.config.vocab_size) if t not in used)


def assert_idle_and_clean(engine: LLMEngine) -> None:
    stats = engine.scheduler.stats()
    assert (stats.num_running, stats.num_waiting) == (0, 0)
    block_manager = engine.scheduler.block_manager
    assert block_manager.num_free_blocks == block_manager.num_usable_blocks, "KV blocks still used"
    assert not engine.has_unfinished() and not engine.sequences
    assert engine.runner.num_sequences == 0
    assert all(info.active_requests == 0 for info in engine.list_loras())
    engine.check_invariants()


def footprint(engine: LLMEngine) -> tuple[object, ...]:
    """Everything admission could leave behind."""
    block_manager = engine.scheduler.block_manager
    return (
        engine.scheduler.num_waiting,
        engine.scheduler.num_running,
        block_manager.num_free_blocks,
        len(engine.requests),
        len(engine.sequences),
        engine.runner.num_sequences,
        tuple((info.name, info.active_requests) for info in engine.list_loras()),
        engine.scheduler.has_unfinished(),
        len(engine.embeddings),
    )
