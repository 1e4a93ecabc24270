"""An integrator's consumer of ScoreChanged: the standings of every player, kept exactly once.

What it shows (docs/events.md, "Consuming"):

- ``isolation_level=read_committed``: ScoreChanged is published in Kafka transactions;
- the CloudEvents SDK decodes each record (the Kafka binding, structured mode);
- dedupe by version: an event whose ``data.version`` is not newer than the last applied for that
  user changes nothing, so replays after a crash or a rebalance are harmless;
- removals: no event says that an account was deleted, so ``--reconcile`` asks the public API
  about the players it knows (404: not on the board any more) and forgets them;
- offsets are committed only after the events are applied.

Run it next to ``make up``::

    uv run python examples/score_consumer.py --reconcile 60

It prints one JSON line per change it applies (``{"user_id", "username", "score", "version"}``)
and per player it forgets (``{"user_id", "removed": true}``). It keeps the standings in memory:
a real integrator stores them with the versions, and commits offsets after that store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer
from cloudevents.core.bindings.kafka import KafkaMessage, from_kafka
from cloudevents.core.formats.json import JSONFormat

CHANGED_TYPE = "scoreboard.score.changed.v1"
TOPIC = "scoreboard.score-changed.v1"
_FORMAT = JSONFormat()


@dataclass(frozen=True)
class Standing:
    """One player's latest known total."""

    username: str
    score: int
    version: int


@dataclass
class Standings:
    """Every player's latest standing, applied at most once per version."""

    players: dict[str, Standing] = field(default_factory=dict)
    duplicates: int = 0

    def apply(self, data: dict[str, Any]) -> bool:
        """Apply a ScoreChanged ``data``; False when it is not newer than what we have."""
        user_id, version = str(data["user_id"]), int(data["version"])
        known = self.players.get(user_id)
        if known is not None and version <= known.version:
            self.duplicates += 1
            return False
        self.players[user_id] = Standing(str(data["username"]), int(data["score"]), version)
        return True

    def forget(self, user_id: str) -> None:
        """The player left the board (their account was deleted)."""
        self.players.pop(user_id, None)


def decode(headers: Iterable[tuple[str, bytes]], key: bytes | None, value: bytes) -> Any:
    """A record as a CloudEvent (the SDK tells structured from binary mode by its headers)."""
    return from_kafka(KafkaMessage(dict(headers), key, value), _FORMAT)


async def reconcile(standings: Standings, http: aiohttp.ClientSession, api: str) -> list[str]:
    """Forget the players the API no longer has on the board; returns their ids."""
    gone = []
    for user_id in list(standings.players):
        async with http.get(f"{api}/api/scoreboard/users/{user_id}") as resp:
            if resp.status == 404:
                standings.forget(user_id)
                gone.append(user_id)
            elif resp.status >= 400 and resp.status != 429:
                resp.raise_for_status()
    return gone


def _print(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def consume(
    consumer: AIOKafkaConsumer,
    standings: Standings,
    *,
    stop: asyncio.Event,
    on_change: Callable[[dict[str, Any]], None] = _print,
) -> None:
    """Apply ScoreChanged events from ``consumer`` until ``stop`` is set, committing after each
    batch is applied."""
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=500, max_records=500)
        for records in batches.values():
            for record in records:
                if record.value is None:
                    continue
                event = decode(record.headers, record.key, record.value)
                if event.get_type() != CHANGED_TYPE:
                    continue  # another type on this topic: a later version's, not ours
                data = event.get_data()
                if standings.apply(data):
                    on_change({k: data[k] for k in ("user_id", "username", "score", "version")})
        if batches:
            await consumer.commit()


def make_consumer(args: argparse.Namespace) -> AIOKafkaConsumer:
    """A group member reading committed records only, committing offsets itself."""
    sasl: dict[str, Any] = {}
    if args.username:
        sasl = {
            "security_protocol": args.security_protocol,
            "sasl_mechanism": args.sasl_mechanism,
            "sasl_plain_username": args.username,
            "sasl_plain_password": args.password,
        }
    return AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **sasl,
    )


async def run(args: argparse.Namespace, stop: asyncio.Event) -> Standings:
    """Consume (and reconcile every ``args.reconcile`` seconds) until ``stop``."""
    standings = Standings()
    consumer = make_consumer(args)
    await consumer.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            reading = asyncio.create_task(consume(consumer, standings, stop=stop))
            while args.reconcile and not reading.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reading), args.reconcile)
                if not reading.done():
                    for user_id in await reconcile(standings, http, args.api):
                        _print({"user_id": user_id, "removed": True})
            await reading
    finally:
        await consumer.stop()
    return standings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Where to read from and how to log in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9094")
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--group", default="example-standings")
    parser.add_argument("--security-protocol", default="SASL_PLAINTEXT")
    parser.add_argument("--sasl-mechanism", default="SCRAM-SHA-512")
    parser.add_argument("--username", default="", help="Kafka user (empty: no SASL)")
    parser.add_argument("--password", default="")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the public gateway")
    parser.add_argument(
        "--reconcile", type=float, default=0, help="ask the API every N seconds (0: never)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run until interrupted."""
    args = parse_args(argv)
    stop = asyncio.Event()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args, stop))
    sys.exit(0)


if __name__ == "__main__":
    main()
