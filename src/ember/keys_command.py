"""`ember keys new` and `ember keys hash`: make an API key and the keys-file entry that stores only its SHA-256
(`ember serve --api-keys-file`). Keys are read from stdin, never from argv (ps shows argv to every user)."""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import TextIO

from ember.server.common.api_keys import ACCOUNT_ID, key_digest

KEY_PREFIX = "sk-ember-"


def add_keys_subparser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="make API keys and their --api-keys-file entries")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    new = actions.add_parser("new", help="a new random key, and its keys-file entry (stores only the hash)")
    new.add_argument("--name", required=True, help="a label for logs, e.g. who holds the key")
    new.add_argument("--account", default=None, help="the account the key acts for (required unless --admin)")
    new.add_argument("--admin", action="store_true", help="the key sees every account")
    actions.add_parser("hash", help="the keys-file sha256 of a key read from stdin")


def run_keys(
    args: argparse.Namespace,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """`new` writes the entry to stdout (to append to the keys file: `>> keys.toml`) and the key itself to
    stderr, so the key reaches the terminal and never the file."""
    if args.keys_command == "hash":
        key = stdin.read().strip()
        if not key:
            print("ember keys hash: give the key on stdin", file=stderr)
            return 2
        print(key_digest(key).hex(), file=stdout)
        return 0
    if args.account is None and not args.admin:
        print("ember keys new: --account is required (or --admin)", file=stderr)
        return 2
    if args.account is not None and not ACCOUNT_ID.fullmatch(args.account):
        print("ember keys new: --account must be 1-63 lowercase letters, digits or '-'", file=stderr)
        return 2
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    lines = [
        "[[keys]]",
        f"name = {_toml_string(args.name)}",
        *([f'account = "{args.account}"'] if args.account is not None else []),
        *(["admin = true"] if args.admin else []),
        f'sha256 = "{key_digest(key).hex()}"',
    ]
    print("\n".join(lines), file=stdout)
    print(f"the key of {args.name!r} (shown only now; the entry stores its hash): {key}", file=stderr)
    return 0


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
