"""`ember serve --ssl-certfile/--ssl-keyfile`: https, so the fireworks-ai SDK's dataset upload helper (which PUTs
only to https signed URLs) works against `ember serve` itself; a bad pair of flags is refused before the model loads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import fireworks
import pytest
import trustme
from fireworks.lib.dataset_upload import upload_dataset_shards

from ember.bench.http_server import free_port, wait_until_healthy
from ember.engine.testing import write_tiny_hf_folder
from ember.serve_access import AccessConfigError, check_tls_files

pytestmark = pytest.mark.timeout(300)


def test_sdk_upload_helper_against_ember_serve_over_https(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    authority = trustme.CA()
    pem, ca = tmp_path / "server.pem", tmp_path / "ca.pem"
    authority.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    authority.cert_pem.write_to_path(str(ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the helper's own httpx client trusts the test CA this way
    port, log = free_port(), tmp_path / "serve.log"
    model = write_tiny_hf_folder(tmp_path / "tiny-llama", max_position_embeddings=2048)  # loads in a moment
    command = [sys.executable, "-m", "ember.cli", "serve", "--model", str(model), "--port", str(port)]
    command += ["--threads", "1", "--kv-cache-gib", "0.05", "--data-dir", str(tmp_path / "data")]
    command += ["--ssl-certfile", str(pem), "--ssl-keyfile", str(pem)]
    shards = tmp_path / "shards"
    shards.mkdir()
    row = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    for name, rows in (("a.jsonl", 2), ("b.jsonl", 1)):
        (shards / name).write_text((json.dumps(row) + "\n") * rows)
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"https://127.0.0.1:{port}"
            wait_until_healthy(server, base, log, timeout_s=180)
            client = fireworks.Fireworks(
                base_url=base, api_key="unused", account_id="fireworks", max_retries=0
            )
            client.datasets.create(dataset_id="over-tls", dataset={"user_uploaded": {}})
            upload_dataset_shards(client, "over-tls", str(shards))
            ready = client.datasets.get("over-tls")
            assert ready.state == "READY" and ready.example_count == "3"
            client.close()  # an idle TLS connection would hold the shutdown for asyncio's 30 s SSL timeout
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        finally:
            if server.poll() is None:
                server.kill()
    assert f"serving on https://127.0.0.1:{port}/v1" in log.read_text()


@pytest.mark.parametrize(
    ("certfile", "keyfile", "message"),
    [
        ("{pem}", None, "--ssl-certfile and --ssl-keyfile go together: give both or neither"),
        (None, "{pem}", "--ssl-certfile and --ssl-keyfile go together: give both or neither"),
        ("{pem}", "{missing}", "--ssl-keyfile '{missing}' is not a readable file"),
    ],
)
def test_bad_tls_flags_are_refused_before_the_model_loads(
    tmp_path: Path, certfile: str | None, keyfile: str | None, message: str
) -> None:
    """serve_from_args runs this check beside the access flags, before loading (one line, exit 1)."""
    pem = tmp_path / "server.pem"
    pem.write_text("not read here")
    names = {"pem": str(pem), "missing": str(tmp_path / "missing.pem")}
    with pytest.raises(AccessConfigError) as refused:
        check_tls_files(
            None if certfile is None else certfile.format(**names),
            None if keyfile is None else keyfile.format(**names),
        )
    assert str(refused.value) == message.format(**names)
    check_tls_files(str(pem), str(pem))
    check_tls_files(None, None)
