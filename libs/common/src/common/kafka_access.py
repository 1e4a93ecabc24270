"""Who may do what on Kafka: one SCRAM user per service and the ACLs each one needs, no more.

The broker denies whatever no ACL allows (StandardAuthorizer, ``allow.everyone.if.no.acl.found``
false); ``admin`` is the super user (topics, ACLs, the tests). The matrix is a function of the
topic prefix, so a test run grants the same rights on its own topics as a deployment does on
``scoreboard.*`` (tests/e2e/test_kafka_access.py proves the refusals). Strimzi deployments keep
the same matrix in KafkaUser resources (deploy/k8s/overlays/prod/kafka-users.yaml).

ACLs are managed with confluent-kafka's admin client: aiokafka has no ACL calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import structlog
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from common.events import Topics
from common.kafka import KafkaAuth

log = structlog.get_logger(__name__)

ADMIN: Final = "admin"
GATEWAY: Final = "gateway"
SCORE: Final = "score"
BROADCASTER: Final = "broadcaster"
INTEGRATOR: Final = "integrator"
SERVICE_USERS: Final = (GATEWAY, SCORE, BROADCASTER, INTEGRATOR)

# Written by the score service when it flags a player; read by integrators (and admin).
FLAGGED_TOPIC: Final = "scoreboard.player-flagged.v1"
# The consumer group prefixes each reader may join, after the topic prefix: the score service's
# groups (``score`` for commands, ``score.flags`` for the flagger's ScoreChanged), a group per
# broadcaster replica (``broadcaster-<replica>``), integrators' own groups.
SCORE_GROUP: Final = "score"
BROADCASTER_GROUPS: Final = "broadcaster"
INTEGRATOR_GROUPS: Final = "integrator"


@dataclass(frozen=True)
class Grant:
    """Allow ``user`` ``operation`` on a resource, from any host."""

    user: str
    resource: ResourceType
    name: str
    operation: AclOperation
    pattern: ResourcePatternType = ResourcePatternType.LITERAL

    def binding(self) -> AclBinding:
        """The grant as confluent-kafka's ACL binding."""
        return AclBinding(
            self.resource,
            self.name,
            self.pattern,
            f"User:{self.user}",
            "*",
            self.operation,
            AclPermissionType.ALLOW,
        )


def _topic(user: str, name: str, *operations: AclOperation) -> list[Grant]:
    return [Grant(user, ResourceType.TOPIC, name, op) for op in operations]


def _groups(user: str, name: str, pattern: ResourcePatternType) -> list[Grant]:
    return [Grant(user, ResourceType.GROUP, name, AclOperation.READ, pattern)]


def grants(prefix: str = "") -> list[Grant]:
    """Every service user's rights on the topics, groups and transactional id of ``prefix``.

    - gateway: writes commands (its idempotent producer needs only WRITE on the topic, KIP-679).
    - score: reads commands in its groups (and ScoreChanged, for the flagger); writes
      ScoreChanged through the transactional relay (its transactional id) and reads back the
      topic's committed tail; writes the DLQ and player-flagged; writes period-closed through
      the same relay (and reads its committed tail back, as for ScoreChanged), and user-removals
      likewise.
    - broadcaster: reads ScoreChanged, one group per replica.
    - integrator: reads ScoreChanged, player-flagged, period-closed and user-removals, in groups
      of its own; writes nothing.
    """
    topics = Topics(prefix)
    flagged = prefix + FLAGGED_TOPIC
    read, write, describe = AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE
    relay_id = f"{topics.changed}.relay"
    prefixed = ResourcePatternType.PREFIXED
    return [
        *_topic(GATEWAY, topics.commands, write, describe),
        *_topic(SCORE, topics.commands, read, describe),
        *_groups(SCORE, prefix + SCORE_GROUP, prefixed),
        *_topic(SCORE, topics.changed, write, read, describe),
        Grant(SCORE, ResourceType.TRANSACTIONAL_ID, relay_id, write),
        Grant(SCORE, ResourceType.TRANSACTIONAL_ID, relay_id, describe),
        *_topic(SCORE, topics.dlq, write, describe),
        *_topic(SCORE, flagged, write, describe),
        *_topic(SCORE, topics.period_closed, write, read, describe),
        *_topic(SCORE, topics.removals, write, read, describe),
        *_topic(BROADCASTER, topics.changed, read, describe),
        *_groups(BROADCASTER, prefix + BROADCASTER_GROUPS, prefixed),
        *_topic(INTEGRATOR, topics.changed, read, describe),
        *_topic(INTEGRATOR, flagged, read, describe),
        *_topic(INTEGRATOR, topics.period_closed, read, describe),
        *_topic(INTEGRATOR, topics.removals, read, describe),
        *_groups(INTEGRATOR, prefix + INTEGRATOR_GROUPS, prefixed),
    ]


def _admin(bootstrap: str, auth: KafkaAuth) -> AdminClient:
    # log_level 4: warnings and worse (librdkafka logs every handle's shutdown at 6).
    return AdminClient({"bootstrap.servers": bootstrap, "log_level": 4, **auth.librdkafka()})


# None matches any name, principal and host (confluent-kafka's stubs say str, its docs None).
_EVERY_ACL: Final = AclBindingFilter(
    ResourceType.ANY,
    None,  # type: ignore[arg-type]
    ResourcePatternType.ANY,
    None,  # type: ignore[arg-type]
    None,  # type: ignore[arg-type]
    AclOperation.ANY,
    AclPermissionType.ANY,
)


def _create(bootstrap: str, auth: KafkaAuth, bindings: list[AclBinding], timeout_s: float) -> None:
    admin = _admin(bootstrap, auth)  # kept until the futures are done: its end cancels them
    futures = admin.create_acls(bindings, request_timeout=timeout_s)
    for future in futures.values():
        future.result()
    # The controller has committed them; the broker's authorizer applies them when it replays
    # the metadata log, a moment later. DescribeAcls answers from that authorizer: wait until
    # it lists them all, so the caller's next request is judged by the new ACLs.
    deadline = time.monotonic() + timeout_s
    wanted = set(bindings)
    while True:
        seen = set(admin.describe_acls(_EVERY_ACL, request_timeout=timeout_s).result())
        if wanted <= seen:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted - seen)} ACLs not in force after {timeout_s} s")
        time.sleep(0.02)


def _delete(bootstrap: str, auth: KafkaAuth, bindings: list[AclBinding], timeout_s: float) -> None:
    filters = [
        AclBindingFilter(
            b.restype,
            b.name,
            b.resource_pattern_type,
            b.principal,
            b.host,
            b.operation,
            b.permission_type,
        )
        for b in bindings
    ]
    admin = _admin(bootstrap, auth)
    futures = admin.delete_acls(filters, request_timeout=timeout_s)
    for future in futures.values():
        future.result()


async def ensure_acls(
    bootstrap: str, auth: KafkaAuth, wanted: Iterable[Grant], *, timeout_s: float = 30.0
) -> None:
    """Create the grants (creating an existing ACL is a no-op), as ``auth``'s user (admin)."""
    bindings = [g.binding() for g in wanted]
    await asyncio.to_thread(_create, bootstrap, auth, bindings, timeout_s)
    log.info("kafka_acls_ensured", count=len(bindings))


async def delete_acls(
    bootstrap: str, auth: KafkaAuth, unwanted: Iterable[Grant], *, timeout_s: float = 30.0
) -> None:
    """Remove exactly these grants (a test run's, when it is over)."""
    bindings = [g.binding() for g in unwanted]
    await asyncio.to_thread(_delete, bootstrap, auth, bindings, timeout_s)
