"""Who a request acts for: its tenant (the account of the API key it presented), which rows and adapters that
tenant sees, and which `/accounts/{a}/` paths it may use.

The auth middleware puts the tenant on the request (`tenant_of`) and, for the duration of the request, in a
context variable (`viewing_tenant`): the model names a request may use are resolved in every API surface, and
the context carries the tenant there without threading it through each of them.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass

from fastapi import Request

from ember.tuning.ownership import OwnerScope


@dataclass(frozen=True)
class Tenant:
    """The account an API key acts for. An admin tenant sees and may use every account; `owns_unowned` marks
    the server's own account, which owns the rows created before tenancy (and by `ember tune`)."""

    account: str
    admin: bool = False
    owns_unowned: bool = False
    label: str = ""  # the key's name in the keys file, for logs (never the key)

    @property
    def scope(self) -> OwnerScope | None:
        """The rows of the tuning store this tenant sees; None: every row."""
        return None if self.admin else OwnerScope(self.account, self.owns_unowned)

    def may_use_account(self, account: str) -> bool:
        return self.admin or account == self.account

    def sees_adapter(self, owner: str | None) -> bool:
        """Adapters without an owner (ember serve --lora, loaded by an admin) are served to every key."""
        return self.admin or owner is None or owner == self.account


_VIEWING_TENANT: ContextVar[Tenant | None] = ContextVar("ember_viewing_tenant", default=None)


def viewing_tenant() -> Tenant | None:
    """The tenant of the request being handled; None outside a request (start-up, the job runner): all."""
    return _VIEWING_TENANT.get()


def enter_tenant(tenant: Tenant) -> Token[Tenant | None]:
    """Make `tenant` the viewing tenant of the current context; returns the token `leave_tenant` takes."""
    return _VIEWING_TENANT.set(tenant)


def leave_tenant(token: Token[Tenant | None]) -> None:
    _VIEWING_TENANT.reset(token)


def tenant_of(request: Request) -> Tenant:
    """The tenant the auth middleware found for this request."""
    return request.state.tenant
