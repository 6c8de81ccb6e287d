"""API keys and the tenants they act for: from --api-key / EMBER_API_KEYS (the server's own account), from
EMBER_ADMIN_API_KEYS (admin keys), and from a keys file (--api-keys-file / EMBER_API_KEYS_FILE), where each key
names its account and may be stored as its SHA-256 only.

A keys file is TOML, one table per key:

    [[keys]]
    name = "alice-laptop"      # for logs; never the key
    account = "alice"          # the Fireworks account the key acts for (required unless admin)
    sha256 = "9f86d08..."      # hex SHA-256 of the key: `printf %s "$KEY" | sha256sum`
    # key = "sk-..."           # or the key itself (a warning says to store its hash)
    # admin = true             # sees every account's files, datasets, jobs and adapters

Keys are long random strings, so one SHA-256 is enough to keep them unusable if the file leaks (a slow hash
protects guessable passwords, which API keys are not). Presented keys are compared by digest in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ember.server.common.tenancy import Tenant

logger = logging.getLogger(__name__)

ACCOUNT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # Fireworks' resource ids
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_ENTRY_FIELDS = frozenset({"name", "account", "sha256", "key", "admin"})


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class ApiKey:
    digest: bytes  # SHA-256 of the key
    tenant: Tenant


def key_digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).digest()


def default_tenant(server_account: str) -> Tenant:
    """The tenant of --api-key / EMBER_API_KEYS keys: the server's own account (as before tenancy)."""
    return Tenant(server_account, owns_unowned=True, label="server key")


def plain_keys(keys: tuple[str, ...], tenant: Tenant) -> tuple[ApiKey, ...]:
    return tuple(ApiKey(key_digest(key), tenant) for key in keys)


def admin_keys(keys: tuple[str, ...], server_account: str) -> tuple[ApiKey, ...]:
    return plain_keys(
        keys, Tenant(server_account, admin=True, owns_unowned=True, label="EMBER_ADMIN_API_KEYS")
    )


def keys_from_file(path: Path, server_account: str) -> tuple[ApiKey, ...]:
    """Every key of a keys file; KeysFileError for anything wrong in it (the server must not start)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise KeysFileError(f"{path}: cannot read the keys file ({error.strerror})") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise KeysFileError(f"{path}: not a valid TOML file ({error})") from error
    entries = document.get("keys")
    unknown = set(document) - {"keys"}
    if unknown:
        raise KeysFileError(f"{path}: unknown top-level field(s) {sorted(unknown)}; expected [[keys]] tables")
    if not isinstance(entries, list) or not entries:
        raise KeysFileError(f"{path}: no keys; add one [[keys]] table per key")
    keys: list[ApiKey] = []
    for index, entry in enumerate(entries):
        key = _entry(entry, server_account, f"{path}: keys[{index}]")
        if any(hmac.compare_digest(key.digest, other.digest) for other in keys):
            raise KeysFileError(
                f"{path}: keys[{index}] ({entry.get('name')!r}) repeats the key of an earlier entry"
            )
        keys.append(key)
    return tuple(keys)


def _entry(entry: object, server_account: str, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where}: must be a table ([[keys]])")
    unknown = set(entry) - _ENTRY_FIELDS
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_ENTRY_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise KeysFileError(f"{where}: name is required (a label for logs)")
    where = f"{where} ({name!r})"
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysFileError(f"{where}: admin must be true or false")
    account = entry.get("account", server_account if admin else None)
    if account is None:
        raise KeysFileError(f"{where}: account is required (the Fireworks account the key acts for)")
    if not isinstance(account, str) or not ACCOUNT_ID.fullmatch(account):
        raise KeysFileError(
            f"{where}: account must be 1-63 lowercase letters, digits or '-', got {account!r}"
        )
    digest = _digest(entry, where)
    tenant = Tenant(account, admin=admin, owns_unowned=account == server_account, label=name)
    return ApiKey(digest, tenant)


def _digest(entry: dict[str, object], where: str) -> bytes:
    hashed, plain = entry.get("sha256"), entry.get("key")
    if (hashed is None) == (plain is None):
        raise KeysFileError(f"{where}: give exactly one of sha256 (the key's hex SHA-256) or key")
    if plain is not None:
        if not isinstance(plain, str) or len(plain) < 8:
            raise KeysFileError(f"{where}: key must be a string of at least 8 characters")
        logger.warning("%s: the key is stored in plain text; store its sha256 instead", where)
        return key_digest(plain)
    if not isinstance(hashed, str) or not _HEX_DIGEST.fullmatch(hashed.lower()):
        raise KeysFileError(f'{where}: sha256 must be 64 hex digits (printf %s "$KEY" | sha256sum)')
    return bytes.fromhex(hashed)


class KeyRing:
    """The configured keys; finds the tenant of a presented key."""

    def __init__(self, keys: tuple[ApiKey, ...]) -> None:
        if not keys:
            raise ValueError("a KeyRing needs at least one key")
        for index, key in enumerate(keys):
            if any(hmac.compare_digest(key.digest, other.digest) for other in keys[:index]):
                # one key, two tenants: which account would it act for?
                raise ValueError(
                    "the same API key is configured twice (command line, environment or keys file)"
                )
        self.keys = keys

    def tenant_for(self, presented: bytes) -> Tenant | None:
        digest = key_digest(presented)
        # Compare against every key without stopping early, so timing reveals neither a key nor its position.
        found: Tenant | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.tenant
        return found

    def describe(self) -> str:
        """For the start-up log: the keys' names by account, e.g. `alice: alice-laptop, ci; fireworks (admin):
        ops` (never key material)."""
        accounts: dict[str, list[str]] = {}
        for key in self.keys:
            account = f"{key.tenant.account} (admin)" if key.tenant.admin else key.tenant.account
            accounts.setdefault(account, []).append(key.tenant.label)
        return "; ".join(f"{account}: {', '.join(names)}" for account, names in sorted(accounts.items()))
