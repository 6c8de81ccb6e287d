"""The error every LoRA problem is reported as."""

from __future__ import annotations


class LoraError(ValueError):
    """An adapter cannot be loaded, saved or used with this model; the message names the adapter and the
    problem.

    A ValueError, so callers that answer invalid input with a 400 treat a bad adapter the same way."""
