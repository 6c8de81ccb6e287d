"""The body of ember's POST /v1/adapters."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ember.server.common.protocol import APIModel


class AdapterLoad(APIModel):
    """Serve the PEFT LoRA folder at `path` as the model `name`."""

    name: Annotated[str, Field(min_length=1)]
    path: Annotated[str, Field(min_length=1)]
    check_base_model: bool = True
    base_model: str | None = None
    """The served base model whose engine serves it (a server of several models); default: the default model."""
