"""Fireworks datasets through the fireworks-ai SDK's own methods on a live https server with API keys: the SDK's
multi-file helper `upload_dataset_shards` (getUploadEndpoint, a credential-free PUT per file to its signed
URL, validateUpload), the signed download URL, PATCH, and cancelling a supervised fine-tuning job; forged,
altered or wrong-sized signed requests are refused, and another account's key sees nothing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fireworks
import httpx
import pytest
import trustme
from fine_tuning_server import (
    TINY_MODEL,
    TuningServer,
    chat_row,
    jsonl,
    start_tuning_server,
    write_tiny_model,
)
from fireworks.lib.dataset_upload import count_dataset_examples, upload_dataset_shards

from ember.server.common.api_keys import keys_from_file
from ember.server.common.errors import APIError
from ember.server.fine_tuning.signed_urls import UrlSigner

pytestmark = pytest.mark.timeout(180)

ALICE, BOB = "sk-alice-0d9c8b7a", "sk-bob-6e5f4a3b"
ROWS_A = [chat_row(f"Question {i}?", f"Answer {i}.") for i in range(3)]
ROWS_B = [chat_row(f"Other question {i}?", f"Other answer {i}.") for i in range(2)]


@dataclass
class SecureServer:
    server: TuningServer
    ca_file: Path
    clients: list[fireworks.Fireworks] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, key: str = ALICE) -> fireworks.Fireworks:
        # The CA goes through SSL_CERT_FILE (set by the `trusted` fixture), as the SDK's helper builds its own
        # plain httpx client for the signed URLs.
        client = fireworks.Fireworks(base_url=self.url, api_key=key, account_id="alice", max_retries=0)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        # Clients close their TLS connections first: an idle one left open holds the server's shutdown for
        # asyncio's 30 s SSL shutdown timeout.
        for client in self.clients:
            client.close()
        self.server.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    root = tmp_path_factory.mktemp("fw-transfer")
    authority = trustme.CA()
    pem = root / "server.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = root / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    keys = root / "keys.toml"
    keys.write_text(
        "".join(
            f'[[keys]]\nname = "{account}"\naccount = "{account}"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
            for account, key in (("alice", ALICE), ("bob", BOB))
        )
    )
    running = start_tuning_server(
        write_tiny_model(root / "tiny-llama"),
        root / "data",
        tenant_keys=keys_from_file(keys, "fireworks"),
        uvicorn_options={"ssl_certfile": str(pem), "ssl_keyfile": str(pem)},
    )
    secure = SecureServer(running, ca_file)
    yield secure
    secure.stop()


@pytest.fixture
def trusted(secure: SecureServer, monkeypatch: pytest.MonkeyPatch) -> SecureServer:
    monkeypatch.setenv("SSL_CERT_FILE", str(secure.ca_file))
    return secure


def write_shards(folder: Path) -> Path:
    folder.mkdir()
    (folder / "part-a.jsonl").write_bytes(jsonl(ROWS_A))
    (folder / "part-b.jsonl").write_bytes(jsonl(ROWS_B)[:-1])  # no final line break: joined with one
    return folder


def test_sdk_shard_upload_helper_makes_the_dataset_ready_and_downloadable(
    trusted: SecureServer, tmp_path: Path
) -> None:
    client = trusted.client()
    shards = write_shards(tmp_path / "shards")
    created = client.datasets.create(
        dataset_id="sharded",
        dataset={
            "display_name": "Sharded",
            "user_uploaded": {},
            "example_count": str(count_dataset_examples(str(shards))),
        },
    )
    assert created.state == "UPLOADING"

    upload_dataset_shards(client, "sharded", str(shards))

    ready = client.datasets.get("sharded")
    assert ready.state == "READY" and ready.example_count == "5" and ready.display_name == "Sharded"
    download = client.datasets.get_download_endpoint("sharded")
    [(name, url)] = download.filename_to_signed_urls.items()
    assert name == "part-a.jsonl, part-b.jsonl" and url.startswith(
        f"{trusted.url}/dataset-files/alice/sharded/"
    )
    body = httpx.get(url, timeout=30)  # no API key: the signature is the permission
    assert body.status_code == 200 and body.content == jsonl(ROWS_A + ROWS_B)
    lineage = client.datasets.get_download_endpoint("sharded", download_lineage=True)
    assert list(lineage.filename_to_signed_urls) == ["sharded/part-a.jsonl, part-b.jsonl"]

    # The dataset took its upload: no more upload URLs, and a second validation is refused
    with pytest.raises(fireworks.ConflictError):
        client.datasets.get_upload_endpoint("sharded", filename_to_size={"more.jsonl": "10"})
    with pytest.raises(fireworks.ConflictError):
        client.datasets.validate_upload("sharded", body={})


def test_signed_urls_refuse_forgery_other_paths_and_wrong_sizes(trusted: SecureServer) -> None:
    client = trusted.client()
    client.datasets.create(dataset_id="guarded", dataset={"display_name": "Guarded"})
    data = jsonl(ROWS_A)
    urls = client.datasets.get_upload_endpoint("guarded", filename_to_size={"train.jsonl": str(len(data))})
    url = urls.filename_to_signed_urls["train.jsonl"]
    with httpx.Client(timeout=30) as http:
        forged = http.put(url[:-4] + ("0000" if not url.endswith("0000") else "1111"), content=data)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "signature_invalid"
        other_file = http.put(url.replace("/train.jsonl?", "/evil.jsonl?"), content=data)
        assert other_file.status_code == 403
        as_download = http.get(url)  # a PUT signature does not sign a GET
        assert as_download.status_code == 403
        unsigned = http.put(url.split("?")[0], content=data)
        assert unsigned.status_code == 403
        short = http.put(url, content=data[:-5])
        assert short.status_code == 400 and "registered as" in short.json()["error"]["message"]
        long = http.put(url, content=data + b"{}\n", headers={"Content-Length": str(len(data) + 3)})
        assert long.status_code == 400 and long.json()["error"]["param"] == "Content-Length"

        # before the file arrived, validation names what is missing; afterwards it passes
        with pytest.raises(fireworks.ConflictError) as missing:
            client.datasets.validate_upload("guarded", body={})
        assert "train.jsonl" in str(missing.value)
        assert http.put(url, content=data).status_code == 200
    client.datasets.validate_upload("guarded", body={})
    assert client.datasets.get("guarded").state == "READY"


def test_upload_endpoint_checks_its_file_map(trusted: SecureServer) -> None:
    client = trusted.client()
    client.datasets.create(dataset_id="names", dataset={})
    for bad, param in (
        ({"../escape.jsonl": "10"}, "filenameToSize"),
        ({"ok.jsonl": "-3"}, "filenameToSize.ok.jsonl"),
        ({"ok.jsonl": "ten"}, "filenameToSize.ok.jsonl"),
        ({"big.jsonl": str(10**9)}, "filenameToSize"),
        ({}, "filenameToSize"),
    ):
        with pytest.raises(fireworks.BadRequestError) as refused:
            client.datasets.get_upload_endpoint("names", filename_to_size=bad)
        assert refused.value.body["error"]["param"] == param, bad  # type: ignore[index]
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.get_upload_endpoint("no-such-dataset", filename_to_size={"a.jsonl": "1"})
    with pytest.raises(fireworks.BadRequestError) as unknown_field:  # a readMask is honoured, not ignored
        client.datasets.get_upload_endpoint("names", filename_to_size={"a.jsonl": "1"}, read_mask="name")
    assert unknown_field.value.body["error"]["param"] == "readMask"  # type: ignore[index]
    masked = client.datasets.get_upload_endpoint(
        "names", filename_to_size={"a.jsonl": "1"}, read_mask="filenameToSignedUrls"
    )
    assert list(masked.filename_to_signed_urls or {}) == ["a.jsonl"]


def test_rejected_shards_report_their_line_and_delete_the_dataset(trusted: SecureServer) -> None:
    client = trusted.client()
    client.datasets.create(dataset_id="broken", dataset={})
    data = jsonl([*ROWS_A, "{not json"])
    url = client.datasets.get_upload_endpoint("broken", filename_to_size={"bad.jsonl": str(len(data))})
    assert httpx.put(url.filename_to_signed_urls["bad.jsonl"], content=data, timeout=30).status_code == 200
    with pytest.raises(fireworks.BadRequestError) as rejected:
        client.datasets.validate_upload("broken", body={})
    assert rejected.value.body["error"]["param"] == "line 4"  # type: ignore[index]
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.get("broken")
    assert not (trusted.server.data_dir / "dataset-uploads" / "alice" / "broken").exists()


def test_patch_changes_the_display_name_and_refuses_derived_fields(trusted: SecureServer) -> None:
    client = trusted.client()
    client.datasets.create(dataset_id="renamed", dataset={"display_name": "Before"})
    updated = client.datasets.update("renamed", display_name="After")
    assert updated.display_name == "After" and client.datasets.get("renamed").display_name == "After"
    for kwargs, param in (
        ({"format": "COMPLETION"}, "format"),
        ({"external_url": "gs://bucket/data.jsonl"}, "externalUrl"),
        ({"example_count": "99"}, "exampleCount"),
    ):
        with pytest.raises(fireworks.BadRequestError) as refused:
            client.datasets.update("renamed", **kwargs)  # type: ignore[arg-type]
        assert refused.value.body["error"]["param"] == param  # type: ignore[index]
    assert client.datasets.update("renamed", format="CHAT", user_uploaded={}).display_name == "After"
    with pytest.raises(fireworks.NotFoundError):
        client.datasets.update("never-made", display_name="x")


def test_other_accounts_see_none_of_it(trusted: SecureServer) -> None:
    alice, bob = trusted.client(), trusted.client(BOB)
    alice.datasets.create(dataset_id="private", dataset={})
    for call in (
        lambda: bob.datasets.get_upload_endpoint(
            "private", account_id="alice", filename_to_size={"a.jsonl": "1"}
        ),
        lambda: bob.datasets.validate_upload("private", account_id="alice", body={}),
        lambda: bob.datasets.get_download_endpoint("private", account_id="alice"),
        lambda: bob.datasets.update("private", account_id="alice", display_name="mine"),
    ):
        with pytest.raises(fireworks.NotFoundError):
            call()
    with pytest.raises(fireworks.NotFoundError):  # bob's own account has no such dataset either
        bob.datasets.get_upload_endpoint("private", account_id="bob", filename_to_size={"a.jsonl": "1"})


def test_sdk_cancels_a_supervised_fine_tuning_job(trusted: SecureServer) -> None:
    client = trusted.client()
    client.datasets.create(dataset_id="to-cancel", dataset={})
    client.datasets.upload("to-cancel", file=("train.jsonl", jsonl(ROWS_A + ROWS_B)))
    job = client.supervised_fine_tuning_jobs.create(
        dataset="to-cancel",
        base_model=f"accounts/fireworks/models/{TINY_MODEL}",
        epochs=400,
        supervised_fine_tuning_job_id="cancel-me",
    )
    assert job.name == "accounts/alice/supervisedFineTuningJobs/cancel-me"
    assert client.supervised_fine_tuning_jobs.cancel("cancel-me", body={}) == {}
    assert client.supervised_fine_tuning_jobs.get("cancel-me").state == "JOB_STATE_CANCELLED"
    with pytest.raises(fireworks.BadRequestError):  # it already ended
        client.supervised_fine_tuning_jobs.cancel("cancel-me", body={})
    with pytest.raises(fireworks.NotFoundError):
        trusted.client(BOB).supervised_fine_tuning_jobs.cancel("cancel-me", account_id="bob", body={})
    with pytest.raises(fireworks.NotFoundError):
        client.supervised_fine_tuning_jobs.cancel("no-such-job", body={})


def test_signed_urls_expire() -> None:
    signer = UrlSigner(lifetime_s=-1)
    url = signer.sign("https://example.test/", "GET", "/dataset-files/a/b/c.jsonl")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    with pytest.raises(APIError) as expired:
        signer.verify("GET", "/dataset-files/a/b/c.jsonl", query["expires"], query["signature"])
    assert expired.value.status == 403
    fresh = UrlSigner(secret=b"k" * 32)
    url = fresh.sign("https://example.test", "GET", "/dataset-files/a/b/c.jsonl")
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    fresh.verify("GET", "/dataset-files/a/b/c.jsonl", query["expires"], query["signature"])
    with pytest.raises(APIError):  # another server's secret
        UrlSigner(secret=b"j" * 32).verify(
            "GET", "/dataset-files/a/b/c.jsonl", query["expires"], query["signature"]
        )
    assert json.loads(json.dumps(query))  # plain strings
