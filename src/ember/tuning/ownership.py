"""Whose rows a caller of the tuning store sees: the owner scope every read and delete of files and jobs takes.

A row's owner is an account (the Fireworks account of the API key that created it). Rows without an owner were
created before ember had tenants, or by `ember tune` on the server's machine; they belong to the server's own
account, so a scope for that account includes them. `None` as a scope means every row (an admin key, or a
server with no API keys: one tenant, as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OwnerScope:
    account: str
    includes_unowned: bool = False  # True for the server's own account

    def sees(self, owner: str | None) -> bool:
        return owner == self.account or (owner is None and self.includes_unowned)

    def where(self, column: str = "owner") -> tuple[str, list[Any]]:
        """The SQL condition (and its parameters) that keeps only the rows this scope sees."""
        if self.includes_unowned:
            return f"({column} = ? OR {column} IS NULL)", [self.account]
        return f"{column} = ?", [self.account]


def sees(scope: OwnerScope | None, owner: str | None) -> bool:
    return scope is None or scope.sees(owner)
