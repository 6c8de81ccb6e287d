from __future__ import annotations

import pytest

from ember.engine.testing import tiny_loaded_model
from ember.models.loader import LoadedModel


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    """A 2-layer random Llama with the default model's real tokenizer (shared: the network is read-only)."""
    return tiny_loaded_model("llama", seed=0)
