"""How well the served model calls tools, not just whether the replies have the right shape: 30 prompts over
5 tools (6 of them need no tool), each sent through /v1/chat/completions under tool_choice "auto" and
"required", greedy. Printed per mode:

- replies with calls: how many replies hold at least one tool call;
- valid calls: of those, how many hold only calls of listed tools whose arguments validate against the schema;
- right tool: of the prompts that need a tool, how many replies call it first;
- right arguments: of those, how many also carry the expected argument values (case-insensitive match);
- no call when none needed (auto only): of the 6 prompts that need no tool, how many get text only.

    .venv/bin/python benchmarks/tool_quality.py [--url http://127.0.0.1:8000 --api-key KEY] [--model NAME]
        [--threads 2] [--concurrency 4] [--max-tokens 96] [--no-parallel] [--show]

Without --url it starts `ember serve` on the default model (SmolLM2-135M-Instruct) in a child process.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema

from ember.bench.http_server import ServerLaunch, running_server


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [
    _tool(
        "get_weather",
        "Get the current weather in a city",
        {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        ["city"],
    ),
    _tool(
        "convert_currency",
        "Convert an amount of money from one currency to another",
        {
            "amount": {"type": "number"},
            "from_currency": {"type": "string", "description": "three-letter code, e.g. USD"},
            "to_currency": {"type": "string", "description": "three-letter code, e.g. EUR"},
        },
        ["amount", "from_currency", "to_currency"],
    ),
    _tool(
        "send_email",
        "Send an email",
        {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
        ["to", "subject", "body"],
    ),
    _tool("search_web", "Search the web for recent information", {"query": {"type": "string"}}, ["query"]),
    _tool(
        "set_timer",
        "Start a countdown timer",
        {"minutes": {"type": "integer", "minimum": 1}},
        ["minutes"],
    ),
]


@dataclass(frozen=True)
class Case:
    prompt: str
    tool: str | None  # the tool the prompt needs; None: it needs no tool
    arguments: dict[str, Any] = field(
        default_factory=dict
    )  # expected values (strings match case-insensitively)


CASES = [
    Case("What's the weather in Paris right now?", "get_weather", {"city": "Paris"}),
    Case("Is it raining in London today?", "get_weather", {"city": "London"}),
    Case("Tell me the temperature in Tokyo in fahrenheit.", "get_weather", {"city": "Tokyo", "unit": "fahrenheit"}),
    Case("How cold is it in Oslo?", "get_weather", {"city": "Oslo"}),
    Case("Weather forecast for Berlin, please.", "get_weather", {"city": "Berlin"}),
    Case("Convert 100 US dollars to euros.", "convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}),
    Case("How many Japanese yen is 50 euros?", "convert_currency", {"amount": 50, "from_currency": "EUR", "to_currency": "JPY"}),
    Case("Change 20 GBP into USD.", "convert_currency", {"amount": 20, "from_currency": "GBP", "to_currency": "USD"}),
    Case("What is 75 Swiss francs in dollars?", "convert_currency", {"amount": 75, "from_currency": "CHF", "to_currency": "USD"}),
    Case("Convert 1000 INR to EUR.", "convert_currency", {"amount": 1000, "from_currency": "INR", "to_currency": "EUR"}),
    Case("Email bob@example.com that the meeting moved to 3pm.", "send_email", {"to": "bob@example.com"}),
    Case("Send an email to alice@example.com with the subject Lunch asking if she is free tomorrow.", "send_email", {"to": "alice@example.com", "subject": "Lunch"}),
    Case("Write to hr@example.com to say I am sick today.", "send_email", {"to": "hr@example.com"}),
    Case("Please email team@example.com the subject Release and tell them version 2 is out.", "send_email", {"to": "team@example.com", "subject": "Release"}),
    Case("Send a thank-you email to carol@example.com.", "send_email", {"to": "carol@example.com"}),
    Case("Search the web for the latest news about electric cars.", "search_web", {}),
    Case("Who won yesterday's football match? Look it up online.", "search_web", {}),
    Case("Find recent reviews of the new iPhone.", "search_web", {}),
    Case("Look up the current price of bitcoin on the internet.", "search_web", {}),
    Case("Search for the opening hours of the Louvre museum.", "search_web", {}),
    Case("Set a timer for 10 minutes.", "set_timer", {"minutes": 10}),
    Case("Start a 5 minute countdown.", "set_timer", {"minutes": 5}),
    Case("Remind me in 25 minutes with a timer.", "set_timer", {"minutes": 25}),
    Case("I need a timer of 3 minutes for my eggs.", "set_timer", {"minutes": 3}),
    Case("Hello! How are you?", None),
    Case("What is 7 times 8?", None),
    Case("Write a haiku about the sea.", None),
    Case("What is the capital of Italy?", None),
    Case("Thank you, that is all.", None),
    Case("Translate 'good morning' into French.", None),
]  # fmt: skip


@dataclass
class Outcome:
    case: Case
    calls: list[dict[str, Any]]
    content: str | None
    finish_reason: str

    @property
    def valid(self) -> bool:
        return bool(self.calls) and all(_call_is_valid(call) for call in self.calls)

    @property
    def right_tool(self) -> bool:
        return bool(self.calls) and self.calls[0]["function"]["name"] == self.case.tool

    @property
    def right_arguments(self) -> bool:
        if not self.right_tool:
            return False
        try:
            arguments = json.loads(self.calls[0]["function"]["arguments"])
        except ValueError:
            return False
        return all(_same(arguments.get(key), value) for key, value in self.case.arguments.items())


def _call_is_valid(call: dict[str, Any]) -> bool:
    function = call["function"]
    schema = next(
        (t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == function["name"]), None
    )
    if schema is None:
        return False
    try:
        jsonschema.validate(json.loads(function["arguments"]), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _same(got: Any, expected: Any) -> bool:
    if isinstance(expected, str):
        return isinstance(got, str) and got.strip().lower() == expected.lower()
    return got == expected


def ask(client: httpx.Client, model: str, case: Case, tool_choice: str, args: argparse.Namespace) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": case.prompt}],
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "parallel_tool_calls": not args.no_parallel,
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    response = client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    message = choice["message"]
    return Outcome(case, message.get("tool_calls") or [], message.get("content"), choice["finish_reason"])


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.0f}%)" if whole else "-"


def report(mode: str, outcomes: list[Outcome]) -> list[str]:
    needing = [o for o in outcomes if o.case.tool is not None]
    needless = [o for o in outcomes if o.case.tool is None]
    with_calls = [o for o in outcomes if o.calls]
    return [
        mode,
        _share(len(with_calls), len(outcomes)),
        _share(sum(o.valid for o in with_calls), len(with_calls)),
        _share(sum(o.right_tool for o in needing), len(needing)),
        _share(sum(o.right_arguments for o in needing), len(needing)),
        _share(sum(not o.calls for o in needless), len(needless)) if mode == "auto" else "-",
    ]


def run(url: str, api_key: str, args: argparse.Namespace) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:
        model = args.model or client.get("/v1/models").json()["data"][0]["id"]
        rows = [["tool_choice", "replies with calls", "valid calls", "right tool", "right arguments", "no call when none needed"]]  # fmt: skip
        for mode in ("auto", "required"):
            with ThreadPoolExecutor(args.concurrency) as pool:
                outcomes = list(
                    pool.map(ask, *zip(*[(client, model, c, mode, args) for c in CASES], strict=True))
                )
            if args.show:
                for o in outcomes:
                    calls = [(c["function"]["name"], c["function"]["arguments"]) for c in o.calls]
                    print(f"{mode:8} {o.case.prompt[:48]!r:52} {o.finish_reason:10} {calls} {o.content!r}")
            rows.append(report(mode, outcomes))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"model {model}, {len(CASES)} prompts, {len(TOOLS)} tools, greedy, max_tokens {args.max_tokens}")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None, help="a running server (default: start the default model)")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--model", default=None, help="model name to send (default: the first of /v1/models)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the server this script starts")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--no-parallel", action="store_true", help="send parallel_tool_calls false")
    parser.add_argument("--show", action="store_true", help="print every reply")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.api_key, args)
        return
    launch = ServerLaunch(
        model=None,
        weight_format="auto",
        quantization=None,
        threads=args.threads,
        block_size=16,
        enable_prefix_caching=True,
        max_num_seqs=16,
        max_num_batched_tokens=512,
        max_model_len=2048,
        kv_cache_gib=0.25,
    )
    with running_server(launch) as server:
        run(server.url, server.api_key, args)


if __name__ == "__main__":
    main()
