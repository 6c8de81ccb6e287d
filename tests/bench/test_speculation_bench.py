"""`ember bench --speculation`: the flag, and the workloads run on a tiny random model (whose outputs mean nothing
but must still be identical with and without speculation). No timing is asserted."""

from __future__ import annotations

import math

import pytest

from ember.bench.bench_args import bench_config
from ember.bench.speculation import Prompts, measure_speculation, print_speculation_table
from ember.bench.speculation_tasks import CODE, TASKS
from ember.cli import build_parser
from ember.engine.testing import tiny_loaded_model


def test_the_speculation_flag_reaches_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    parse = build_parser().parse_args
    assert bench_config(parse(["bench"])).speculation == "off"
    cfg = bench_config(parse(["bench", "--speculation", "only", "--speculation-repeats", "5"]))
    assert (cfg.speculation, cfg.speculation_repeats) == ("only", 5)
    with pytest.raises(SystemExit):
        parse(["bench", "--speculation", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="speculation_repeats must be at least 1"):
        bench_config(parse(["bench", "--speculation-repeats", "0"]))


def test_the_prompts_go_through_the_models_chat_template() -> None:
    prompts = Prompts(tiny_loaded_model())
    text = prompts.decode(prompts.chat("Rename x."))
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "Rename x.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompts.decode(list(prompts.text(CODE))) == CODE


def test_every_workload_runs_off_and_on_with_identical_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    loaded = tiny_loaded_model()
    rows = measure_speculation(loaded, repeats=1)
    assert [r.workload for r in rows] == [t.name for t in TASKS] + ["32 streams, aggregate"]
    for row in rows:
        assert 0 < row.off < math.inf and 0 < row.on < math.inf
    for row in rows[:-1]:
        assert row.notes.endswith("identical: yes"), row
    print_speculation_table(rows, loaded, threads=1, repeats=1)
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:5] == ["speculative", "decoding", "(engine,", "greedy,", "medians"]
    assert table[2].split() == ["workload", "off", "tok/s", "on", "tok/s", "on/off", "target", "notes"]
    assert ">= 3x" in table[4] and f"{rows[0].ratio:.2f}x" in table[4]
