"""Fireworks' control plane through the fireworks-ai SDK on a live server with API keys: the SDK's own functional
test `test_list_models`, the Model objects of the base model and of LoRA adapters, a LoRA adapter registered
with models.create + its signed-URL upload + validate_upload, then served with `lora.load` and unloaded; a
fine-tuned model unloaded and loaded again; refusals by name; another account's key sees none of it. Also vLLM's
root aliases /tokenize, /detokenize, /ping and /version."""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fireworks
import httpx
import pytest
from adapter_files import write_adapter
from fine_tuning_server import ACCOUNT, TINY_MODEL, TuningServer, start_tuning_server, write_tiny_model
from safetensors import safe_open

from ember.engine.testing import tiny_config
from ember.server.common.api_keys import keys_from_file
from ember.tuning.job_service import tuning_db_path
from ember.tuning.job_store import JobRecord
from ember.tuning.jobs import JobPaths
from ember.tuning.store import TuningStore

pytestmark = pytest.mark.timeout(180)

ALICE, BOB, SERVER_KEY, ADMIN = (
    "sk-alice-1a2b3c4d",
    "sk-bob-5e6f7a8b",
    "sk-server-9c0d1e2f",
    "sk-admin-3a4b5c6d",
)
BASE = f"accounts/{ACCOUNT}/models/{TINY_MODEL}"
TUNED = "accounts/alice/models/alice-tuned"


