from __future__ import annotations

import pytest

from ember.engine.engine_config import SchedulerConfig
from ember.engine.llm import LLM
from ember.engine.llm_engine import EngineConfig
from ember.models.loader import LoadedModel


@pytest.fixture(scope="session")
def llm(smollm_fp32_model: LoadedModel) -> LLM:
    # smollm_fp32_model: the default model in fp32, loaded once for the session (tests/conftest.py)
    # Room for the whole 100-request batch in one running set, so it decodes together.
    config = EngineConfig(
        scheduler=SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=1024), kv_cache_gib=0.5
    )
    return LLM(smollm_fp32_model, engine_config=config)
