"""Which of ember's source files a POST /v1/chat/completions passes through, from the route function to the
engine (and on to the last byte of the response), on a tiny random model in-process.

Run: `python benchmarks/trace_chat_path.py` (add `--list` to print the files and the cross-file calls).

A profile hook on the server's thread, and on the preparation threads the server hands a request's preparation
to (ember.server.common.preparation), records every Python call made while a request is served. A call is
a *hop* when the nearest ember frame below it belongs to another file: reading the code, that is a jump to
another file and, when the callee returns, back again. Coroutine resumptions (an `await` continuing) are not
calls. Counted per request, for a plain chat, a streamed chat and a chat with tools (forced tool call):
- files: distinct files under src/ember that run code;
- hops: cross-file calls; `back to X: n` is how many times control left the busiest file X and came back.
`route -> engine` stops at the first call of AsyncEngine.generate (the request entering the engine);
`whole request` follows the response to its last byte (engine files included, the engine thread not).
Besides the three chat cases, /v1/completions and Anthropic's /v1/messages (which share the preparation step).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import uvicorn

import ember
from ember.engine.async_engine import AsyncEngine
from ember.engine.testing import tiny_engine_config, tiny_loaded_model
from ember.server.app import build_app
from ember.server.common.config import ServerConfig

SRC = str(Path(ember.__file__).resolve().parent) + "/"
ROUTE_NAMES = {"create_chat_completion", "create_completion", "create_message"}
PREPARATION_THREAD_PREFIX = "ember-prepare"
CO_COROUTINE_LIKE = 0x80 | 0x200 | 0x20  # CO_COROUTINE | CO_ASYNC_GENERATOR | CO_GENERATOR

# A Hermes-style template with tools (as tests/server/tools_server.py), so tool_choice required has a syntax.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools>\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% endif %}{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclasses.dataclass
class Trace:
    """The calls one request made, in order, as (caller file, callee file) pairs of ember files."""

    active: bool = False
    thread: int | None = None
    reached_engine: bool = False
    files_to_engine: set[str] = dataclasses.field(default_factory=set)
    hops_to_engine: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    files: set[str] = dataclasses.field(default_factory=set)
    hops: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    started: dict[int, FrameType] = dataclasses.field(
        default_factory=dict
    )  # coroutine frames already running

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if not self.active:
            if code.co_name in ROUTE_NAMES and code.co_filename.startswith(SRC):
                self.active, self.thread = True, threading.get_ident()
            else:
                return
        if not code.co_filename.startswith(SRC):
            return
        if threading.get_ident() != self.thread and not _is_preparation_thread():
            return
        if code.co_flags & CO_COROUTINE_LIKE:
            if id(frame) in self.started:
                return  # a resumption, not a call
            self.started[id(frame)] = frame  # kept alive, so its id is not reused within the request
        callee = code.co_filename[len(SRC) :]
        if callee == "engine/async_engine.py" and code.co_name == "generate":
            self.reached_engine = True
        caller = _ember_caller(frame.f_back)
        self.files.add(callee)
        if caller is not None and caller != callee:
            self.hops.append((caller, callee))
        if not self.reached_engine:
            self.files_to_engine.add(callee)
            if caller is not None and caller != callee:
                self.hops_to_engine.append((caller, callee))


def _is_preparation_thread() -> bool:
    return threading.current_thread().name.startswith(PREPARATION_THREAD_PREFIX)


def _ember_caller(frame: FrameType | None) -> str | None:
    while frame is not None:
        if frame.f_code.co_filename.startswith(SRC):
            return frame.f_code.co_filename[len(SRC) :]
        frame = frame.f_back
    return None


def serve(template: str | None) -> tuple[uvicorn.Server, threading.Thread, str]:
    loaded = tiny_loaded_model()
    if template is not None:
        loaded = dataclasses.replace(loaded, chat_template=template)
    engine = AsyncEngine.from_loaded(loaded, tiny_engine_config(max_model_len=256))
    app = build_app(engine, ServerConfig(model_name="tiny-llama"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


class Tracer:
    """The profile hook of every thread the server starts; it forwards to the trace of the current request."""

    def __init__(self) -> None:
        self.trace: Trace | None = None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.trace is not None:
            self.trace.profile(frame, event, arg)


def traced(tracer: Tracer, url: str, path: str, body: dict[str, Any]) -> Trace:
    with httpx.Client(timeout=60) as client:
        warm = client.post(f"{url}{path}", json=body)  # warm-up: first-step and compile work
        warm.raise_for_status()
        tracer.trace = trace = Trace()
        client.post(f"{url}{path}", json=body).read()
        time.sleep(0.2)  # the server's side of the response ends
        tracer.trace = None
    return trace


def summary(files: set[str], hops: list[tuple[str, str]]) -> str:
    back = Counter(caller for caller, _ in hops)
    busiest, times = back.most_common(1)[0] if back else ("-", 0)
    serving = ", ".join(f"{name.rsplit('/', 1)[-1]}: {n}" for name, n in back.items() if "/serving_" in name)
    return f"{len(files)} files, {len(hops)} hops, back to {busiest}: {times} (calls out of {serving or '-'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the files and the hops")
    args = parser.parse_args()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    chat = "/v1/chat/completions"
    cases = [
        ("chat", None, chat, {"messages": messages, "max_tokens": 4}),
        ("chat stream", None, chat, {"messages": messages, "max_tokens": 4, "stream": True}),
        (
            "chat tools",
            TOOLS_TEMPLATE,
            chat,
            {"messages": messages, "max_tokens": 24, "tools": [TOOL], "tool_choice": "required"},
        ),
        ("completion", None, "/v1/completions", {"prompt": "The weather in Paris is", "max_tokens": 4}),
        ("messages", None, "/v1/messages", {"messages": messages, "max_tokens": 4}),
    ]
    tracer = Tracer()
    threading.setprofile(tracer)  # before the server and engine threads start, so they inherit it
    servers: dict[str | None, tuple[uvicorn.Server, threading.Thread, str]] = {}
    for name, template, path, body in cases:
        if template not in servers:
            servers[template] = serve(template)
        trace = traced(tracer, servers[template][2], path, body)
        print(f"{name:12} route -> engine: {summary(trace.files_to_engine, trace.hops_to_engine)}")
        print(f"{'':12} whole request:  {summary(trace.files, trace.hops)}")
        if args.list:
            print("   files to the engine:", ", ".join(sorted(trace.files_to_engine)))
            print("   hops:", " | ".join(f"{a} -> {b}" for a, b in trace.hops_to_engine))
            print("   files after:", ", ".join(sorted(trace.files - trace.files_to_engine)))
    for server, thread, _ in servers.values():
        server.should_exit = True
        thread.join(timeout=30)


if __name__ == "__main__":
    main()
