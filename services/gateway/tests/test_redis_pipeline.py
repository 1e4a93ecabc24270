"""The auto-pipelined Redis connection, against the real server."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_pipeline import PipelinedRedis, pack
from testkit.env import TestEnv

ECHO_LUA = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
async def fast(test_env: TestEnv) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis(test_env.redis_url, timeout_s=2.0)
    yield client
    await client.aclose()


def test_pack_is_resp_bulk_strings() -> None:
    assert pack(b"SET", "k", 7, 0.5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n$3\r\n0.5\r\n"
    with pytest.raises(TypeError):
        pack(b"SET", "k", True)


async def test_concurrent_calls_share_one_connection_and_get_their_own_replies(
    fast: PipelinedRedis,
) -> None:
    replies = await asyncio.gather(
        *(fast.eval_script(ECHO_LUA, [f"k{i}"], [i]) for i in range(500))
    )
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
    ids = await asyncio.gather(*(fast.execute("CLIENT", "ID") for _ in range(50)))
    assert len(set(ids)) == 1


async def test_calls_made_while_it_connects_all_share_the_one_connection(
    test_env: TestEnv,
) -> None:
    # Calls keep arriving, one loop iteration apart, while the connection is being made: none
    # may find the attempt over but no connection yet and open another (leaking one).
    client = PipelinedRedis(test_env.redis_url)

    async def later(iterations: int) -> object:
        for _ in range(iterations):
            await asyncio.sleep(0)
        return await client.execute("CLIENT", "ID")

    try:
        ids = await asyncio.gather(*(later(k) for k in range(300)))
    finally:
        await client.aclose()
    assert len(set(ids)) == 1


async def test_a_script_redis_lost_is_sent_again(
    fast: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    script = f"return '{uuid.uuid4().hex}'"
    first = await fast.eval_script(script, [], [])
    await redis_client.script_flush()
    assert await fast.eval_script(script, [], []) == first


async def test_an_error_reply_raises_and_the_connection_goes_on(fast: PipelinedRedis) -> None:
    results: list[object] = await asyncio.gather(
        fast.eval_script("return redis.error_reply('nope')", [], []),
        fast.execute("ECHO", "after"),
        return_exceptions=True,
    )
    failing, fine = results
    assert isinstance(failing, ResponseError)
    assert "nope" in str(failing)
    assert fine == b"after"
    with pytest.raises(ResponseError, match="unknown command"):
        await fast.execute("NOSUCHCOMMAND")


async def test_a_killed_connection_fails_calls_in_flight_and_reconnects(
    fast: PipelinedRedis, redis_client: aioredis.Redis, test_env: TestEnv
) -> None:
    own_id = await fast.execute("CLIENT", "ID")
    blocked = asyncio.ensure_future(fast.execute("BLPOP", f"{test_env.redis_prefix}never", 5))
    await asyncio.sleep(0.1)
    await redis_client.client_kill_filter(_id=own_id)
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await fast.execute("CLIENT", "ID") != own_id


async def test_a_timeout_raises_and_the_next_call_starts_afresh(test_env: TestEnv) -> None:
    slow = PipelinedRedis(test_env.redis_url, timeout_s=0.3)
    try:
        own_id = await slow.execute("CLIENT", "ID")
        blocked = slow.execute("BLPOP", f"{test_env.redis_prefix}never", 2)
        queued_behind = slow.execute("ECHO", "x")
        results = await asyncio.gather(blocked, queued_behind, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert await slow.execute("CLIENT", "ID") != own_id
    finally:
        await slow.aclose()


async def test_a_stalled_call_times_out_at_its_own_deadline_while_others_keep_coming(
    test_env: TestEnv,
) -> None:
    slow = PipelinedRedis(test_env.redis_url, timeout_s=0.3)
    try:
        await slow.execute("PING")
        loop = asyncio.get_running_loop()
        started = loop.time()
        blocked = asyncio.ensure_future(slow.execute("BLPOP", f"{test_env.redis_prefix}never", 2))
        later = []
        while not blocked.done() and loop.time() - started < 1.0:
            later.append(asyncio.ensure_future(slow.execute("ECHO", "x")))
            await asyncio.sleep(0.05)
        with pytest.raises(RedisTimeoutError, match=r"did not answer within 0\.3 s"):
            await blocked
        assert 0.25 < loop.time() - started < 0.5
        results = await asyncio.gather(*later, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
    finally:
        await slow.aclose()


async def test_the_url_selects_the_database(test_env: TestEnv) -> None:
    base = test_env.redis_url.rsplit("/", 1)[0]
    other = PipelinedRedis(f"{base}/3")
    try:
        info = await other.execute("CLIENT", "INFO")
        assert b" db=3 " in info
    finally:
        await other.aclose()


async def test_no_server_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        client = PipelinedRedis(f"redis://127.0.0.1:{port}/0", connect_timeout_s=1.0)
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")


async def test_a_refused_login_is_a_connection_error(test_env: TestEnv) -> None:
    host = test_env.redis_url.split("//", 1)[1]
    client = PipelinedRedis(f"redis://someone:wrong@{host}")
    with pytest.raises(RedisConnectionError, match="refused"):
        await client.execute("PING")
    await client.aclose()


def test_only_redis_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        PipelinedRedis("http://localhost:6379")


async def test_callers_share_one_connection_attempt() -> None:
    # A server that accepts and never answers: the SELECT of the setup times out.
    accepted: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda _r, w: accepted.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis(f"redis://127.0.0.1:{port}/1", connect_timeout_s=0.3)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        results = await asyncio.gather(
            *(client.execute("PING") for _ in range(20)), return_exceptions=True
        )
        elapsed = loop.time() - started
    finally:
        await client.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert all(isinstance(r, RedisTimeoutError) for r in results), results
    assert len(accepted) == 1
    assert elapsed < 2.0  # one shared 0.3 s attempt, not twenty in a row (6 s)
