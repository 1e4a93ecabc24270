"""Who may do what in Redis: an ACL user per service, limited to its keys and its commands.

The keyspace table in docs/architecture.md (and common.keyspace) says who writes what; the rules
below are that table as Redis 7 ACLs (``%R~`` read-only, ``%W~`` write-only, ``~`` both):

- gateway: tickets, done markers, rate limits and earning counters; revocations and user
  statuses, which it only reads; subscribes to the applied channel. It cannot touch the board or
  auth's throttles.
- broadcaster: the board; marks done markers applied and deletes tickets; publishes on the
  applied channel. Rate limits, revocations, statuses and throttles are out of its reach.
- auth: its login and signup throttles; writes revocations and user statuses.

Read-only patterns (``%R~``) would say "reads" more exactly, but Redis checks the keys a script
declares (``EVALSHA ... KEYS``) as read-write, and the gateway's admission script declares the
revocation and ticket keys it reads: so those patterns are read-write, and who writes them is
the code's rule, not Redis'.

ACL users are per server: on a Redis Cluster (a ``redis+cluster://`` URL)
``scoreboard-redis-users`` sets them on every node (docs/operations.md).

Every user gets the ordinary data commands, scripts and pub/sub, never the dangerous ones
(FLUSHALL, KEYS, CONFIG, DEBUG, ACL, ...). The ``default`` user is the administrator: locally it
stays open (the tests' harness and tools use it); compose and Kubernetes give it a password.
``scoreboard-redis-users`` creates the users at runtime (``ACL SETUSER``, idempotent); compose and
the dev overlay declare them in Redis' own configuration (:func:`user_directive`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Final

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from common.cli import parse_plain
from common.redis_client import RedisClient, create_redis_or_cluster
from common.settings import CommonSettings

log = structlog.get_logger(__name__)

SERVICES: Final = ("gateway", "broadcaster", "auth")
COMMANDS: Final = "+@all -@dangerous -@admin"


def key_rules(service: str, prefix: str) -> list[str]:
    """The key and channel patterns of ``service`` under the deployment's ``prefix``."""
    p = prefix
    rules = {
        "gateway": [
            f"~{p}ticket:*",
            f"~{p}done:*",
            f"~{p}rl:*",
            f"~{p}earn:*",
            f"~{p}revoked-session:*",
            f"~{p}user-status:*",
            f"&{p}applied",
        ],
        "broadcaster": [
            f"~{p}{{bd:*",  # every board period's keys, the main board's too (common.keyspace)
            f"~{p}done:*",
            f"~{p}ticket:*",
            f"&{p}applied",
        ],
        "auth": [
            f"~{p}login-fail:*",
            f"~{p}signup:*",
            f"~{p}revoked-session:*",
            f"~{p}user-status:*",
        ],
    }
    return rules[service]


def local_redis_password(user: str) -> str:
    """The development password of ``user`` on a local Redis. Worthless anywhere else."""
    return f"{user}-local-dev-password"


def acl_rules(service: str, prefix: str, password: str) -> list[str]:
    """``ACL SETUSER`` arguments: reset, then enable with the password, keys and commands."""
    return ["reset", "on", f">{password}", *key_rules(service, prefix), *COMMANDS.split()]


def user_directive(service: str, prefix: str, password: str) -> str:
    """The same as a redis.conf ``user`` line (compose's and the dev overlay's Redis)."""
    return " ".join(["user", service, *acl_rules(service, prefix, password)[1:]])


async def ensure_users(
    client: RedisClient,
    prefix: str,
    passwords: dict[str, str],
    *,
    name: str = "{service}",
) -> list[str]:
    """Create or reset the service users (as an administrator); ``name`` formats each user's
    name (tests give theirs a run prefix). Returns the names. On a Redis Cluster, on every
    node (ACL users are per node), replicas too: one may be promoted."""
    names = []
    for service, password in passwords.items():
        user = name.format(service=service)
        # The raw command, so the rules are the very words of user_directive (redis-py's
        # acl_setuser would rebuild them from its own arguments); its stub is untyped.
        rules = acl_rules(service, prefix, password)
        await _on_every_node(client, "ACL", "SETUSER", user, *rules)
        names.append(user)
    await save_acl(client)
    log.info("redis_users_ensured", users=names)
    return names


async def _on_every_node(client: RedisClient, *command: str) -> None:
    if isinstance(client, RedisCluster):
        await client.initialize()  # the nodes are known once the client has met the cluster
        await client.execute_command(*command, target_nodes=client.get_nodes())
    else:
        # The raw command's stub is untyped.
        await client.execute_command(*command)  # type: ignore[no-untyped-call]


async def save_acl(client: RedisClient) -> bool:
    """``ACL SAVE`` where Redis keeps its users in an ACL file (so a restart keeps them);
    False where it has none (the users then last until Redis restarts)."""
    try:
        await _on_every_node(client, "ACL", "SAVE")
    except ResponseError as exc:
        if "ACL file" not in str(exc):
            raise
        return False
    return True


def main() -> None:
    """``scoreboard-redis-users``: the service users for ``SCOREBOARD_REDIS_PREFIX``, with the
    passwords in ``SCOREBOARD_REDIS_<SERVICE>_PASSWORD`` (local development ones otherwise),
    through ``SCOREBOARD_REDIS_URL`` (an administrator; a ``redis+cluster://`` URL: on every
    node of that Redis Cluster)."""
    parse_plain("scoreboard-redis-users", "create or update the services' Redis ACL users")
    settings = CommonSettings.load()
    passwords = {
        s: os.environ.get(f"SCOREBOARD_REDIS_{s.upper()}_PASSWORD") or local_redis_password(s)
        for s in SERVICES
    }

    async def run() -> None:
        client = create_redis_or_cluster(settings)
        try:
            users = await ensure_users(client, settings.redis_prefix, passwords)
        finally:
            await client.aclose()
        print(f"Redis users: {', '.join(users)}")

    asyncio.run(run())


if __name__ == "__main__":
    main()
