"""`ember tune create --method dpo`: a preference file becomes a DPO job with its beta; --beta without
--method dpo and a chat file for DPO are errors; the progress bar shows DPO's reward accuracy."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from tuning_helpers import good_row, write_jsonl

from ember.engine.testing import write_tiny_hf_folder
from ember.tuning.cli_tune import _progress_bar, add_tune_subparser, run_tune


def pair(question: str) -> dict[str, object]:
    return {
        "input": {"messages": [{"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": "Certainly! Here is a clear answer."}],
        "non_preferred_output": [{"role": "assistant", "content": "no"}],
    }


def test_cli_creates_a_dpo_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_tiny_hf_folder(tmp_path / "tiny-llama", max_position_embeddings=512)
    parser = argparse.ArgumentParser(prog="ember")
    add_tune_subparser(parser.add_subparsers(dest="command", required=True))
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [pair(f"Question {i}?") for i in range(4)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [good_row(f"Fact {i}?", "Yes.") for i in range(3)])
    data_dir = ["tune", "--data-dir", str(tmp_path / "data")]

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        code = run_tune(parser.parse_args([*data_dir, *argv]), out)
        return code, out.getvalue()

    common = ["--model", str(model), "--max-context-length", "128", "--batch-tokens", "512"]
    # --detach: a server (or a later `ember tune events --follow`) runs it; the worker path is test_dpo_api's.
    code, output = run(
        "create", *common, "--train", str(prefs), "--method", "dpo", "--beta", "0.2", "--epochs", "2",
        "--learning-rate", "0.005", "--batch-size", "2", "--suffix", "dpo", "--detach",
    )  # fmt: skip
    assert code == 0, output
    job_id = output.split()[1]
    shown = json.loads(run("get", job_id)[1])
    assert shown["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": 2,
                "learning_rate_multiplier": 100.0,
                "beta": 0.2,
            }
        },
    }
    assert shown["status"] == "validating_files"
    _, events = run("events", job_id)
    assert f"Created DPO job {job_id}" in events and "beta=0.2" in events

    assert run("create", *common, "--train", str(chats), "--beta", "0.2")[0] == 1
    assert "--beta applies to DPO jobs" in capsys.readouterr().err
    assert run("create", *common, "--train", str(chats), "--method", "dpo")[0] == 1
    assert "a dpo job needs preference rows" in capsys.readouterr().err


def test_progress_bar_shows_reward_accuracy() -> None:
    data = {"progress": 0.5, "step": 2, "total_steps": 4, "train_loss": 0.6, "train_reward_accuracy": 0.75}
    assert "reward acc 0.75" in _progress_bar(data, None)
