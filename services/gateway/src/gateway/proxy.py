"""Reverse proxy to the internal services: HTTP to auth and the broadcaster, and the WebSocket.

One shared :class:`aiohttp.ClientSession` (connection pooling) serves the HTTP upstreams; each
WebSocket gets a raw connection of its own that passes the broadcaster's frames through
unchanged (:mod:`gateway.wsupstream`). Requests go upstream without hop-by-hop headers and
without any client-sent ``X-Scoreboard-User-Id``: the broadcaster trusts that header, so only
the gateway may set it, and only after verifying a token.
``X-Forwarded-For`` carries exactly one address, the client's as the gateway resolved it, so
upstreams that believe the last hop get the right one. An unreachable upstream is a 503.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Final
from uuid import UUID

import structlog
from aiohttp import (
    ClientError,
    ClientSession,
    ClientTimeout,
    WSCloseCode,
    WSMsgType,
    web,
)
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from common.bodies import read_body
from common.middlewares import REQUEST_ID, request_id_key
from common.problems import ServiceUnavailable
from gateway.edge import client_address
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings
from gateway.tokens import Principal
from gateway.ws_admission import check_upgrade_headers
from gateway.wsupstream import Ended, UpstreamHandshakeError, UpstreamSocket

log = structlog.get_logger(__name__)

USER_HEADER: Final = "X-Scoreboard-User-Id"
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_DROP: Final = _HOP_BY_HOP | {
    "host",
    "content-length",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    REQUEST_ID.lower(),
    USER_HEADER.lower(),
}
_RESPONSE_DROP: Final = _HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}
# Codes that may appear in a close frame (RFC 6455 7.4); 1005, 1006 and 1015 may not.
_SENDABLE_CLOSE: Final = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
CLOSE_TOO_SLOW: Final = 4008
# Headers the raw upgrade request writes itself.
_UPGRADE_OWN: Final = frozenset({"host", "upgrade", "connection"})
# Pause the broadcaster's frames while this much waits for a client (a few board frames).
_CLIENT_HIGH_WATER: Final = 64 * 1024


class UpstreamUnavailable(ServiceUnavailable):
    """503: an internal service did not answer."""

    def __init__(self, upstream: str) -> None:
        super().__init__(
            f"the {upstream} service is unavailable; retry shortly", headers={"Retry-After": "1"}
        )


def _connection_tokens(headers: MultiMapping[str]) -> set[str]:
    """Header names listed in Connection: hop-by-hop for this message only (RFC 9110 7.6.1)."""
    values = headers.getall("Connection", [])
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def _describe(exc: BaseException) -> str:
    """A short description of a client error (its repr can carry every request header)."""
    return f"{type(exc).__name__}: {exc}"[:300]


def _sendable(code: int) -> bool:
    return code in _SENDABLE_CLOSE or 3000 <= code <= 4999


def _outcome(task: asyncio.Task[Ended]) -> Ended | None:
    """How a pump ended, or None if it was cancelled or failed (a failure is logged)."""
    if task.cancelled():
        return None
    if (error := task.exception()) is not None:
        log.info("ws_pipe_failed", error=repr(error))
        return None
    return task.result()


class Proxy:
    """Forwards requests to auth and the broadcaster through one client session."""

    def __init__(
        self,
        session: ClientSession,
        settings: Settings,
        metrics: GatewayMetrics,
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._timeout = ClientTimeout(total=settings.upstream_timeout_s)
        self._upstream_timeout = settings.upstream_timeout_s
        self.upstreams = {"auth": settings.auth_url, "broadcaster": settings.broadcaster_url}
        self._heartbeat = settings.ws_heartbeat_s
        self._send_timeout = settings.ws_send_timeout_s
        self._max_client_message = settings.ws_max_client_message
        self.clients: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()

    def _headers(
        self, request: web.Request, *, user_id: UUID | None, keep_authorization: bool
    ) -> CIMultiDict[str]:
        incoming = request.headers
        drop = _REQUEST_DROP | _connection_tokens(incoming)
        if not keep_authorization:
            drop = drop | {"authorization"}
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in incoming.items() if k.lower() not in drop
        )
        headers["X-Forwarded-For"] = client_address(request)
        headers[REQUEST_ID] = request[request_id_key]
        if user_id is not None:
            headers[USER_HEADER] = str(user_id)
        return headers

    def _url(self, upstream: str, request: web.Request) -> URL:
        # The routes only match safe path characters, so the raw path can be reused verbatim.
        return URL(self.upstreams[upstream].rstrip("/") + request.rel_url.raw_path_qs, encoded=True)

    async def forward(
        self,
        request: web.Request,
        upstream: str,
        *,
        user_id: UUID | None = None,
        keep_authorization: bool = False,
    ) -> web.Response:
        """Send ``request`` to ``upstream`` (same path and query) and relay its answer."""
        body = await read_body(request)
        try:
            async with self._session.request(
                request.method,
                self._url(upstream, request),
                headers=self._headers(
                    request, user_id=user_id, keep_authorization=keep_authorization
                ),
                data=body or None,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                drop = _RESPONSE_DROP | _connection_tokens(resp.headers)
                headers = CIMultiDict(
                    (k, v) for k, v in resp.headers.items() if k.lower() not in drop
                )
                return web.Response(status=resp.status, body=payload, headers=headers)
        except (ClientError, TimeoutError) as exc:
            self._metrics.upstream_errors.labels(upstream).inc()
            log.warning("upstream_unavailable", upstream=upstream, error=_describe(exc))
            raise UpstreamUnavailable(upstream) from None

    async def websocket(
        self, request: web.Request, principal: Principal | None, *, bearer_subprotocol: bool
    ) -> web.WebSocketResponse:
        """Pipe a client WebSocket to the broadcaster's, closing together.

        The upstream connection is opened before the client's upgrade, so an unreachable
        broadcaster is a plain 503. The broadcaster's frames go to the client byte for byte
        (:mod:`gateway.wsupstream`); a client that stops reading pauses them, and is closed with
        4008 after ``ws_send_timeout_s``.
        """
        url = URL(self.upstreams["broadcaster"].rstrip("/"))
        headers = self._headers(
            request,
            user_id=principal.user_id if principal else None,
            keep_authorization=False,
        )
        forwarded = {
            k: v
            for k, v in headers.items()
            if not k.lower().startswith("sec-websocket") and k.lower() not in _UPGRADE_OWN
        }
        check_upgrade_headers(forwarded)  # 400 before any upstream socket exists
        loop = asyncio.get_running_loop()
        host, port = url.host or "127.0.0.1", url.port or 80
        upstream: UpstreamSocket | None = None
        try:
            async with asyncio.timeout(self._upstream_timeout):
                _, upstream = await loop.create_connection(
                    lambda: UpstreamSocket(
                        high_water=_CLIENT_HIGH_WATER, stuck_after_s=self._send_timeout
                    ),
                    host,
                    port,
                    ssl=url.scheme == "https" or None,
                )
                await upstream.handshake(
                    url.raw_authority, url.path.rstrip("/") + "/ws/scoreboard", forwarded
                )
        except (OSError, TimeoutError, UpstreamHandshakeError) as exc:
            if upstream is not None:
                upstream.abort()
            self._metrics.upstream_errors.labels("broadcaster").inc()
            log.warning("upstream_unavailable", upstream="broadcaster", error=_describe(exc))
            raise UpstreamUnavailable("broadcaster") from None
        except BaseException:
            if upstream is not None:  # never leave a socket to the broadcaster behind
                upstream.abort()
            raise

        client = web.WebSocketResponse(
            protocols=("bearer",) if bearer_subprotocol else (),
            heartbeat=self._heartbeat,
            max_msg_size=self._max_client_message,
            compress=False,  # the broadcaster's frames are passed on uncompressed
        )
        try:
            await client.prepare(request)
        except BaseException:
            upstream.abort()
            raise
        assert request.transport is not None
        upstream.attach(request.transport)
        self.clients.add(client)
        self._metrics.ws_connections.inc()
        try:
            await self._pipe(request, client, upstream)
        finally:
            self._metrics.ws_connections.dec()
            self.clients.discard(client)
        return client

    async def _pipe(
        self, request: web.Request, client: web.WebSocketResponse, upstream: UpstreamSocket
    ) -> None:
        to_upstream = asyncio.create_task(self._client_to_upstream(client, upstream))
        try:
            await asyncio.wait({to_upstream, upstream.ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this handler is cancelled (aiohttp may do that once the client's
            # connection is gone): the other side must still learn how the pipe ended.
            to_upstream.cancel()
            await asyncio.gather(to_upstream, return_exceptions=True)
            from_upstream = upstream.ended.result() if upstream.ended.done() else None
            await self._close_both(request, client, upstream, from_upstream, _outcome(to_upstream))

    async def _close_both(
        self,
        request: web.Request,
        client: web.WebSocketResponse,
        upstream: UpstreamSocket,
        from_upstream: Ended | None,
        from_client: Ended | None,
    ) -> None:
        if from_upstream is not None and from_upstream.stuck:
            log.info("ws_client_too_slow", address=client_address(request))
            upstream.close(WSCloseCode.GOING_AWAY)
            await self._close_abortively(
                request, client, CLOSE_TOO_SLOW, "too slow: not reading frames"
            )
        elif from_upstream is not None:
            # The broadcaster closed: pass its code on (4008, 1012, ...); a dropped link is 1011.
            upstream.close(WSCloseCode.OK)
            code = from_upstream.code
            if code is None or not _sendable(code):
                code = WSCloseCode.INTERNAL_ERROR
            await self._close_abortively(request, client, code, from_upstream.reason)
        else:
            # The client left (its own close code goes upstream) or vanished (going away).
            code = from_client.code if from_client is not None else None
            if code is None or not _sendable(code):
                code = WSCloseCode.OK if from_client is not None else WSCloseCode.GOING_AWAY
            reason = from_client.reason if from_client is not None else ""
            upstream.close(code, reason.encode())
            if not client.closed:
                await self._close_abortively(request, client, WSCloseCode.INTERNAL_ERROR, "")

    async def _client_to_upstream(
        self, client: web.WebSocketResponse, upstream: UpstreamSocket
    ) -> Ended:
        while True:
            msg = await client.receive()
            if msg.type is WSMsgType.TEXT:
                upstream.send(0x1, msg.data.encode())
            elif msg.type is WSMsgType.BINARY:
                upstream.send(0x2, msg.data)
            elif msg.type is WSMsgType.CLOSE:
                return Ended(code=msg.data, reason=msg.extra or "")
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return Ended(code=client.close_code)

    async def _close_abortively(
        self, request: web.Request, client: web.WebSocketResponse, code: int, reason: str
    ) -> None:
        try:
            await asyncio.wait_for(client.close(code=code, message=reason.encode()[:120]), 2.0)
        except (TimeoutError, ConnectionError):
            # A client that does not read will not read our close frame either: drop it.
            if request.transport is not None:
                request.transport.abort()

    async def close_clients(self) -> None:
        """Close every proxied WebSocket with 1012 (service restart) so clients reconnect."""
        clients = list(self.clients)
        await asyncio.gather(
            *(
                asyncio.wait_for(ws.close(code=WSCloseCode.SERVICE_RESTART, message=b"restart"), 2)
                for ws in clients
            ),
            return_exceptions=True,
        )
