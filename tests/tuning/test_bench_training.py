"""benchmarks/bench_training.py runs end to end on a tiny random model: both sides train the same batches in
alternation, and the table carries what the issue asks to be shown (tokens/s, ratio, peak RSS, the CPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ember.engine.testing import write_tiny_hf_folder

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_training.py"
NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def side_row(output: str, case: str, label: str) -> tuple[float, float, float]:
    """(tokens/s median, first loss, peak RSS MB) of one side's row in one case's table."""
    table = output.split(f"\n{case}", 1)[1]
    match = re.search(rf"^{re.escape(label)}\s+({NUMBER})\s+\(\S+\)\s+({NUMBER})\s+({NUMBER})$", table, re.M)
    assert match is not None, f"no {label!r} row in the {case} table:\n{output}"
    return float(match[1]), float(match[2]), float(match[3])


def test_the_benchmark_interleaves_ember_and_peft_on_a_tiny_model(tmp_path: Path) -> None:
    model = write_tiny_hf_folder(tmp_path / "tiny")
    command = [sys.executable, str(SCRIPT), "--model", str(model), "--threads", "1", "--examples", "4"]
    command += ["--batch-examples", "2", "--warmup", "1", "--rounds", "1", "--sides", "ember,peft"]
    # the memory case is the same run_case on longer rows: one case keeps this test short
    command += ["--no-memory-case"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    output = finished.stdout
    ember = side_row(output, "speed:", "ember (default)")
    peft = side_row(output, "speed:", "PEFT + transformers")
    assert ember[0] > 0 and peft[0] > 0
    assert 50 < ember[2] < 4000 and 50 < peft[2] < 4000  # each worker's own peak RSS, in MB
    # the first step sees the base model's output on both sides (LoRA B starts at 0): same loss on the same
    # batch, up to ember's bf16 base matmuls on CPUs with native bf16
    assert abs(ember[1] - peft[1]) < 0.01 * peft[1]
    assert re.search(rf"ember \(default\) / PEFT, per round: median {NUMBER}x", output)
    assert "CPU " in output and "load " in output
