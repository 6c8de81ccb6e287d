"""Tenancy on a live server with the fine-tuning API: keys from a hashed keys file act for their accounts; a key
never sees, reads, deletes or trains on another account's files, datasets, jobs or adapters (404, as for a missing
one); an admin key sees all; the --api-key keys act for the server's own account, which also owns the rows
written before tenancy."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from adapter_files import write_adapter
from fine_tuning_server import (
    ACCOUNT,
    TINY_MODEL,
    TuningServer,
    as_file,
    chat_row,
    jsonl,
    start_tuning_server,
    wait_for,
    write_tiny_model,
)

from ember.engine.testing import tiny_config
from ember.server.common.api_keys import keys_from_file
from ember.tuning.job_service import tuning_db_path
from ember.tuning.job_store import JobRecord
from ember.tuning.jobs import JobPaths
from ember.tuning.store import TuningStore
from ember.tuning.upload_store import FileRecord

pytestmark = pytest.mark.timeout(180)

ALICE, BOB, ADMIN, SERVER = "sk-alice-4f1c9a", "sk-bob-77d2e0b1", "sk-admin-90ab12cd", "sk-server-5e6f7a8b"
ROWS = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(4)]
LEGACY_FILE = "file-000000000000000000legacy"


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys_file(path: Path) -> Path:
    path.write_text(
        f"""
[[keys]]
name = "alice-laptop"
account = "alice"
sha256 = "{sha256(ALICE)}"

[[keys]]
name = "bob"
account = "bob"
sha256 = "{sha256(BOB).upper()}"

