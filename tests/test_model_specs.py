"""`ember serve`'s several-models flags: Ollama's keep-alive durations, `--model [NAME=]PATH`, the TOML models
file (paths from its folder, every key checked), and the memory estimate a load is checked with."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.model_specs import ModelSpec, ModelSpecError, parse_keep_alive, specs_from_args
from ember.server.common.memory_budget import (
    GIB,
    MemoryBudgetError,
    MemoryEstimate,
    check_fits,
    weights_bytes,
)
from ember.server.common.metrics import merge_expositions
from ember.threads import StepGate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("-1", None),
        ("-1m", None),
    ],
)
def test_keep_alive_reads_ollamas_durations(text: str, seconds: float | None) -> None:
    assert parse_keep_alive(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "m5", "5x", "1h 30m", "-5x", "nan", "inf"])
def test_a_bad_keep_alive_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ModelSpecError, match="keep_alive"):
        parse_keep_alive(text)


def test_models_from_flags_and_a_file(tmp_path: Path) -> None:
    for name in ("coder.gguf", "adapters/sql", "m/a.gguf", "m/b", "qwen"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "models.toml").write_text(
        'keep_alive = "10m"\n'
        '[[models]]\nname = "coder"\npath = "coder.gguf"\nlazy = true\nkv_cache_gib = 0.5\nthreads = 1\n'
        'lora = { sql = "adapters/sql" }\n'
        f'[[models]]\npath = "{tmp_path}/qwen"\nkeep_alive = -1\naliases = ["q"]\n'
    )
    a, b = tmp_path / "m/a.gguf", tmp_path / "m/b"
    specs = specs_from_args([str(a), f"small={b}"], tmp_path / "models.toml", False, "5m")
    assert specs[0] == ModelSpec(None, str(a), keep_alive_s=300.0)
    assert specs[1] == ModelSpec("small", str(b), keep_alive_s=300.0)
    coder = specs[2]
    assert (coder.path, coder.lazy, coder.keep_alive_s, coder.kv_cache_gib, coder.threads) == (
        str(tmp_path / "coder.gguf"),
        True,
        600.0,  # the file's own default beats --keep-alive
        0.5,
        1,
    )
    assert coder.loras == (("sql", str(tmp_path / "adapters/sql")),)
    assert (specs[3].path, specs[3].keep_alive_s, specs[3].aliases) == (str(tmp_path / "qwen"), None, ("q",))
    assert specs_from_args([], None, True, None) == [ModelSpec(None, None)]  # the embedded default
    with pytest.raises(ModelSpecError, match="no such file or folder"):
        specs_from_args([str(a), f"typo={tmp_path}/nope"], None, False, None)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[models]]\npath = "a"\nkeepalive = "5m"\n', "unknown key.*keepalive"),
        ('[[models]]\npath = "missing"\n', "no such file or folder"),
        ('[[models]]\npath = "a"\nthreads = 0\n', "threads must be a positive integer"),
        ('[[models]]\npath = "a"\nname = "x/y"\n', "without '/'"),
        ('[[models]]\npath = "a"\nlazy = "yes"\n', "lazy must be true or false"),
        ("models = 3\n", "one or more \\[\\[models\\]\\]"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_a_bad_models_file_is_refused_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "m.toml").write_text(toml)
    with pytest.raises(ModelSpecError, match=message):
        specs_from_args([], tmp_path / "m.toml", False, None)


def test_the_estimate_reads_safetensors_as_fp32_and_the_budget_names_the_numbers(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(256, dtype=torch.bfloat16)}, str(tmp_path / "model.safetensors"))
    assert weights_bytes(str(tmp_path)) == 256 * 4  # held as fp32
    estimate = MemoryEstimate(GIB, GIB)
    check_fits("m", estimate, 0, 3 * GIB, available=8 * GIB)
    with pytest.raises(MemoryBudgetError, match=r"'m'.*2\.000 GiB.*1\.500 GiB of the 3\.000 GiB"):
        check_fits("m", estimate, int(1.5 * GIB), 3 * GIB, available=8 * GIB)
    with pytest.raises(MemoryBudgetError, match=r"1\.000 GiB available"):
        check_fits("m", estimate, 0, None, available=GIB)


def test_metrics_of_several_models_declare_each_family_once() -> None:
    one = '# HELP a A.\n# TYPE a gauge\na{model_name="x"} 1\n# HELP h H.\n# TYPE h histogram\nh_count{model_name="x"} 2\n'
    merged = merge_expositions([one, one.replace('"x"', '"y"')])
    assert merged.splitlines() == [
        "# HELP a A.",
        "# TYPE a gauge",
        'a{model_name="x"} 1',
        'a{model_name="y"} 1',
        "# HELP h H.",
        "# TYPE h histogram",
        'h_count{model_name="x"} 2',
        'h_count{model_name="y"} 2',
    ]


def test_the_step_gate_hands_turns_over_in_arrival_order() -> None:
    import threading
    import time

    gate = StepGate()
    order: list[int] = []
    workers = []
    with gate:  # held: the others queue up, each taking its ticket before the next one starts
        for i in range(3):
            workers.append(threading.Thread(target=lambda i=i: _take_turn(gate, order, i)))
            workers[-1].start()
            while gate._next_ticket != i + 2:
                time.sleep(0.001)
    for worker in workers:
        worker.join()
    assert order == [0, 1, 2]


def _take_turn(gate: StepGate, order: list[int], i: int) -> None:
    with gate:
        order.append(i)
