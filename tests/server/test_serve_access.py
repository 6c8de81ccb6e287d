"""`ember serve`'s access flags as the command line resolves them: the address it binds, where keys come from
(and the warning for a key on the command line), keys files with clear start-up errors, origins, hosts and
adapter folders."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from ember.bench.http_server import free_port
from ember.cli import build_parser
from ember.serve_access import ARGV_KEY_WARNING, AccessConfigError, AccessSettings, access_from_args
from ember.server.common.api_keys import KeyRing
from ember.server.common.config import ServerConfig
from ember.server.common.server_access import key_ring, log_access_policy

pytestmark = pytest.mark.timeout(120)


def resolve(*argv: str, env: dict[str, str] | None = None) -> AccessSettings:
    return access_from_args(build_parser().parse_args(["serve", *argv]), env or {})


def test_binds_loopback_unless_host_is_given() -> None:
    assert resolve().host == "127.0.0.1"
    assert resolve(env={"EMBER_API_KEYS": "k1"}).host == "127.0.0.1"  # a key does not widen it either
    exposed = resolve("--host", "0.0.0.0")
    assert exposed.host == "0.0.0.0"
    assert any("anyone who can reach this address" in w for w in exposed.warnings)
    assert not resolve("--host", "0.0.0.0", env={"EMBER_API_KEYS": "k1"}).warnings
    assert resolve("--host", "ember.lan").allowed_hosts == (
        "ember.lan",
    )  # its own name passes the Host check
    assert resolve("--host", "0.0.0.0", "--allowed-hosts", "a.lan,b.lan").allowed_hosts == ("a.lan", "b.lan")


def test_a_key_on_the_command_line_is_warned_about_and_env_keys_are_not() -> None:
    argv = resolve("--api-key", "sk-1", "--api-key=sk-2", env={"EMBER_API_KEYS": "sk-2,sk-3"})
    assert argv.api_keys == ("sk-1", "sk-2", "sk-3")
    assert ARGV_KEY_WARNING in argv.warnings and "/proc/<pid>/cmdline" in ARGV_KEY_WARNING
    env = resolve(env={"EMBER_API_KEYS": "sk-3"})
    assert env.api_keys == ("sk-3",) and not env.warnings


def test_a_hashed_keys_file_gives_each_key_its_account(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    digest = hashlib.sha256(b"sk-alice-123").hexdigest()
    keys.write_text(
        f'[[keys]]\nname = "alice"\naccount = "alice"\nsha256 = "{digest}"\n'
        '[[keys]]\nname = "ops"\nadmin = true\nkey = "sk-admin-plain"\n'
    )
    for access in (resolve("--api-keys-file", str(keys)), resolve(env={"EMBER_API_KEYS_FILE": str(keys)})):
        ring = KeyRing(access.tenant_keys)
        alice, admin = ring.tenant_for(b"sk-alice-123"), ring.tenant_for(b"sk-admin-plain")
        assert alice is not None and (alice.account, alice.admin, alice.owns_unowned) == (
            "alice",
            False,
            False,
        )
        assert admin is not None and (admin.account, admin.admin) == ("fireworks", True)
        assert ring.tenant_for(digest.encode()) is None  # the hash itself opens nothing
    admin_env = resolve(env={"EMBER_ADMIN_API_KEYS": "sk-root"})
    assert admin_env.has_keys and KeyRing(admin_env.tenant_keys).tenant_for(b"sk-root").admin  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[[keys]\n", "not a valid TOML file"),
        ("", "no keys"),
        ('[[keys]]\nname = "a"\naccount = "a"\n', "give exactly one of sha256"),
        ('[[keys]]\nname = "a"\nsha256 = "' + "0" * 64 + '"\n', "account is required"),
        ('[[keys]]\nname = "a"\naccount = "A_B"\nkey = "sk-12345678"\n', "account must be"),
        ('[[keys]]\nname = "a"\naccount = "a"\nsha256 = "abc"\n', "sha256 must be 64 hex digits"),
        (
            '[[keys]]\nname = "a"\naccount = "a"\nkey = "sk-12345678"\nrole = "x"\n',
            "unknown field(s) ['role']",
        ),
        (
            '[[keys]]\nname = "a"\naccount = "a"\nkey = "sk-12345678"\n'
            '[[keys]]\nname = "b"\naccount = "b"\nkey = "sk-12345678"\n',
            "keys[1] ('b') repeats the key",
        ),
    ],
)
def test_a_bad_keys_file_is_a_clear_error(tmp_path: Path, content: str, words: str) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(content)
    with pytest.raises(AccessConfigError) as error:
        resolve("--api-keys-file", str(keys))
    assert words in str(error.value) and str(keys) in str(error.value)


def test_serve_refuses_to_start_with_a_bad_keys_file_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ember.cli",
            "serve",
            "--api-keys-file",
            str(missing),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"ember serve: bad API keys file: {missing}: cannot read the keys file (No such file or directory)"
    )


def test_the_same_key_in_two_places_is_refused() -> None:
    with pytest.raises(AccessConfigError, match="configured twice"):
        resolve(env={"EMBER_API_KEYS": "sk-same-1", "EMBER_ADMIN_API_KEYS": "sk-same-1"})


def test_origins_and_adapter_folders_are_checked(tmp_path: Path) -> None:
    assert resolve("--allowed-origins", "http://localhost:3000,https://app.example").allowed_origins == (
        "http://localhost:3000",
        "https://app.example",
    )
    assert resolve("--allowed-origins", "*").allowed_origins == ("*",)
    for bad in ("localhost:3000", "http://app.example/path", "ftp://x"):
        with pytest.raises(AccessConfigError, match="--allowed-origins"):
            resolve("--allowed-origins", bad)
    assert resolve("--adapter-dir", str(tmp_path)).adapter_dirs == (tmp_path,)
    with pytest.raises(AccessConfigError, match="not a folder"):
        resolve("--adapter-dir", str(tmp_path / "missing"))


def test_ember_keys_new_writes_an_entry_the_server_reads_and_keeps_the_key_out_of_it(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    made = []
    for argv in (["--name", 'alice "laptop"', "--account", "alice"], ["--name", "ops", "--admin"]):
        done = subprocess.run(
            [sys.executable, "-m", "ember.cli", "keys", "new", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        key = done.stderr.strip().rsplit(": ", 1)[1]
        assert key.startswith("sk-ember-") and key not in done.stdout
        with keys_file.open("a") as out:
            out.write(done.stdout)
        made.append(key)
    ring = KeyRing(resolve("--api-keys-file", str(keys_file)).tenant_keys)
    alice, admin = ring.tenant_for(made[0].encode()), ring.tenant_for(made[1].encode())
    assert alice is not None and alice.account == "alice" and alice.label == 'alice "laptop"'
    assert admin is not None and admin.admin
    hashed = subprocess.run(
        [sys.executable, "-m", "ember.cli", "keys", "hash"], input=made[0], capture_output=True, text=True
    )
    assert hashed.stdout.strip() == hashlib.sha256(made[0].encode()).hexdigest()
    refused = subprocess.run(
        [sys.executable, "-m", "ember.cli", "keys", "new", "--name", "x"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--account is required" in refused.stderr


def test_any_origin_without_a_key_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    open_config = ServerConfig(model_name="m", allowed_origins=("*",))
    log_access_policy(open_config, key_ring(open_config))
    assert "--allowed-origins '*' without an API key" in caplog.text
    caplog.clear()
    keyed = ServerConfig(model_name="m", allowed_origins=("*",), api_keys=("sk-1",))
    log_access_policy(keyed, key_ring(keyed))
    assert "without an API key" not in caplog.text and "fireworks: server key" in caplog.text
    assert "sk-1" not in caplog.text
