from __future__ import annotations

import pytest

from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm import LLM
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadConfig, LoadedModel, load_model


@pytest.fixture(scope="session")
def default_model() -> LoadedModel:
    return load_model(LoadConfig(weight_format="fp32"))


@pytest.fixture(scope="session")
def llm(default_model: LoadedModel) -> LLM:
    # Room for the whole 100-request batch in one running set, so it decodes together.
    config = EngineConfig(
        scheduler=SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=1024), kv_cache_gib=0.5
    )
    return LLM(default_model, engine_config=config)
