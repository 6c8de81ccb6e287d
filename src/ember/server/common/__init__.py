"""Pieces every API surface shares: settings, errors, middleware, request bodies, model names, prompts,
sampling, the engine request and server-sent events."""
