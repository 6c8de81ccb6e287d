"""Tool calls as a new user meets them: `ember serve` on the default model with default flags, and the real
SDKs with their defaults (no temperature, no tool_choice) asking "What's the weather like in Paris right now?"
with one `get_weather(city)` tool, then the whole agent loop (call -> tool result -> final answer). Not a
timing: one table of what each client got.

Clients: openai chat.completions (whole and streamed), anthropic messages.create, LangChain
ChatOpenAI(...).bind_tools([get_weather]).invoke (run --runs times: its default sampling is the server's), and
fireworks-ai when installed. Each row: the first reply (a call or text), the call's name and arguments, the
final answer's finish reason, and whether that answer is text that uses the tool's result.

    .venv/bin/python benchmarks/tool_sdk_check.py [--url http://127.0.0.1:8000 --api-key KEY] [--runs 5]
        [--threads N] [--question TEXT]

Without --url it starts `ember serve --port <free port>` (nothing else: the defaults are what is checked;
--threads adds --threads N for a loaded machine) in a child process with a throw-away data directory.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from ember.bench.http_server import free_port, wait_until_healthy
from ember.bench.machine import cpu_name

QUESTION = "What's the weather like in Paris right now?"
DESCRIPTION = "Get the current weather in a city."
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": DESCRIPTION, "parameters": CITY_SCHEMA}}]  # fmt: skip
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": DESCRIPTION, "input_schema": CITY_SCHEMA}]


def weather_report(city: str) -> str:
    return f"It is 18 degrees Celsius and sunny in {city}."


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return weather_report(city)


@dataclass
class LoopResult:
    """One client's agent loop: the first reply, then the answer after the tool result."""

    client: str
    first: str = "-"  # "call" or "text"
    name: str = "-"
    arguments: str = "-"
    final_finish: str = "-"
    final_text: str = ""
    error: str = ""

    @property
    def uses_result(self) -> bool:
        """The final answer is text that repeats something only the tool's result said."""
        text = self.final_text.lower()
        return any(word in text for word in ("18", "sunny"))

    def row(self) -> list[str]:
        if self.error:
            return [self.client, "error", "-", "-", "-", "-", self.error[:60]]
        answer = self.final_text.strip().replace("\n", " ")
        return [
            self.client,
            self.first,
            self.name,
            self.arguments,
            self.final_finish,
            "yes" if self.uses_result else "no",
            answer[:60],
        ]


def openai_loop(client: openai.OpenAI, model: str, stream: bool) -> LoopResult:
    result = LoopResult("openai (stream)" if stream else "openai")
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    if stream:
        name, arguments, call_id, content = "", "", "", ""
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS, stream=True):  # type: ignore[arg-type]  # fmt: skip
            for choice in chunk.choices:
                content += choice.delta.content or ""
                for delta in choice.delta.tool_calls or []:
                    call_id = delta.id or call_id
                    name += (delta.function and delta.function.name) or ""
                    arguments += (delta.function and delta.function.arguments) or ""
        calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}] if name else []  # fmt: skip
        assistant: dict[str, Any] = {"role": "assistant", "content": content or None}
    else:
        reply = client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)  # type: ignore[arg-type]
        assistant = reply.choices[0].message.model_dump(exclude_none=True)
        calls = assistant.get("tool_calls") or []
    if not calls:
        result.first = "text"
        return result
    result.first, result.name, result.arguments = "call", calls[0]["function"]["name"], calls[0]["function"]["arguments"]  # fmt: skip
    assistant["tool_calls"] = calls
    city = json.loads(calls[0]["function"]["arguments"]).get("city", "")
    messages += [assistant, {"role": "tool", "tool_call_id": calls[0]["id"], "content": weather_report(city)}]
    final = client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)  # type: ignore[arg-type]
    result.final_finish = final.choices[0].finish_reason
    result.final_text = final.choices[0].message.content or ""
    return result