@dataclass
class ControlPlane:
    server: TuningServer
    model_dir: Path

    def client(self, key: str = ALICE, account: str = "alice") -> fireworks.Fireworks:
        return fireworks.Fireworks(base_url=self.server.url, api_key=key, account_id=account, max_retries=0)

    def chat(self, key: str, model: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(f"{self.server.v1}/chat/completions", json=body, headers=headers, timeout=60)


def seed_succeeded_job(data_dir: Path) -> None:
    """A succeeded job of alice's with its adapter on disk: the server serves its output model at start-up."""
    store = TuningStore(tuning_db_path(data_dir))
    store.insert_job(
        JobRecord(
            id="ftjob-alice-tuned",
            status="succeeded",
            model=TINY_MODEL,
            training_file="file-unused",
            created_at=int(time.time()),
            hyperparameters={},
            metadata={"fireworks": {"account": "alice", "outputModel": TUNED}},
            owner="alice",
        )
    )
    write_adapter(
        JobPaths(data_dir, "ftjob-alice-tuned").adapter, tiny_config("llama", max_position_embeddings=2048), 1
    )


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    root = tmp_path_factory.mktemp("fw-models")
    keys = root / "keys.toml"
    keys.write_text(
        "".join(
            f'[[keys]]\nname = "{a}"\naccount = "{a}"\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"\n'
            for a, k in (("alice", ALICE), ("bob", BOB))
        )
        + f'[[keys]]\nname = "ops"\nadmin = true\nsha256 = "{hashlib.sha256(ADMIN.encode()).hexdigest()}"\n'
    )
    seed_succeeded_job(root / "data")
    model_dir = write_tiny_model(root / "tiny-llama")
    running = start_tuning_server(
        model_dir, root / "data", api_keys=(SERVER_KEY,), tenant_keys=keys_from_file(keys, ACCOUNT)
    )
    yield ControlPlane(running, model_dir)
    running.stop()


def test_sdk_functional_test_list_models(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    """fw-ai-external/python-sdk tests/functional/test_chat_completions_e2e.py::TestModelsE2E::test_list_models,
    pointed at ember through the SDK's own environment variables."""
    monkeypatch.setenv("FIREWORKS_BASE_URL", plane.server.url)
    for key in (ALICE, SERVER_KEY):  # any account's key reads the server's models
        monkeypatch.setenv("FIREWORKS_API_KEY", key)
        client = fireworks.Fireworks()
        models = client.models.list(account_id="fireworks")
        model_list = list(models)
        assert len(model_list) > 0, "Expected at least one model"
        assert [m.name for m in model_list] == [BASE]


def test_base_model_object(plane: ControlPlane) -> None:
    model = plane.client().models.get(TINY_MODEL, account_id=ACCOUNT)
    assert model.name == BASE and model.kind == "HF_BASE_MODEL" and model.state == "READY"
    assert model.context_length == 256 and model.supports_lora and model.tunable
    details = model.base_model_details
    assert (
        details is not None
        and details.api_model_type == "llama"
        and details.checkpoint_format == "HUGGINGFACE"
    )
    with safe_open(str(plane.model_dir / "model.safetensors"), framework="pt") as weights:
        stored = sum(
            weights.get_slice(k).get_shape()[0] * _columns(weights.get_slice(k).get_shape())
            for k in weights.keys()
        )
    assert details.parameter_count == str(stored)
    assert model.conversation_config is not None and "im_start" in (model.conversation_config.template or "")
    assert model.create_time is not None

    masked = plane.client().models.get(TINY_MODEL, account_id=ACCOUNT, read_mask="name,state")
    assert masked.to_dict() == {"name": BASE, "state": "READY"}
    with pytest.raises(fireworks.BadRequestError) as unknown:
        plane.client().models.get(TINY_MODEL, account_id=ACCOUNT, read_mask="weights")
    assert unknown.value.body["error"]["param"] == "readMask"  # type: ignore[index]
    with pytest.raises(fireworks.NotFoundError):
        plane.client().models.get("no-such-model", account_id=ACCOUNT)
    with pytest.raises(fireworks.BadRequestError) as filtered:
        plane.client().models.list(account_id=ACCOUNT, filter="kind=HF_BASE_MODEL")
    assert filtered.value.body["error"]["param"] == "filter"  # type: ignore[index]


def _columns(shape: list[int]) -> int:
    return shape[1] if len(shape) > 1 else 1


def test_fine_tuned_model_is_listed_unloaded_and_loaded_again(plane: ControlPlane) -> None:
    alice = plane.client()
    [tuned] = list(alice.models.list())
    assert tuned.name == TUNED and tuned.kind == "HF_PEFT_ADDON" and tuned.state == "READY"
    assert tuned.fine_tuning_job == "accounts/alice/supervisedFineTuningJobs/ftjob-alice-tuned"
    assert (
        tuned.peft_details is not None and tuned.peft_details.base_model == BASE and tuned.peft_details.r == 4
    )
    assert sorted(tuned.peft_details.target_modules) == ["down_proj", "q_proj", "v_proj"]
    [deployed] = list(alice.lora.list())
    assert deployed.name == "accounts/alice/deployedModels/alice-tuned" and deployed.model == TUNED
    assert (
        deployed.state == "DEPLOYED" and deployed.deployment == f"accounts/{ACCOUNT}/deployments/{TINY_MODEL}"
    )
    assert alice.models.get("alice-tuned").deployed_model_refs[0].name == deployed.name  # type: ignore[index]

    tuned_files = alice.models.get_download_endpoint("alice-tuned").filename_to_signed_urls or {}
    config = httpx.get(tuned_files["adapter_config.json"], timeout=30)
    assert config.status_code == 200 and config.json()["r"] == 4
    forged = httpx.get(
        tuned_files["adapter_config.json"].replace("adapter_config.json", "secret.txt"), timeout=30
    )
    assert forged.status_code == 403
    with pytest.raises(fireworks.BadRequestError):  # the base model's weights are not handed out
        plane.client(SERVER_KEY, ACCOUNT).models.get_download_endpoint(TINY_MODEL)
    with pytest.raises(fireworks.NotFoundError):
        plane.client(BOB, "bob").models.get_download_endpoint("alice-tuned", account_id="alice")

    assert alice.lora.unload("alice-tuned") == {}
    assert plane.chat(ALICE, TUNED).status_code == 404
    assert list(alice.lora.list()) == [] and list(alice.models.list()) == []
    reloaded = alice.lora.load(model=TUNED, display_name="Tuned again")
    assert reloaded.display_name == "Tuned again" and reloaded.state == "DEPLOYED"
    assert plane.chat(ALICE, TUNED).status_code == 200
    with pytest.raises(fireworks.ConflictError):
        alice.lora.load(model=TUNED)


def test_uploaded_adapter_is_validated_loaded_served_and_deleted(plane: ControlPlane, tmp_path: Path) -> None:
    alice = plane.client()
    created = alice.models.create(
        model_id="uploaded-lora",
        model={
            "kind": "HF_PEFT_ADDON",
            "display_name": "Uploaded",
            "peft_details": {"base_model": BASE, "r": 4, "target_modules": ["q_proj"]},
        },
    )
    assert created.state == "UPLOADING" and created.name == "accounts/alice/models/uploaded-lora"
    folder = write_adapter(tmp_path / "uploaded-lora", tiny_config("llama", max_position_embeddings=2048), 7)
    files = {p.name: p for p in folder.iterdir()}
    endpoint = alice.models.get_upload_endpoint(
        "uploaded-lora", filename_to_size={n: str(p.stat().st_size) for n, p in files.items()}
    )
    with pytest.raises(fireworks.ConflictError):  # not every file is there yet
        alice.models.validate_upload("uploaded-lora")
    for name, url in (endpoint.filename_to_signed_urls or {}).items():
        assert httpx.put(url, content=files[name].read_bytes(), timeout=30).status_code == 200  # no key
    assert alice.models.validate_upload("uploaded-lora").warnings == []
    ready = alice.models.get("uploaded-lora")
    assert ready.state == "READY" and ready.peft_details is not None and ready.peft_details.r == 4
    assert "accounts/alice/models/uploaded-lora" in [m.name for m in alice.models.list()]
    assert plane.chat(ALICE, "accounts/alice/models/uploaded-lora").status_code == 404  # not loaded yet
    downloads = alice.models.get_download_endpoint("uploaded-lora").filename_to_signed_urls or {}
    assert sorted(downloads) == ["adapter_config.json", "adapter_model.safetensors"]
    for name, url in downloads.items():
        assert httpx.get(url, timeout=30).content == files[name].read_bytes()  # no key: the URL is signed

    deployed = alice.lora.load(model="accounts/alice/models/uploaded-lora", description="first try")
    assert (
        deployed.name == "accounts/alice/deployedModels/uploaded-lora" and deployed.display_name == "Uploaded"
    )
    reply = plane.chat(ALICE, "accounts/alice/models/uploaded-lora")
    assert reply.status_code == 200 and reply.json()["model"] == "accounts/alice/models/uploaded-lora"
    assert alice.lora.get("uploaded-lora").description == "first try"
    assert alice.lora.update("uploaded-lora", display_name="Renamed").display_name == "Renamed"
    assert alice.models.get("uploaded-lora").display_name == "Renamed"
    with pytest.raises(fireworks.ConflictError):  # deployed: unload first
        alice.models.delete("uploaded-lora")

    bob = plane.client(BOB, "bob")
    assert plane.chat(BOB, "accounts/alice/models/uploaded-lora").status_code == 404
    for call in (
        lambda: bob.lora.get("uploaded-lora", account_id="alice"),
        lambda: bob.models.get("uploaded-lora", account_id="alice"),
        lambda: bob.lora.unload("uploaded-lora", account_id="alice"),
        lambda: bob.models.get("uploaded-lora", account_id=ACCOUNT),
    ):
        with pytest.raises(fireworks.NotFoundError):
            call()
    assert [m.name for m in bob.models.list(account_id=ACCOUNT)] == [BASE]

    assert alice.lora.unload("uploaded-lora") == {}
    assert plane.chat(ALICE, "accounts/alice/models/uploaded-lora").status_code == 404
    assert alice.models.delete("uploaded-lora") == {}
    with pytest.raises(fireworks.NotFoundError):
        alice.models.get("uploaded-lora")


def test_refusals_name_their_field(plane: ControlPlane, tmp_path: Path) -> None:
    alice = plane.client()
    refusals = [
        (lambda: alice.lora.load(model=TUNED, serverless=True), "serverless"),
        (lambda: alice.lora.load(model=TUNED, replace_merged_addon=True), "replaceMergedAddon"),
        (lambda: alice.lora.load(model=TUNED, deployment="accounts/alice/deployments/other"), "deployment"),
        (lambda: alice.lora.load(model=TUNED, default=False), "default"),
        (lambda: alice.lora.load(model=TUNED, public=True), "public"),
        (lambda: alice.lora.load(model="accounts/bob/models/x"), "model"),
        (lambda: alice.models.create(model_id="base", model={"kind": "HF_BASE_MODEL"}), "model.kind"),
        (
            lambda: alice.models.create(
                model_id="x",
                model={
                    "peft_details": {
                        "base_model": "accounts/fireworks/models/other",
                        "r": 4,
                        "target_modules": [],
                    }
                },
            ),
            "model.peftDetails.baseModel",
        ),
        (
            lambda: alice.models.create(model_id="x", model={"hugging_face_url": "https://huggingface.co/x"}),
            "model.huggingFaceUrl",
        ),
        (lambda: alice.models.create(model_id="Bad_Id"), "modelId"),
        (lambda: plane.client(SERVER_KEY, ACCOUNT).models.update(TINY_MODEL, display_name="x"), "model"),
        (lambda: alice.models.update("alice-tuned", context_length=64), "contextLength"),
    ]
    for call, param in refusals:
        with pytest.raises(fireworks.BadRequestError) as refused:
            call()
        assert refused.value.body["error"]["param"] == param  # type: ignore[index]
    with pytest.raises(fireworks.NotFoundError):
        alice.lora.load(model="accounts/alice/models/never-made")
    with pytest.raises(fireworks.NotFoundError):  # only reading the server's models is open to every key
        alice.models.update(TINY_MODEL, account_id=ACCOUNT, display_name="x")

    # an adapter of another shape fails validation and the model stays UPLOADING
    alice.models.create(model_id="wrong-shape", model={})
    folder = write_adapter(tmp_path / "wrong", tiny_config("llama", hidden_size=32, head_dim=8), 3)
    files = {p.name: p for p in folder.iterdir()}
    urls = alice.models.get_upload_endpoint(
        "wrong-shape", filename_to_size={n: str(p.stat().st_size) for n, p in files.items()}
    )
    for name, url in (urls.filename_to_signed_urls or {}).items():
        assert httpx.put(url, content=files[name].read_bytes(), timeout=30).status_code == 200
    with pytest.raises(fireworks.BadRequestError) as invalid:
        alice.models.validate_upload("wrong-shape")
    assert invalid.value.body["error"]["code"] == "invalid_adapter" and str(tmp_path) not in str(
        invalid.value.body
    )  # type: ignore[index]
    assert alice.models.get("wrong-shape").state == "UPLOADING"
    assert alice.models.delete("wrong-shape") == {}


def test_vllm_root_aliases(plane: ControlPlane) -> None:
    url, auth = plane.server.url, {"Authorization": f"Bearer {ALICE}"}
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": "Hello world"}, headers=auth, timeout=30)
    assert tokens.status_code == 200 and tokens.json()["count"] == len(tokens.json()["tokens"]) > 0
    text = httpx.post(f"{url}/detokenize", json={"tokens": tokens.json()["tokens"]}, headers=auth, timeout=30)
    assert text.status_code == 200 and text.json()["prompt"] == "Hello world"
    assert (
        httpx.post(f"{url}/tokenize", json={"prompt": "x"}, timeout=30).status_code == 401
    )  # keyed like /v1
    bad = httpx.post(f"{url}/tokenize", json={"prompt": 5}, headers=auth, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    assert httpx.get(f"{url}/ping", timeout=30).status_code == 200
    assert httpx.post(f"{url}/ping", timeout=30).status_code == 200
    version = httpx.get(f"{url}/version", timeout=30)
    assert version.status_code == 200 and version.json()["version"]


def test_an_account_of_dot_dot_reaches_no_folder(plane: ControlPlane) -> None:
    """An admin key may use any account, and HTTP delivers `..` as a path segment: it must not lead out of the
    data directory's models folder (a model id of `files` there would have been data/files)."""
    port = int(plane.server.url.rsplit(":", 1)[1])
    body = b'{"modelId": "files"}'
    for account in (b"..", b"%2E%2E"):
        request = (
            b"POST /v1/accounts/" + account + b"/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + ADMIN.encode() + b"\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(request)
            status_line = raw.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 4"), status_line
    assert not (plane.server.data_dir / "files.json").exists()
    assert not (plane.server.data_dir / "model-files" / ".." / "files" / "manifest.json").exists()
