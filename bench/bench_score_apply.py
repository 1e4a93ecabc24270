"""Score apply throughput: the batched store versus one transaction per command.

    uv run python bench/bench_score_apply.py [--commands 20000] [--users 1000] [--batch 500]
                                             [--repeats 3] [--naive-commands N] [--no-kafka]

Runs against the real PostgreSQL (a temporary database, created, migrated and dropped here) and,
unless --no-kafka, also end to end through the real Kafka: commands produced to temporary topics,
consumed and applied by the service's consumer, ScoreChanged published by its outbox relay.
Prints one JSON object (the last stdout line). Targets: batched >= 20,000 commands/s and
batched/naive >= 10 on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from asyncpg.pool import PoolConnectionProxy
from pydantic import SecretStr

from common.catalog import DEFAULT_CATALOG
from common.command_signing import CommandSigner
from common.events import ScoreCommand, ScoreCommandEvent, Topics, encode
from common.kafka import (
    KafkaAuth,
    ensure_topics,
    local_kafka_password,
    make_admin,
    make_producer,
    started,
    topic_specs,
)
from common.kafka_access import GATEWAY, delete_acls, ensure_acls, grants
from common.migrate import migrate
from common.postgres import create_pool
from common.tracing import inject_headers
from score.app import create_app
from score.apply import Applied, changed_event, outbox_headers
from score.commands import Command, Delivery
from score.settings import Settings
from score.store import ScoreStore
from testkit.env import kafka_test_auth

Conn = asyncpg.Connection | PoolConnectionProxy
TARGET_RATE = 20_000
TARGET_RATIO = 10
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def make_commands(n: int, user_ids: list[uuid.UUID], seed: int = 7) -> list[Command]:
    """``n`` distinct commands spread over the users, as the consumer would hand them over
    (each of a random type of the default catalog, at its price: the service checks that)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    types = sorted(DEFAULT_CATALOG)
    out = []
    for i in range(n):
        user = rng.choice(user_ids)
        action_type = rng.choice(types)
        data = ScoreCommand(
            action_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            user_id=user,
            action_type=action_type,
            points=DEFAULT_CATALOG[action_type].points,
            issued_at=now - timedelta(seconds=5),
            accepted_at=now,
        )
        delivery = Delivery(
            "bench", 0, i, str(user).encode(), None, (("traceparent", TRACEPARENT),)
        )
        out.append(Command(delivery, data))
    return out


# The baseline: what one would write first. Same rules, one command per transaction.
async def apply_naive(conn: asyncpg.Connection, command: Command) -> None:
    """Apply one command in its own transaction (comparison only; not used by the service)."""
    data = command.data
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM actions WHERE action_id = $1", data.action_id):
            return
        await conn.execute(
            "INSERT INTO scores (user_id, score, version, reached_at) VALUES ($1, 0, 0, now())"
            " ON CONFLICT (user_id) DO NOTHING",
            data.user_id,
        )
        row = await conn.fetchrow(
            "SELECT s.score, s.version, u.username, now() AS now FROM scores s"
            " JOIN users u USING (user_id) WHERE s.user_id = $1 FOR UPDATE OF s",
            data.user_id,
        )
        assert row is not None
        applied = Applied(command, row["score"] + data.points, row["version"] + 1)
        await conn.execute(
            "INSERT INTO actions (action_id, user_id, action_type, points, issued_at,"
            " accepted_at, version) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            data.action_id,
            data.user_id,
            data.action_type,
            data.points,
            data.issued_at,
            data.accepted_at,
            applied.version,
        )
        await conn.execute(
            "UPDATE scores SET score = $2, version = $3, reached_at = now(), updated_at = now()"
            " WHERE user_id = $1",
            data.user_id,
            applied.score,
            applied.version,
        )
        await conn.execute(
            "INSERT INTO outbox (event_key, payload, headers) VALUES ($1, $2, $3::jsonb)",
            str(data.user_id).encode(),
            changed_event(applied, str(data.user_id), row["username"], row["now"]),
            outbox_headers(applied),
        )
        await conn.execute("NOTIFY score_outbox")