def anthropic_loop(client: anthropic.Anthropic, model: str) -> LoopResult:
    result = LoopResult("anthropic")
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    first = client.messages.create(model=model, max_tokens=1024, messages=messages, tools=ANTHROPIC_TOOLS)  # type: ignore[arg-type]
    uses = [block for block in first.content if block.type == "tool_use"]
    if not uses:
        result.first = "text"
        return result
    use = uses[0]
    result.first, result.name, result.arguments = "call", use.name, json.dumps(use.input)
    messages += [
        {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": weather_report(str(use.input.get("city", "")))}]},  # type: ignore[union-attr]
    ]  # fmt: skip
    final = client.messages.create(model=model, max_tokens=1024, messages=messages, tools=ANTHROPIC_TOOLS)  # type: ignore[arg-type]
    result.final_finish = final.stop_reason or "-"
    result.final_text = "".join(block.text for block in final.content if block.type == "text")
    return result


def langchain_loop(base_url: str, api_key: str, model: str, run: int) -> LoopResult:
    result = LoopResult(f"langchain bind_tools #{run}")
    llm = ChatOpenAI(base_url=base_url, api_key=api_key, model=model).bind_tools([get_weather])  # type: ignore[arg-type]
    messages: list[BaseMessage] = [HumanMessage(QUESTION)]
    reply = llm.invoke(messages)
    if not reply.tool_calls:  # type: ignore[attr-defined]
        result.first = "text"
        return result
    call = reply.tool_calls[0]  # type: ignore[attr-defined]
    result.first, result.name, result.arguments = "call", call["name"], json.dumps(call["args"])
    messages += [reply, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = llm.invoke(messages)
    result.final_finish = str(final.response_metadata.get("finish_reason", "-"))
    result.final_text = final.content if isinstance(final.content, str) else json.dumps(final.content)
    return result


def fireworks_loop(base_url: str, api_key: str, model: str) -> LoopResult:
    import fireworks  # optional: the row is skipped when the SDK is not installed

    client = fireworks.Fireworks(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    result = LoopResult("fireworks-ai")
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)  # type: ignore[arg-type]
    message = reply.choices[0].message
    if not message.tool_calls:
        result.first = "text"
        return result
    call = message.tool_calls[0]
    result.first, result.name, result.arguments = "call", call.function.name, call.function.arguments
    city = json.loads(call.function.arguments).get("city", "")
    messages += [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": weather_report(city)},
    ]
    final = client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)  # type: ignore[arg-type]
    result.final_finish = final.choices[0].finish_reason or "-"
    result.final_text = final.choices[0].message.content or ""
    return result


def guarded(name: str, loop: Callable[[], LoopResult]) -> LoopResult:
    """A client's loop; an exception is a row of the table, not the end of the check."""
    try:
        return loop()
    except Exception as error:  # noqa: BLE001 - reported in the table
        return LoopResult(name, error=f"{type(error).__name__}: {error}")


def run(url: str, api_key: str, runs: int) -> list[LoopResult]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    claude = anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0, timeout=600)
    results = [
        guarded("openai", lambda: openai_loop(client, model, stream=False)),
        guarded("openai (stream)", lambda: openai_loop(client, model, stream=True)),
        guarded("anthropic", lambda: anthropic_loop(claude, model)),
    ]
    for i in range(1, runs + 1):
        results.append(guarded(f"langchain #{i}", lambda i=i: langchain_loop(f"{url}/v1", api_key, model, i)))  # type: ignore[misc]
    try:
        import fireworks  # noqa: F401
    except ImportError:
        print("fireworks-ai is not installed: no row for it")
    else:
        results.append(guarded("fireworks-ai", lambda: fireworks_loop(url, api_key, model)))
    return results


def print_table(results: list[LoopResult]) -> None:
    header = ["client", "first reply", "tool", "arguments", "final finish", "uses result", "final answer"]
    rows = [header] + [r.row() for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@contextmanager
def default_server(threads: int | None) -> Iterator[tuple[str, str]]:
    """`ember serve` with default flags on a free port; yields (url, api key)."""
    with tempfile.TemporaryDirectory(prefix="ember-sdk-check-") as folder:
        port, api_key = free_port(), secrets.token_urlsafe(16)
        command = [sys.executable, "-m", "ember.cli", "serve", "--port", str(port), f"--api-key={api_key}"]
        command += ["--data-dir", folder] + (["--threads", str(threads)] if threads else [])
        log_path = Path(folder) / "serve.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(process, url, log_path, timeout_s=600)
            yield url, api_key
        finally:
            process.terminate()
            process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--url", default=None, help="a running server (default: start one with default flags)"
    )
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--runs", type=int, default=5, help="LangChain runs (its sampling is the server's)")
    parser.add_argument(
        "--threads", type=int, default=None, help="--threads for the server this script starts"
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; question: {QUESTION!r}")
    if args.url:
        print_table(run(args.url, args.api_key, args.runs))
        return
    with default_server(args.threads) as (url, api_key):
        print_table(run(url, api_key, args.runs))


if __name__ == "__main__":
    main()
