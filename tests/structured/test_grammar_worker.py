"""The grammar worker (#12): a grammar that crashes llguidance or compiles too long costs a 400-style
ValueError and a worker restart, never this process; verdicts are cached; the worker's lifecycle is clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import llguidance
import pytest

from ember.structured import grammar, grammar_worker
from ember.structured.grammar import grammar_for
from ember.structured.grammar_worker import GrammarWorker
from ember.structured.spec import StructuredSpec


def ref_chain_schema(steps: int) -> dict:
    defs: dict = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(steps)}
    defs[f"d{steps}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def big_schema(tag: str, fields: int = 200) -> dict:
    """A plain schema whose grammar is over the 4 KiB checked in-process."""
    properties = {f"{tag}_{i}": {"type": "integer", "minimum": 0, "maximum": 9} for i in range(fields)}
    return {"type": "object", "properties": properties, "required": list(properties)}


def compiled(schema: dict) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema)


def gone(pid: int) -> bool:
    """The process is neither running nor a zombie (it was waited for)."""
    return not os.path.exists(f"/proc/{pid}")


@pytest.fixture
def worker() -> Iterator[GrammarWorker]:
    worker = GrammarWorker()
    yield worker
    worker.stop()


def test_a_grammar_that_crashes_the_worker_is_an_error_and_the_next_one_compiles(
    worker: GrammarWorker,
) -> None:
    # Past grammar_limits (called directly, so nothing refuses it first): llguidance overflows its stack.
    error = worker.check(compiled(ref_chain_schema(5000)))
    assert error is not None and "crashed the grammar compiler (SIGSEGV)" in error
    assert worker.pid is None and worker.starts == 1
    assert worker.check(compiled(big_schema("after"))) is None
    assert worker.starts == 2 and worker.pid is not None


def test_through_grammar_for_a_crash_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grammar, "check_spec_limits", lambda spec: None)  # the limits disabled
    grammar_worker.clear_cache()
    chain = StructuredSpec("json_schema", json.dumps(ref_chain_schema(5000)))
    with pytest.raises(ValueError, match=r"invalid JSON schema: crashed the grammar compiler \(SIGSEGV\)"):
        grammar_for(chain)
    assert grammar_for(StructuredSpec("json_schema", json.dumps(big_schema("next"))))
    with pytest.raises(ValueError, match="crashed the grammar compiler"):  # the verdict is cached
        grammar_for(chain)


def test_a_grammar_over_the_time_budget_is_stopped_and_the_worker_replaced() -> None:
    worker = GrammarWorker(time_budget_s=0.3)
    try:
        # 100,000 parser alternatives: seconds of compilation (the 100k-option choice took 47 s).
        slow = llguidance.LLMatcher.grammar_from_lark(
            "start: " + " | ".join(json.dumps(f"option {i}") for i in range(100_000))
        )
        assert worker.check(compiled({"type": "integer"})) is None
        first_pid = worker.pid
        assert first_pid is not None
        assert worker.check(slow) == "too complex to compile within 0.3 s"
        assert worker.pid is None and gone(first_pid)
        assert worker.check(compiled({"type": "boolean"})) is None
        assert worker.starts == 2
    finally:
        worker.stop()


def test_verdicts_are_cached_by_grammar_text() -> None:
    grammar_worker.clear_cache()
    shared = grammar_worker.shared_worker()
    text = compiled(big_schema("cached"))
    assert len(text) >= grammar_worker.IN_PROCESS_MAX_BYTES
    before = shared.round_trips
    assert grammar_worker.verify_grammar(text) is None
    assert shared.round_trips == before + 1
    assert grammar_worker.verify_grammar(text) is None
    assert shared.round_trips == before + 1  # answered from the cache
    bad = (
        compiled({"type": "integer", "minimum": 5, "maximum": 1}) + " " * 5000
    )  # JSON whitespace: same grammar
    first = grammar_worker.verify_grammar(bad)
    assert first is not None and grammar_worker.verify_grammar(bad) == first
    assert shared.round_trips == before + 2
    small = compiled({"type": "boolean"})
    assert grammar_worker.verify_grammar(small) is None
    assert shared.round_trips == before + 2  # small grammars never go to the worker


def test_the_worker_starts_lazily_and_stops_cleanly(worker: GrammarWorker) -> None:
    assert worker.pid is None and worker.starts == 0
    assert worker.check(compiled(big_schema("lazy"))) is None
    pid = worker.pid
    assert pid is not None
    worker.stop()
    assert worker.pid is None and gone(pid)
    worker.stop()  # twice is harmless


def test_concurrent_callers_share_one_worker(worker: GrammarWorker) -> None:
    grammars = [compiled(big_schema(f"t{i}", 50)) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker.check, grammars))
    assert results == [None] * 16
    assert worker.starts == 1 and worker.round_trips == 16


def test_the_worker_exits_with_its_process() -> None:
    script = textwrap.dedent(
        f"""
        import json, llguidance
        from ember.structured import grammar_worker
        schema = {json.dumps(big_schema("exit"))}
        assert grammar_worker.verify_grammar(llguidance.LLMatcher.grammar_from_json_schema(schema)) is None
        print(grammar_worker.shared_worker().pid, flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    for _ in range(100):  # atexit stopped it; at worst it sees its stdin close and exits
        if gone(pid) or _is_zombie_of_init(pid):
            break
        time.sleep(0.05)
    assert gone(pid) or _is_zombie_of_init(pid)


def _is_zombie_of_init(pid: int) -> bool:
    """A zombie re-parented after its parent exited: init reaps it, nothing is leaked."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