async def reset(conn: Conn) -> None:
    """Empty what an apply run writes, keeping the users."""
    await conn.execute("TRUNCATE actions, outbox, scores")


async def check(conn: Conn, commands: list[Command]) -> dict[str, bool]:
    """The run applied every command exactly once."""
    total = await conn.fetchval("SELECT coalesce(sum(score), 0) FROM scores")
    actions = await conn.fetchval("SELECT count(*) FROM actions")
    outbox = await conn.fetchval("SELECT count(*) FROM outbox")
    expected = sum(c.data.points for c in commands)
    return {
        "scores_sum_ok": total == expected,
        "actions_ok": actions == len(commands),
        "outbox_ok": outbox == len(commands),
    }


async def bench_batched(
    settings: Settings, commands: list[Command], batch: int, repeats: int
) -> dict[str, Any]:
    """The service's store, fed batches of ``batch`` commands in stream order, ``repeats`` times.

    The machine is shared, so one run can be unlucky: every run is reported, and the median.
    """
    pool = await create_pool(settings)
    rates = []
    try:
        store = ScoreStore(pool)
        await store.apply(commands[:1])  # connect and warm the statement cache
        for _ in range(repeats):
            async with pool.acquire() as conn:
                await reset(conn)
            start = time.perf_counter()
            for i in range(0, len(commands), batch):
                await store.apply(commands[i : i + batch])
            rates.append(len(commands) / (time.perf_counter() - start))
            async with pool.acquire() as conn:
                ok = await check(conn, commands)
            if not all(ok.values()):
                raise SystemExit(f"batched apply is wrong: {ok}")
        async with pool.acquire() as conn:
            await reset(conn)
    finally:
        await pool.close()
    return {
        "commands_per_s": round(statistics.median(rates)),
        "best_commands_per_s": round(max(rates)),
        "runs_commands_per_s": [round(r) for r in rates],
        "seconds": round(len(commands) / statistics.median(rates), 3),
        **ok,
    }


async def bench_naive(settings: Settings, commands: list[Command]) -> dict[str, Any]:
    """One transaction per command on one connection."""
    conn = await asyncpg.connect(settings.postgres_dsn)
    try:
        await apply_naive(conn, commands[0])
        await reset(conn)
        start = time.perf_counter()
        for command in commands:
            await apply_naive(conn, command)
        elapsed = time.perf_counter() - start
        ok = await check(conn, commands)
        await reset(conn)
    finally:
        await conn.close()
    return {"seconds": round(elapsed, 3), "commands_per_s": round(len(commands) / elapsed), **ok}


async def bench_kafka(settings: Settings, commands: list[Command]) -> dict[str, Any]:
    """End to end through the real Kafka, on temporary topics (12 partitions).

    The commands are produced first, as the gateway would; then the real app runs (consumer and
    relay). Timing starts at the first applied action (so the group join is not counted) and
    ends when every command is applied, then when every ScoreChanged is published.
    """
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    specs = topic_specs(prefix)
    admin = kafka_test_auth(settings.kafka_security_protocol)
    await ensure_topics(settings.kafka_bootstrap, specs, auth=admin)
    await ensure_acls(settings.kafka_bootstrap, admin, grants(prefix))
    run = settings.model_copy(update={"topic_prefix": prefix, "group_id": f"{prefix}score"})
    # The commands are produced as the gateway would, as the gateway.
    password = SecretStr(local_kafka_password(GATEWAY))
    as_gateway = run.model_copy(update={"kafka_username": GATEWAY, "kafka_password": password})
    conn = await asyncpg.connect(settings.postgres_dsn)
    runner = web.AppRunner(create_app(run))
    try:
        await reset(conn)
        producer = make_producer(as_gateway, client_id="bench")
        start = time.perf_counter()
        async with started(producer):
            topic = Topics(prefix).commands
            signer = CommandSigner(run.command_keys[0])  # as the gateway signs
            acks = []
            for c in commands:
                value = encode(ScoreCommandEvent.wrap(c.data, source="/gateway"))
                key = str(c.data.user_id).encode()
                headers = inject_headers([signer.header(key, value)])
                acks.append(await producer.send(topic, value, key=key, headers=headers))
            await asyncio.gather(*acks)
        produced_s = time.perf_counter() - start
        await runner.setup()
        applied = "SELECT count(*) FROM actions"
        await poll(conn, applied, lambda n: n > 0)
        start = time.perf_counter()
        await poll(conn, applied, lambda n: n == len(commands))
        applied_s = time.perf_counter() - start
        await poll(conn, "SELECT count(*) FROM outbox WHERE sent_at IS NULL", lambda n: n == 0)
        published_s = time.perf_counter() - start
        ok = await check(conn, commands)
    finally:
        await runner.cleanup()
        await reset(conn)
        await conn.close()
        await delete_topics(settings.kafka_bootstrap, [t.name for t in specs], admin)
        await delete_acls(settings.kafka_bootstrap, admin, grants(prefix))
    return {
        "produce_commands_per_s": round(len(commands) / produced_s),
        "consume_apply_commands_per_s": round(len(commands) / applied_s),
        "applied_and_published_commands_per_s": round(len(commands) / published_s),
        "seconds_to_publish_all": round(published_s, 3),
        **ok,
    }


