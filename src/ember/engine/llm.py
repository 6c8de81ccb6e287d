"""Offline batch generation: LLM(...).generate(prompts, params) runs the engine until every prompt is done."""

from __future__ import annotations

import itertools

from ember.engine.llm_engine import EngineConfig, LLMEngine
from ember.engine.outputs import RequestOutput
from ember.engine.sampling_params import SamplingParams
from ember.models.loader import LoadConfig, LoadedModel, load_model


class LLM:
    def __init__(
        self,
        model: str | LoadedModel | None = None,
        *,
        weight_format: str = "auto",
        device: str = "cpu",
        engine_config: EngineConfig | None = None,
    ) -> None:
        loaded = (
            model if isinstance(model, LoadedModel) else load_model(LoadConfig(model, weight_format, device))
        )
        self.engine = LLMEngine(loaded, engine_config or EngineConfig())
        self.tokenizer = loaded.tokenizer
        self._ids = itertools.count()

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Outputs in the order of the prompts; string prompts are tokenized as the completions API does.
        Without params, the checkpoint's generation defaults apply (LLMEngine.default_params)."""
        default = params or self.engine.default_params
        params_list = params if isinstance(params, list) else [default] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError("give one SamplingParams, or one per prompt")
        order: list[str] = []
        for prompt, p in zip(prompts, params_list, strict=True):
            ids = (
                self.tokenizer.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt
            )
            request_id = f"offline-{next(self._ids)}"
            self.engine.add_request(request_id, ids, p)
            order.append(request_id)
        finished: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for output in self.engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[rid] for rid in order]
