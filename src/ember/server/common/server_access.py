"""Who may use a server, from its ServerConfig: the key ring of every configured key, the one tenant of a
server without keys, and what the start-up log says about both (never a key)."""

from __future__ import annotations

import logging

from ember.server.common.api_keys import KeyRing, default_tenant, plain_keys
from ember.server.common.config import ServerConfig
from ember.server.common.tenancy import Tenant

logger = logging.getLogger("ember.server")


def key_ring(config: ServerConfig) -> KeyRing | None:
    """Every key the server accepts; None when it has none (open)."""
    if not config.has_keys:
        return None
    keys = plain_keys(config.api_keys, default_tenant(config.account)) + config.tenant_keys
    return KeyRing(keys)


def open_tenant(config: ServerConfig) -> Tenant:
    """Without keys the server is one tenant, as before tenancy: it sees everything, under any account."""
    return Tenant(config.account, admin=True, owns_unowned=True, label="open")


def log_access_policy(config: ServerConfig, keys: KeyRing | None) -> None:
    if keys is None:
        logger.warning(
            "no API keys configured: the API is open to anyone who can reach this address "
            "(requests are accepted only for localhost, IP addresses%s)",
            "" if not config.allowed_hosts else f" and {', '.join(config.allowed_hosts)}",
        )
    else:
        logger.info(
            "API keys: %d configured (by account: %s); /v1 routes need Authorization: Bearer <key>",
            len(keys.keys),
            keys.describe(),
        )
    if config.allowed_origins:
        logger.info("CORS allows the origins: %s", ", ".join(config.allowed_origins))
        if "*" in config.allowed_origins and keys is None:
            logger.warning(
                "--allowed-origins '*' without an API key: any web page a visitor of this machine opens can "
                "use this server"
            )
