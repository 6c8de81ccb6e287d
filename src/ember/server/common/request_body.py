"""Reading a JSON request body into a pydantic model, with OpenAI-style 400s that name the bad parameter."""

from __future__ import annotations

import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from ember.server.common.errors import invalid_request

ModelT = TypeVar("ModelT", bound=BaseModel)


def param_path(loc: tuple[int | str, ...]) -> str:
    """('messages', 0, 'role') -> 'messages[0].role', the way OpenAI names a nested parameter."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not path:
            path = part
        elif not part.startswith(("function-", "json-", "list[", "str", "int", "bool", "float", "dict[")):
            # pydantic adds union-member tags (`list[int]`, `str`) to the location; they are not parameters.
            path += f".{part}"
    return path


def validation_error(error: ValidationError) -> Exception:
    first = error.errors()[0]
    param = param_path(tuple(first["loc"]))
    message = first["msg"]
    if first["type"] == "missing":
        message = "is required"
    return invalid_request(f"{param}: {message}" if param else message, param=param or None)


def parse_json(raw: bytes) -> object:
    if not raw.strip():
        raise invalid_request("the request body is empty; send a JSON object")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise invalid_request(f"the request body is not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise invalid_request(
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None


def validate_body(model: type[ModelT], payload: object) -> ModelT:
    if not isinstance(payload, dict):
        raise invalid_request(f"the request body must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise validation_error(error) from None


async def read_body(request: Request, model: type[ModelT]) -> ModelT:
    return validate_body(model, parse_json(await request.body()))
