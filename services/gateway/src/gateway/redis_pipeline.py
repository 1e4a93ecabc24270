"""One Redis connection that pipelines every concurrent call, for the hottest scripts.

redis-py's asyncio client costs most of its time around the command, not in it: a pool
checkout, a lock, argument checks and a send per call. On the gateway's update path that was
about a fifth of the process's CPU for one EVALSHA per request (py-spy; bench_e2e_latency's
``cpu_ms_per_update``). Here every call made in one event-loop iteration leaves in one write,
and one read resolves every reply that came back together, parsed by hiredis (the C parser
redis-py itself uses). Replies come back in request order on one connection, so a FIFO of
futures matches them.

Failure behaves like redis-py's: errors are :mod:`redis.exceptions` (``ResponseError`` for an
error reply, ``ConnectionError`` and ``TimeoutError`` otherwise, all ``RedisError``). A call that
times out drops the connection with everything in flight on it (their replies could no longer be
told apart from later ones), and the next call connects again. Since replies come in order, only
the oldest call waiting can be the first to time out: one timer per connection watches its
deadline, where an ``asyncio.timeout`` per call (a scheduled handle and two context-manager
steps) was about 7% of the gateway's samples under bench_ingest's reads (py-spy). A script
Redis does not have (restarted, flushed) is sent whole once with EVAL, which also caches it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


def _encode(arg: Arg) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # a bool is an int, but "True" is not what anybody means
        raise TypeError("booleans have no Redis encoding; pass 1 or 0")
    return repr(arg).encode() if isinstance(arg, float) else str(arg).encode()


def pack(*args: Arg) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        # Strings inline: a script call has some twenty arguments, nearly all of them str.
        data = arg.encode() if type(arg) is str else _encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout_s: float) -> None:
        self.transport: asyncio.Transport | None = None
        # Each call's future and the loop time by which its reply must have come.
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None
        self.lost = self._loop.create_future()  # done once the socket closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue ``command``; everything queued in this loop iteration leaves in one write."""
        loop = self._loop
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(command)
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self._timeout_s
        self.pending.append((future, deadline))
        if self._watchdog is None:
            self._watchdog = loop.call_at(deadline, self._check_deadline)
        return future

    def _check_deadline(self) -> None:
        """Fail the connection if its oldest call is past its deadline; else watch that one."""
        self._watchdog = None
        if not self.pending:
            return
        future, deadline = self.pending[0]
        if self._loop.time() < deadline:
            self._watchdog = self._loop.call_at(deadline, self._check_deadline)
            return
        self.pending.popleft()
        if not future.done():
            future.set_exception(
                RedisTimeoutError(f"Redis did not answer within {self._timeout_s} s")
            )
        # The replies still due on this connection can no longer be matched: start afresh.
        self.fail(RedisTimeoutError("an earlier call on this connection timed out"))

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self.pending
        while (reply := self._reader.gets()) is not False:
            if not pending:
                self.fail(InvalidResponse("a reply nobody asked for"))
                return
            future = pending.popleft()[0]
            if not future.done():  # its caller may have given up
                future.set_result(reply)

    def fail(self, exc: Exception) -> None:
        """Close, and fail every call still waiting."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.transport is not None:
            self.transport.abort()
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))
        if not self.lost.done():
            self.lost.set_result(None)


class PipelinedRedis:
    """A single auto-pipelined connection for scripts (and the odd command) on a hot path."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, connect_timeout_s: float = 2.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parsed.scheme!r}")
        self._host = parsed.hostname or "localhost"
        self._port = parsed.port or 6379
        self._ssl = ssl.create_default_context() if parsed.scheme == "rediss" else None
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        path = parsed.path.lstrip("/")
        self._db = int(path) if path else 0
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._scripts: dict[str, bytes] = {}

    async def execute(self, *args: Arg) -> Any:
        """Run one command; its reply as hiredis gives it (bytes, int, list, None)."""
        return await self._call(pack(*args))

    async def eval_script(self, script: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA ``script``; if Redis lacks it, EVAL it whole (which caches it again)."""
        sha = self._scripts.get(script)
        if sha is None:
            # SHA-1 is how Redis names scripts, not a security measure here.
            digest = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
            sha = self._scripts[script] = digest.encode()
        try:
            return await self._call(pack(b"EVALSHA", sha, len(keys), *keys, *args))
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self._call(pack(b"EVAL", script, len(keys), *keys, *args))

    async def _call(self, command: bytes) -> Any:
        protocol = await self._connection()
        reply = await protocol.send(command)  # the protocol fails it past the timeout
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def _connection(self) -> _Protocol:
        """The open connection, or the one attempt in progress, which every caller shares: when
        Redis is down, callers fail together after one connect timeout, not one after another."""
        protocol = self._protocol
        if protocol is not None and protocol.open:
            return protocol
        attempt = self._connecting
        if attempt is None or attempt.done():
            attempt = self._connecting = asyncio.ensure_future(self._connect())
        return await asyncio.shield(attempt)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self._timeout_s), self._host, self._port, ssl=self._ssl
                )
                setup = []
                if self._password is not None:
                    auth = (self._username, self._password) if self._username else (self._password,)
                    setup.append(protocol.send(pack(b"AUTH", *auth)))
                if self._db:
                    setup.append(protocol.send(pack(b"SELECT", self._db)))
                for reply in await asyncio.gather(*setup):
                    if isinstance(reply, ResponseError):
                        raise RedisConnectionError(f"Redis refused the connection: {reply}")
            # Set here, not in a done callback: between the attempt's end and such a callback
            # another caller would find no connection and open a second one (leaking the first).
            self._protocol = protocol
        except BaseException as exc:
            if protocol is not None:
                protocol.fail(RedisConnectionError("connection setup failed"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(
                    f"no connection to Redis within {self._connect_timeout_s} s"
                ) from None
            if isinstance(exc, OSError) and not isinstance(exc, RedisConnectionError):
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            raise
        return protocol

    async def aclose(self) -> None:
        """Close the connection (calls still waiting fail with ConnectionError)."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            with contextlib.suppress(TimeoutError):  # the socket closes on a later iteration
                await asyncio.wait_for(asyncio.shield(protocol.lost), 1.0)