async def poll(conn: asyncpg.Connection, query: str, done: Callable[[int], bool]) -> None:
    """Re-run a count until ``done`` holds (a benchmark may poll: nothing else is running)."""
    while not done(await conn.fetchval(query)):  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def delete_topics(bootstrap: str, names: list[str], auth: KafkaAuth) -> None:
    """Remove the benchmark's topics."""
    admin = make_admin(bootstrap, auth)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()


async def create_database(admin_dsn: str) -> str:
    """A fresh, migrated database; returns its DSN."""
    name = f"bench_score_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{admin_dsn.rpartition('/')[0]}/{name}"
    await migrate(dsn)
    return dsn


async def drop_database(admin_dsn: str, dsn: str) -> None:
    """Drop the benchmark's database."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')
    finally:
        await admin.close()


async def add_users(dsn: str, n: int) -> list[uuid.UUID]:
    """``n`` players in the users table (the score service only reads it)."""
    ids = [uuid.uuid4() for _ in range(n)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, 'x')",
            [(u, f"bench_{u.hex[:12]}") for u in ids],
        )
    finally:
        await conn.close()
    return ids


async def main() -> None:
    """Run the comparison and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="batched runs (median reported)")
    parser.add_argument("--naive-commands", type=int, default=None, help="default: --commands")
    parser.add_argument("--no-kafka", action="store_true", help="skip the end-to-end run")
    args = parser.parse_args()

    base = Settings.load()
    dsn = await create_database(base.postgres_dsn)
    settings = Settings.load(postgres_dsn=dsn, postgres_pool_min=1, postgres_pool_max=2)
    try:
        users = await add_users(dsn, args.users)
        commands = make_commands(args.commands, users)
        batched = await bench_batched(settings, commands, args.batch, args.repeats)
        print(f"batched: {batched}", file=sys.stderr)
        naive_n = args.naive_commands or args.commands
        naive = await bench_naive(settings, commands[:naive_n])
        print(f"naive: {naive}", file=sys.stderr)
        kafka = None if args.no_kafka else await bench_kafka(settings, commands)
        print(f"kafka: {kafka}", file=sys.stderr)
    finally:
        await drop_database(base.postgres_dsn, dsn)
    ratio = round(batched["commands_per_s"] / naive["commands_per_s"], 1)
    result: dict[str, Any] = {
        "benchmark": "score_apply",
        "commands": args.commands,
        "users": args.users,
        "batch_max": args.batch,
        "batched": batched,
        "naive": {**naive, "commands": naive_n},
        "ratio": ratio,
        "end_to_end_kafka": kafka,
        "headline": {"batched_commands_per_s": batched["commands_per_s"], "ratio": ratio},
        "targets": {"batched_commands_per_s": TARGET_RATE, "ratio": TARGET_RATIO},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
