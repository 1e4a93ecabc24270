"""Who may open a WebSocket, decided before the upgrade and before any upstream socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from services.gateway.tests.support import Client, MakeGateway

UPGRADE = (
    "GET /ws/scoreboard HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


class CountingUpstream:
    """A TCP server that only counts the connections made to it."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def counting() -> AsyncIterator[CountingUpstream]:
    upstream = CountingUpstream()
    upstream.server = await asyncio.start_server(upstream._accept, "127.0.0.1", 0)
    yield upstream
    upstream.server.close()
    await upstream.server.wait_closed()


async def _raw(client: Client, request: bytes) -> bytes:
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    return head


@pytest.mark.parametrize(
    "extra",
    [
        "X-Foo: \u20ac\r\n",  # the euro sign, UTF-8 encoded
        "X-Foo: a\x01b\r\n",  # a control character
    ],
)
async def test_an_unprintable_upgrade_header_is_400_and_opens_nothing_upstream(
    make_gateway: MakeGateway, counting: CountingUpstream, extra: str
) -> None:
    client = await make_gateway(wait_kafka=False, broadcaster_url=counting.url)
    head = await _raw(client, (UPGRADE + extra + "\r\n").encode())
    # 400 from our edge, or from aiohttp's parser for bytes HTTP forbids outright.
    assert head.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", head
    assert counting.connections == 0


async def test_a_plain_request_to_the_websocket_route_is_400(
    make_gateway: MakeGateway, counting: CountingUpstream
) -> None:
    client = await make_gateway(wait_kafka=False, broadcaster_url=counting.url)
    resp = await client.get("/ws/scoreboard")
    assert resp.status == 400
    assert counting.connections == 0


async def test_connections_per_address_are_capped_and_freed(make_gateway: MakeGateway) -> None:
    client = await make_gateway(wait_kafka=False, ws_max_per_address=2)
    url = client.make_url("/ws/scoreboard")
    async with aiohttp.ClientSession() as session:
        first, second = [await session.ws_connect(url) for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 429
        assert refused.value.headers is not None
        assert int(refused.value.headers["Retry-After"]) >= 1
        await first.close()
        await asyncio.sleep(0.1)
        third = await session.ws_connect(url)  # a slot came free
        await asyncio.gather(second.close(), third.close())


async def test_connects_per_second_are_limited_per_address(make_gateway: MakeGateway) -> None:
    client = await make_gateway(
        wait_kafka=False, ws_connect_rate_per_address=0.01, ws_connect_burst_per_address=2
    )
    url = client.make_url("/ws/scoreboard")
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            await (await session.ws_connect(url)).close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 429


async def test_a_full_gateway_answers_503(make_gateway: MakeGateway) -> None:
    client = await make_gateway(wait_kafka=False, ws_max_connections=1)
    url = client.make_url("/ws/scoreboard")
    async with aiohttp.ClientSession() as session:
        held = await session.ws_connect(url)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 503
        await held.close()
