"""``scoreboard-topics``: create the contract's Kafka topics (idempotent)."""

from __future__ import annotations

import asyncio

from common.kafka import ensure_topics, topic_specs
from common.logs import configure_logging
from common.settings import CommonSettings


def main() -> None:
    """Create the topics named in the settings' prefix, waiting for Kafka to answer."""
    settings = CommonSettings.load()
    configure_logging("topics", settings.log_level, json=False)
    specs = topic_specs(
        settings.topic_prefix, min_insync_replicas=settings.kafka_min_insync_replicas
    )
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap, specs, replication=settings.kafka_replication_factor
        )
    )


if __name__ == "__main__":
    main()
