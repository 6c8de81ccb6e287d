"""`ember serve`'s access flags resolved before anything loads: API keys (--api-key, EMBER_API_KEYS, the keys
file of --api-keys-file / EMBER_API_KEYS_FILE, EMBER_ADMIN_API_KEYS), the address to bind, the browser origins
and Host names allowed, and the adapter folders; with the warnings a user should see. A bad keys file or flag
is an AccessConfigError: one line, and the server does not start."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from ember.server.common.api_keys import (
    ApiKey,
    KeyRing,
    KeysFileError,
    admin_keys,
    default_tenant,
    keys_from_file,
    plain_keys,
)
from ember.server.common.browser_guard import origin_is_valid
from ember.server.common.config import DEFAULT_ACCOUNT
from ember.server.common.middleware import (
    ADMIN_API_KEYS_ENV,
    API_KEYS_FILE_ENV,
    api_keys_from_env,
)

DEFAULT_HOST = "127.0.0.1"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ARGV_KEY_WARNING = (
    "--api-key puts the key on the command line, where every user of this machine can read it "
    "(ps, /proc/<pid>/cmdline); pass it in EMBER_API_KEYS or an --api-keys-file instead"
)


class AccessConfigError(ValueError):
    """A flag, variable or keys file that cannot be used (the server does not start)."""


@dataclass(frozen=True)
class AccessSettings:
    host: str  # the address to bind
    api_keys: tuple[str, ...]  # the server's own account
    tenant_keys: tuple[ApiKey, ...]  # the keys file's and the admin keys
    allowed_origins: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    adapter_dirs: tuple[Path, ...]
    warnings: tuple[str, ...]

    @property
    def has_keys(self) -> bool:
        return bool(self.api_keys or self.tenant_keys)


def add_access_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--host",
        default=None,
        help=f"address to bind (default {DEFAULT_HOST}: this machine only; 0.0.0.0 for every interface)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accepted bearer key of the server's own account (repeatable; visible in ps: prefer env "
        "EMBER_API_KEYS)",
    )
    serve.add_argument(
        "--api-keys-file",
        type=Path,
        default=None,
        help="TOML file of keys, each with its account (tenant) and optionally admin; keys may be stored as "
        "their sha256 (env EMBER_API_KEYS_FILE)",
    )
    serve.add_argument(
        "--allowed-origins",
        action="append",
        default=[],
        metavar="ORIGINS",
        help="browser origins allowed by CORS, comma-separated or repeated (e.g. http://localhost:3000; '*' "
        "for any); requests from other origins are refused (default: none)",
    )
    serve.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAMES",
        help="without an API key, Host names accepted besides localhost, IP addresses and --host "
        "(DNS-rebinding protection; '*' turns it off)",
    )
    serve.add_argument(
        "--adapter-dir",
        action="append",
        type=Path,
        default=[],
        help="folder POST /v1/adapters may load adapters from (repeatable; the data directory's fine-tuned "
        "adapters are always allowed to their owners)",
    )


def access_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> AccessSettings:
    env = dict(os.environ) if environ is None else environ
    account = DEFAULT_ACCOUNT  # the server's own account (ServerConfig.account): argv/env keys act for it
    warnings = [ARGV_KEY_WARNING] if args.api_key else []
    api_keys = tuple(dict.fromkeys([*args.api_key, *api_keys_from_env(env)]))
    tenant_keys = admin_keys(api_keys_from_env(env, ADMIN_API_KEYS_ENV), account)
    keys_file = args.api_keys_file or (Path(env[API_KEYS_FILE_ENV]) if env.get(API_KEYS_FILE_ENV) else None)
    if keys_file is not None:
        try:
            tenant_keys += keys_from_file(keys_file, account)
        except KeysFileError as error:
            raise AccessConfigError(f"bad API keys file: {error}") from error
    has_keys = bool(api_keys or tenant_keys)
    if has_keys:
        try:  # one key in two places: which account would it act for?
            KeyRing(plain_keys(api_keys, default_tenant(account)) + tenant_keys)
        except ValueError as error:
            raise AccessConfigError(str(error)) from error
    host = bind_host(args.host)
    if not has_keys and host not in LOOPBACK_HOSTS:
        warnings.append(
            f"no API key and --host {host}: anyone who can reach this address can use the API, upload data "
            "and start fine-tuning jobs; set EMBER_API_KEYS or --api-keys-file"
        )
    origins = _comma_list(args.allowed_origins)
    bad = [o for o in origins if not origin_is_valid(o)]
    if bad:
        raise AccessConfigError(
            f"--allowed-origins takes '*' or scheme://host[:port] (no path), got {', '.join(bad)}"
        )
    hosts = _comma_list(args.allowed_hosts)
    if args.host is not None and args.host not in WILDCARD_HOSTS:
        hosts = (*hosts, args.host)
    for folder in args.adapter_dir:
        if not folder.is_dir():
            raise AccessConfigError(f"--adapter-dir {folder}: not a folder")
    return AccessSettings(
        host=host,
        api_keys=api_keys,
        tenant_keys=tenant_keys,
        allowed_origins=origins,
        allowed_hosts=tuple(dict.fromkeys(hosts)),
        adapter_dirs=tuple(args.adapter_dir),
        warnings=tuple(warnings),
    )


def bind_host(requested: str | None) -> str:
    """The address to bind: loopback unless --host says otherwise (with or without keys: exposing the server
    is a choice the operator makes explicitly)."""
    return DEFAULT_HOST if requested is None else requested


def _comma_list(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip()))


def check_tls_files(certfile: str | None, keyfile: str | None) -> None:
    """--ssl-certfile and --ssl-keyfile come together, and both files must be readable (checked before the
    model loads, so a typo fails at once rather than after a minute of loading)."""
    if (certfile is None) != (keyfile is None):
        raise AccessConfigError("--ssl-certfile and --ssl-keyfile go together: give both or neither")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path is not None and not os.access(path, os.R_OK):
            raise AccessConfigError(f"{flag} {path!r} is not a readable file")
