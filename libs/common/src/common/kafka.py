"""Kafka clients with the settings every service wants, and topic creation.

Every client authenticates (SASL/SCRAM) as the settings' user: :class:`KafkaAuth` turns the
settings into aiokafka's and librdkafka's connection arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import DefaultPartitioner, murmur2

from common.backoff import Backoff
from common.events import Topics
from common.settings import CommonSettings

log = structlog.get_logger(__name__)


def local_kafka_password(username: str) -> str:
    """The development password of ``username`` on the local broker (scripts/infra.py formats
    it with the same; a test checks they agree). Worthless anywhere else."""
    return f"{username}-local-dev-password"


@dataclass(frozen=True)
class KafkaAuth:
    """How a client proves who it is to Kafka: the security protocol and SASL credentials."""

    protocol: str
    mechanism: str
    username: str
    password: str
    cafile: str = ""

    @classmethod
    def of(cls, settings: CommonSettings) -> KafkaAuth:
        """The settings' user; an empty username is the service's own, an empty password its
        local development one."""
        username = settings.kafka_username or settings.service_name
        password = settings.kafka_password.get_secret_value() or local_kafka_password(username)
        return cls(
            settings.kafka_security_protocol,
            settings.kafka_sasl_mechanism,
            username,
            password,
            settings.kafka_ssl_cafile,
        )

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        if self.protocol == "PLAINTEXT":
            return {"security_protocol": "PLAINTEXT"}
        args: dict[str, Any] = {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
        }
        if self.protocol == "SASL_SSL":
            args["ssl_context"] = ssl.create_default_context(cafile=self.cafile or None)
        return args

    def librdkafka(self) -> dict[str, str]:
        """The same as librdkafka configuration (confluent-kafka's admin client)."""
        if self.protocol == "PLAINTEXT":
            return {"security.protocol": "plaintext"}
        conf = {
            "security.protocol": self.protocol.lower(),
            "sasl.mechanism": self.mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
        }
        if self.cafile:
            conf["ssl.ca.location"] = self.cafile
        return conf


@functools.lru_cache(maxsize=1 << 16)
def _key_slot(key: bytes) -> int:
    """Kafka's default partitioning hash (murmur2, as the Java client), remembered per key."""
    return int(murmur2(key)) & 0x7FFFFFFF


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's default partitioner with the key's hash cached.

    Keys are user ids, so the same few thousand keys repeat; aiokafka computes murmur2 in pure
    Python for every record (~2% of the gateway's CPU). Same placement as the default.
    """
    if key is None:
        return int(DefaultPartitioner()(key, all_partitions, available))
    return all_partitions[_key_slot(key) % len(all_partitions)]


def make_producer(
    settings: CommonSettings,
    *,
    client_id: str,
    linger_ms: int = 5,
    max_batch_bytes: int = 16_384,
    transactional_id: str | None = None,
    transaction_timeout_ms: int = 60_000,
) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all).

    With ``transactional_id`` it is transactional: ``start()`` registers the id with the
    transaction coordinator (InitProducerId), which fences any older producer of the same id
    and aborts its open transaction; sends then need ``begin_transaction()``. A transaction
    left open longer than ``transaction_timeout_ms`` is aborted by the broker.
    """
    return AIOKafkaProducer(
        **KafkaAuth.of(settings).aiokafka(),
        partitioner=key_partitioner,
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        enable_idempotence=True,
        acks="all",
        linger_ms=linger_ms,
        max_batch_size=max_batch_bytes,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
        compression_type=None,
        transactional_id=transactional_id,
        transaction_timeout_ms=transaction_timeout_ms,
    )


def make_consumer(
    settings: CommonSettings,
    *topics: str,
    group_id: str | None,
    client_id: str,
    auto_offset_reset: str = "earliest",
    max_poll_records: int = 500,
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits: callers commit after their work is durable."""
    return AIOKafkaConsumer(
        *topics,
        **KafkaAuth.of(settings).aiokafka(),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        isolation_level="read_committed",
        max_poll_records=max_poll_records,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        request_timeout_ms=30_000,
        metadata_max_age_ms=30_000,
    )


@dataclass(frozen=True)
class TopicSpec:
    """A topic we own, with its partition count and configs."""

    name: str
    partitions: int
    configs: dict[str, str]


def topic_specs(
    prefix: str = "", *, partitions: int = 12, min_insync_replicas: int = 1
) -> list[TopicSpec]:
    """The topics of the contract; commands and changes are keyed by user id."""
    topics = Topics(prefix)
    week = str(7 * 24 * 3600 * 1000)
    isr = str(min_insync_replicas)
    return [
        TopicSpec(topics.commands, partitions, {"retention.ms": week, "min.insync.replicas": isr}),
        TopicSpec(topics.changed, partitions, {"retention.ms": week, "min.insync.replicas": isr}),
        TopicSpec(
            topics.dlq, 3, {"retention.ms": str(30 * 24 * 3600 * 1000), "min.insync.replicas": isr}
        ),
        # Anomaly flags: rare, read by operators' tools; kept as long as the dead letters.
        TopicSpec(
            topics.flagged,
            3,
            {"retention.ms": str(30 * 24 * 3600 * 1000), "min.insync.replicas": isr},
        ),
        # Closed periods' final standings: a few a day per board, keyed by board, kept 90 days
        # (an integrator down longer reads the period from the API instead).
        TopicSpec(
            topics.period_closed,
            3,
            {"retention.ms": str(90 * 24 * 3600 * 1000), "min.insync.replicas": isr},
        ),
        # Removals and restorations, keyed by user id and compacted: the topic keeps each
        # user's latest moderation state for good, so a new integrator can read it whole.
        TopicSpec(
            topics.removals,
            3,
            {"cleanup.policy": "compact", "min.insync.replicas": isr},
        ),
    ]


def make_admin(bootstrap: str, auth: KafkaAuth) -> AIOKafkaAdminClient:
    """An admin client for ``auth``'s user (topics need a user allowed to create them)."""
    return AIOKafkaAdminClient(
        **auth.aiokafka(), bootstrap_servers=bootstrap, request_timeout_ms=10_000
    )


async def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    *,
    auth: KafkaAuth,
    replication: int = 1,
    timeout_s: float = 60.0,
) -> None:
    """Create the topics that do not exist yet (safe to run twice), retrying until Kafka answers."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    backoff = Backoff(base_s=0.5, cap_s=5.0)
    while True:
        admin = make_admin(bootstrap, auth)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [
                            NewTopic(s.name, s.partitions, replication, topic_configs=s.configs)
                            for s in missing
                        ]
                    )
                log.info("topics_created", topics=[s.name for s in missing])
            return
        except Exception as exc:  # Kafka still starting: retry until the deadline.
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("kafka_not_ready", error=repr(exc))
            await backoff.sleep()
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def started(client: AIOKafkaProducer | AIOKafkaConsumer) -> AsyncIterator[None]:
    """Start a Kafka client and stop it however the block ends (a failed or cancelled start
    included: otherwise its half-open connections leak)."""
    try:
        await client.start()
        yield
    finally:
        await client.stop()