[[keys]]
name = "ops"
admin = true
sha256 = "{sha256(ADMIN)}"
"""
    )
    return path


def seed_rows_from_before_tenancy(data_dir: Path) -> None:
    """A file and a succeeded job without an owner (as a version-1 db migrates), and a succeeded job of alice's,
    each job with its adapter on disk: the server serves both adapters at start-up."""
    store = TuningStore(tuning_db_path(data_dir))
    (data_dir / "files").mkdir(parents=True, exist_ok=True)
    (data_dir / "files" / f"{LEGACY_FILE}.jsonl").write_bytes(jsonl(ROWS))
    store.insert_file(
        FileRecord(
            LEGACY_FILE,
            10,
            int(time.time()),
            "old.jsonl",
            "fine-tune",
            "processed",
            f"files/{LEGACY_FILE}.jsonl",
        )
    )
    config = tiny_config("llama", max_position_embeddings=2048)
    for seed, (job_id, owner) in enumerate((("ftjob-legacy", None), ("ftjob-alice", "alice")), start=1):
        store.insert_job(
            JobRecord(
                id=job_id,
                status="succeeded",
                model=TINY_MODEL,
                training_file=LEGACY_FILE,
                created_at=int(time.time()),
                hyperparameters={},
                metadata={"fireworks": {"account": owner or ACCOUNT}},
                owner=owner,
            )
        )
        write_adapter(JobPaths(data_dir, job_id).adapter, config, seed)


@dataclass
class Tenants:
    server: TuningServer
    adapter_dir: Path

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.server.v1, api_key=key, max_retries=0)

    def get(self, key: str, path: str) -> httpx.Response:
        return httpx.get(f"{self.server.v1}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def post(self, key: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(f"{self.server.v1}{path}", headers=headers, timeout=60, **kwargs)  # type: ignore[arg-type]

    def delete(self, key: str, path: str) -> httpx.Response:
        return httpx.delete(f"{self.server.v1}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("tenancy")
    seed_rows_from_before_tenancy(root / "data")
    adapter_dir = root / "adapters"
    write_adapter(adapter_dir / "shared-style", tiny_config("llama", max_position_embeddings=2048), 7)
    running = start_tuning_server(
        write_tiny_model(root / TINY_MODEL),
        root / "data",
        api_keys=(SERVER,),
        tenant_keys=keys_from_file(write_keys_file(root / "keys.toml"), ACCOUNT),
        adapter_dirs=(adapter_dir,),
    )
    yield Tenants(running, adapter_dir)
    running.stop()


def assert_not_found(call: object) -> None:
    assert callable(call)
    with pytest.raises(openai.NotFoundError):
        call()


def test_a_file_is_its_owners_alone_and_the_admins(tenants: Tenants) -> None:
    alice, bob, admin = tenants.client(ALICE), tenants.client(BOB), tenants.client(ADMIN)
    mine = alice.files.create(file=as_file(ROWS), purpose="fine-tune")
    assert alice.files.retrieve(mine.id).id == mine.id
    assert mine.id in [f.id for f in alice.files.list()]

    assert mine.id not in [f.id for f in bob.files.list()]
    assert_not_found(lambda: bob.files.retrieve(mine.id))
    assert_not_found(lambda: bob.files.content(mine.id))
    assert_not_found(lambda: bob.files.delete(mine.id))
    with pytest.raises(openai.BadRequestError, match="unknown pagination cursor"):
        bob.files.list(after=mine.id)  # another account's id is no cursor either
    missing = tenants.get(BOB, "/files/file-doesnotexist").json()["error"]["message"]
    foreign = tenants.get(BOB, f"/files/{mine.id}").json()["error"]["message"]
    assert foreign == missing.replace("file-doesnotexist", mine.id)  # the same words as for a missing file

    assert admin.files.retrieve(mine.id).id == mine.id
    assert mine.id in [f.id for f in admin.files.list()]
    assert alice.files.content(mine.id).read() == jsonl(ROWS)  # bob's attempts changed nothing
    assert admin.files.delete(mine.id).deleted
    assert_not_found(lambda: alice.files.retrieve(mine.id))


def test_a_dataset_lives_in_its_account(tenants: Tenants) -> None:
    datasets = "/accounts/alice/datasets"
    assert tenants.post(ALICE, datasets, json={"datasetId": "facts"}).status_code == 200
    upload = tenants.post(ALICE, f"{datasets}/facts:upload", files={"file": ("f.jsonl", jsonl(ROWS))})
    assert upload.status_code == 200, upload.text
    assert tenants.get(ALICE, f"{datasets}/facts").json()["state"] == "READY"

    for method, path in (
        ("GET", f"{datasets}/facts"),
        ("GET", datasets),
        ("DELETE", f"{datasets}/facts"),
        ("POST", datasets),
    ):
        response = httpx.request(
            method,
            f"{tenants.server.v1}{path}",
            headers={"Authorization": f"Bearer {BOB}"},
            json={"datasetId": "sneaky"} if method == "POST" else None,
        )
        assert response.status_code == 404, (method, path, response.text)
        assert "account 'alice' not found" in response.json()["error"]["message"]
    assert [d["name"] for d in tenants.get(BOB, "/accounts/bob/datasets").json()["datasets"]] == []

    assert tenants.get(ADMIN, f"{datasets}/facts").status_code == 200
    names = [d["name"] for d in tenants.get(ALICE, datasets).json()["datasets"]]
    assert names == ["accounts/alice/datasets/facts"]


def test_a_job_is_its_owners_alone_and_cannot_train_on_others_data(tenants: Tenants) -> None:
    alice, bob, admin = tenants.client(ALICE), tenants.client(BOB), tenants.client(ADMIN)
    training_file = alice.files.create(file=as_file(ROWS), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError, match=f"no file '{training_file}'"):
        bob.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file)
    with pytest.raises(openai.BadRequestError, match="no file or dataset"):
        bob.fine_tuning.jobs.create(model=TINY_MODEL, training_file="accounts/alice/datasets/facts")

    job = alice.fine_tuning.jobs.create(model=TINY_MODEL, training_file=training_file)
    try:
        assert job.id in [j.id for j in alice.fine_tuning.jobs.list()]
        assert job.id not in [j.id for j in bob.fine_tuning.jobs.list()]
        assert_not_found(lambda: bob.fine_tuning.jobs.retrieve(job.id))
        assert_not_found(lambda: bob.fine_tuning.jobs.list_events(job.id))
        assert_not_found(lambda: bob.fine_tuning.jobs.checkpoints.list(job.id))
        assert_not_found(lambda: bob.fine_tuning.jobs.cancel(job.id))
        fireworks_jobs = "/accounts/bob/supervisedFineTuningJobs"
        assert tenants.get(BOB, f"{fireworks_jobs}/{job.id}").status_code == 404
        assert tenants.delete(BOB, f"{fireworks_jobs}/{job.id}").status_code == 404
        assert tenants.post(BOB, f"{fireworks_jobs}/{job.id}:resume").status_code == 404
        assert job.id not in [
            j["name"] for j in tenants.get(BOB, fireworks_jobs).json()["supervisedFineTuningJobs"]
        ]
        assert tenants.get(BOB, f"/accounts/alice/supervisedFineTuningJobs/{job.id}").status_code == 404
        squatting = tenants.post(
            BOB,
            fireworks_jobs,
            json={"dataset": "d", "baseModel": TINY_MODEL, "outputModel": "accounts/alice/models/x"},
        )
        assert squatting.status_code == 400 and squatting.json()["error"]["param"] == "outputModel"

        assert admin.fine_tuning.jobs.retrieve(job.id).id == job.id
        assert job.id in [j.id for j in admin.fine_tuning.jobs.list()]
        fireworks_job = tenants.get(ALICE, f"/accounts/alice/supervisedFineTuningJobs/{job.id}").json()
        assert fireworks_job["name"] == f"accounts/alice/supervisedFineTuningJobs/{job.id}"
        assert fireworks_job["outputModel"] == f"accounts/alice/models/{job.id}"
    finally:
        assert alice.fine_tuning.jobs.cancel(job.id).status == "cancelled"


def test_fine_tuned_models_are_listed_and_callable_for_their_owner_only(tenants: Tenants) -> None:
    def models(key: str) -> set[str]:
        return {m.id for m in tenants.client(key).models.list()}

    alice_model, legacy_model = "accounts/alice/models/ftjob-alice", f"accounts/{ACCOUNT}/models/ftjob-legacy"
    assert f"accounts/{ACCOUNT}/models/ftjob-alice" in models(ALICE)
    assert not any("ftjob-alice" in m for m in models(BOB) | models(SERVER))
    assert any("ftjob-legacy" in m for m in models(SERVER)) and not any(
        "ftjob-legacy" in m for m in models(BOB)
    )
    assert any("ftjob-alice" in m for m in models(ADMIN)) and any("ftjob-legacy" in m for m in models(ADMIN))

    def chat(key: str, model: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        return tenants.post(key, "/chat/completions", json=body)

    assert chat(ALICE, alice_model).status_code == 200
    for key, model in (
        (BOB, alice_model),
        (BOB, "ftjob-alice"),
        (SERVER, alice_model),
        (ALICE, legacy_model),
    ):
        refused = chat(key, model)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
        assert tenants.get(key, f"/models/{model}").status_code == 404
    assert chat(SERVER, legacy_model).status_code == 200 and chat(ADMIN, alice_model).status_code == 200
    # every surface that names a model: completions, embeddings, tokenize, Anthropic's messages
    for path, body in (
        ("/completions", {"prompt": "Hi", "max_tokens": 2}),
        ("/embeddings", {"input": "Hi"}),
        ("/tokenize", {"prompt": "Hi"}),
        ("/messages", {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}),
    ):
        assert tenants.post(ALICE, path, json={**body, "model": alice_model}).status_code == 200, path
        refused = tenants.post(BOB, path, json={**body, "model": alice_model})
        assert refused.status_code == 404, (path, refused.text)


def test_adapters_a_key_loads_are_its_own(tenants: Tenants) -> None:
    loaded = tenants.post(BOB, "/adapters", json={"name": "bob-style", "path": "shared-style"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["owned_by"] == "bob"
    assert [a["name"] for a in tenants.get(ALICE, "/adapters").json()["data"]] == ["ftjob-alice"]
    assert "bob-style" in [a["name"] for a in tenants.get(BOB, "/adapters").json()["data"]]
    assert tenants.get(ALICE, "/adapters/bob-style").status_code == 404
    assert tenants.delete(ALICE, "/adapters/bob-style").status_code == 404
    assert "bob-style" in [a["name"] for a in tenants.get(ADMIN, "/adapters").json()["data"]]

    # the data directory's adapter folders: only those of jobs the key sees
    for path in ("adapters/ftjob-alice", "jobs/ftjob-alice/../../adapters/ftjob-alice"):
        refused = tenants.post(BOB, "/adapters", json={"name": "stolen", "path": path})
        assert refused.status_code == 400 and "no adapter folder" in refused.json()["error"]["message"]
    own = tenants.post(ALICE, "/adapters", json={"name": "alice-again", "path": "adapters/ftjob-alice"})
    assert own.status_code == 200, own.text
    assert tenants.delete(ALICE, "/adapters/alice-again").status_code == 200
    assert tenants.delete(BOB, "/adapters/bob-style").status_code == 200


def test_an_adapter_an_admin_loads_serves_every_key_and_only_admins_unload_it(tenants: Tenants) -> None:
    loaded = tenants.post(ADMIN, "/adapters", json={"name": "house-style", "path": "shared-style"})
    assert loaded.status_code == 200 and loaded.json()["owned_by"] is None
    try:
        for key in (ALICE, BOB, SERVER):
            assert "house-style" in [a["name"] for a in tenants.get(key, "/adapters").json()["data"]]
        body = {"model": "house-style", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert tenants.post(BOB, "/chat/completions", json=body).status_code == 200
        refused = tenants.delete(BOB, "/adapters/house-style")
        assert refused.status_code == 403 and "only an admin key" in refused.json()["error"]["message"]
    finally:
        assert tenants.delete(ADMIN, "/adapters/house-style").status_code == 200


def test_the_server_key_is_the_servers_account_and_owns_the_rows_from_before(tenants: Tenants) -> None:
    server, alice = tenants.client(SERVER), tenants.client(ALICE)
    assert LEGACY_FILE in [f.id for f in server.files.list()]
    assert server.files.content(LEGACY_FILE).read() == jsonl(ROWS)
    assert LEGACY_FILE not in [f.id for f in alice.files.list()]
    assert_not_found(lambda: alice.files.retrieve(LEGACY_FILE))
    assert "ftjob-legacy" in [j.id for j in server.fine_tuning.jobs.list()]
    assert_not_found(lambda: alice.fine_tuning.jobs.retrieve("ftjob-legacy"))

    created = server.files.create(file=as_file(ROWS), purpose="fine-tune")
    assert_not_found(lambda: alice.files.retrieve(created.id))
    assert tenants.get(SERVER, f"/accounts/{ACCOUNT}/datasets").status_code == 200
    refused = tenants.get(SERVER, "/accounts/alice/datasets")
    assert refused.status_code == 404
    assert refused.json()["error"]["message"] == (
        "account 'alice' not found; this API key acts for account 'fireworks'"
    )
    server.files.delete(created.id)


def test_wrong_or_missing_keys_still_get_401(tenants: Tenants) -> None:
    with pytest.raises(openai.AuthenticationError):
        tenants.client(sha256(ALICE)).files.list()  # the stored hash is not a key
    assert httpx.get(f"{tenants.server.v1}/files").status_code == 401


def test_a_batch_and_its_files_are_its_owners_alone_and_the_admins(tenants: Tenants) -> None:
    alice, bob, admin = tenants.client(ALICE), tenants.client(BOB), tenants.client(ADMIN)
    line = {
        "custom_id": "only",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"model": TINY_MODEL, "prompt": "Hi", "max_tokens": 2},
    }
    requests = alice.files.create(file=as_file([line]), purpose="batch")
    assert_not_found(
        lambda: bob.batches.create(
            input_file_id=requests.id, endpoint="/v1/completions", completion_window="24h"
        )
    )
    batch = alice.batches.create(
        input_file_id=requests.id, endpoint="/v1/completions", completion_window="24h"
    )
    assert_not_found(lambda: bob.batches.retrieve(batch.id))
    assert_not_found(lambda: bob.batches.cancel(batch.id))
    assert batch.id not in [b.id for b in bob.batches.list()]
    wait_for(lambda: alice.batches.retrieve(batch.id).status == "completed", 60, "alice's batch")
    output = alice.batches.retrieve(batch.id).output_file_id
    assert output is not None and alice.files.content(output).text.count("\n") == 1
    assert_not_found(lambda: bob.files.content(output))
    assert admin.batches.retrieve(batch.id).id == batch.id

    jobs = "/accounts/alice/batchInferenceJobs"
    sneaky = tenants.post(BOB, jobs, json={"model": TINY_MODEL, "inputDatasetId": "facts"})
    assert sneaky.status_code == 404 and "account 'alice' not found" in sneaky.json()["error"]["message"]
    assert tenants.get(BOB, "/accounts/bob/batchInferenceJobs").json()["batchInferenceJobs"] == []
