"""``scoreboard-topics``: create the contract's Kafka topics and the services' ACLs (idempotent).

Runs as Kafka's admin user (``SCOREBOARD_KAFKA_USERNAME``, default ``admin``). Where an operator
owns the ACLs (Strimzi's KafkaUser resources), ``SCOREBOARD_KAFKA_MANAGE_ACLS=false`` leaves them
alone.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from common.cli import parse_plain
from common.kafka import KafkaAuth, ensure_topics, topic_specs
from common.kafka_access import ADMIN, ensure_acls, grants
from common.logs import configure_logging
from common.settings import CommonSettings


class TopicsSettings(CommonSettings):
    """The tool's settings: the admin user, and whether it grants the ACLs."""

    service_name: str = "topics"
    kafka_username: str = ADMIN
    kafka_manage_acls: bool = Field(
        True, description="Grant each service user its ACLs (common.kafka_access)."
    )


async def provision(settings: TopicsSettings) -> None:
    """Create the topics of the settings' prefix, then grant the services' ACLs on them."""
    auth = KafkaAuth.of(settings)
    specs = topic_specs(
        settings.topic_prefix, min_insync_replicas=settings.kafka_min_insync_replicas
    )
    await ensure_topics(
        settings.kafka_bootstrap, specs, auth=auth, replication=settings.kafka_replication_factor
    )
    if settings.kafka_manage_acls and settings.kafka_security_protocol != "PLAINTEXT":
        await ensure_acls(settings.kafka_bootstrap, auth, grants(settings.topic_prefix))


def main() -> None:
    """Create the topics named in the settings' prefix, waiting for Kafka to answer."""
    parse_plain("scoreboard-topics", "create the contract's Kafka topics and the services' ACLs")
    settings = TopicsSettings.load()
    configure_logging("topics", settings.log_level, json=False)
    asyncio.run(provision(settings))


if __name__ == "__main__":
    main()
