"""POST /v1/adapters reads only under the server's adapter folders (--adapter-dir) and its fine-tuning jobs'
folders: `..`, absolute paths and symlinks that lead outside are refused with one message whether or not the
target exists (nothing of an outside adapter_config.json is echoed), errors name paths as the client wrote
them, and listings carry names, never server paths."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from adapter_files import write_adapter
from fine_tuning_server import TuningServer, start_tuning_server, write_tiny_model
from live_server import RunningServer

from ember.engine.testing import tiny_config

pytestmark = pytest.mark.timeout(120)

SECRET_BASE = "meta-llama/secret-base-model"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roots")
    config = tiny_config("llama", max_position_embeddings=2048)
    write_adapter(root / "adapters" / "alpha", config, 1)
    write_adapter(root / "outside" / "secret", config, 2, base_model=SECRET_BASE)
    os.symlink(root / "outside" / "secret", root / "adapters" / "linked-out")
    sneaky = write_adapter(root / "adapters" / "sneaky-config", config, 3)
    (sneaky / "adapter_config.json").unlink()
    os.symlink(root / "outside" / "secret" / "adapter_config.json", sneaky / "adapter_config.json")
    (root / "adapters" / "empty").mkdir()
    write_tiny_model(root / "model")
    return root


@pytest.fixture(scope="module")
def server(layout: Path) -> Iterator[TuningServer]:
    running = start_tuning_server(layout / "model", layout / "data", adapter_dirs=(layout / "adapters",))
    yield running
    running.stop()


def load(server: TuningServer, name: str, path: str) -> httpx.Response:
    return httpx.post(f"{server.v1}/adapters", json={"name": name, "path": path}, timeout=60)


def refusal(server: TuningServer, path: str) -> str:
    response = load(server, "probe", path)
    assert response.status_code == 400, (path, response.text)
    error = response.json()["error"]
    assert error["param"] == "path" and error["code"] == "invalid_adapter_path"
    return error["message"].replace(repr(path), "<path>")


def test_adapters_load_by_name_or_path_inside_the_folder(server: TuningServer, layout: Path) -> None:
    for name, path in (("by-name", "alpha"), ("by-path", str(layout / "adapters" / "alpha"))):
        response = load(server, name, path)
        assert response.status_code == 200, response.text
        assert httpx.delete(f"{server.v1}/adapters/{name}").status_code == 200


def test_escapes_are_refused_alike_whether_or_not_the_target_exists(
    server: TuningServer, layout: Path
) -> None:
    outside = layout / "outside" / "secret"
    probes = [
        "../outside/secret",  # traversal to a real adapter
        "../outside/nothing-here",  # traversal to nothing
        str(outside),  # absolute, exists
        str(layout / "outside" / "nothing-here"),  # absolute, missing
        "/etc",
        "/no/such/folder",
        "linked-out",  # a symlink in the folder pointing out
        "sneaky-config",  # a folder whose adapter_config.json is a symlink out
        "alpha/../../outside/secret",
        "nowhere",  # inside, missing
        "files",  # the data directory outside a job's folders
        "adapters/ftjob-missing",
    ]
    messages = {refusal(server, probe) for probe in probes}
    assert len(messages) == 1, messages  # one answer: nothing tells which paths exist
    message = messages.pop()
    assert "no adapter folder <path>" in message
    assert str(layout) not in message and SECRET_BASE not in message and "secret-base" not in message
    models = httpx.get(f"{server.v1}/models").json()["data"]
    assert [m["id"] for m in models if "probe" in m["id"]] == []


def test_errors_inside_the_folder_name_the_path_as_given(server: TuningServer, layout: Path) -> None:
    response = load(server, "empty", "empty")
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "'empty'" in message or message.startswith("empty:"), message
    assert "adapter_config.json" in message and str(layout) not in message


def test_listings_show_names_not_server_paths(server: TuningServer, layout: Path) -> None:
    assert load(server, "alpha", "alpha").status_code == 200
    try:
        for path in ("/adapters", "/adapters/alpha", "/models"):
            text = httpx.get(f"{server.v1}{path}").text
            assert str(layout) not in text and '"path"' not in text, (path, text)
        adapter = httpx.get(f"{server.v1}/adapters/alpha").json()
        assert adapter["name"] == "alpha" and adapter["rank"] == 4
    finally:
        httpx.delete(f"{server.v1}/adapters/alpha")


def test_a_server_without_adapter_folders_loads_none(tiny_server: RunningServer) -> None:
    response = httpx.post(f"{tiny_server.url}/v1/adapters", json={"name": "x", "path": "/tmp"})
    assert response.status_code == 400
    assert "--adapter-dir" in response.json()["error"]["message"]
    assert json.dumps(httpx.get(f"{tiny_server.url}/v1/adapters").json()) == '{"object": "list", "data": []}'
