"""Auth's public signing keys (JWKS): fetched at start, refreshed, and on an unknown key id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import jwt
import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout

from common.backoff import Backoff
from common.problems import ServiceUnavailable
from gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

_KEY_SHAPES: Final = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
JWKS_PATH: Final = "/.well-known/jwks.json"


class KeysUnavailable(ServiceUnavailable):
    """503: the auth service's keys were never fetched, so no token can be checked yet."""

    def __init__(self) -> None:
        super().__init__(
            "token keys are not available yet; retry shortly", headers={"Retry-After": "1"}
        )


class JwksError(Exception):
    """The JWKS could not be fetched or parsed."""


def parse_jwks(document: Any) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document, by kid (others are skipped and logged)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("JWKS document has no 'keys' list")
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        alg = jwk.get("alg") or ("EdDSA" if jwk.get("kty") == "OKP" else "ES256")
        shape = _KEY_SHAPES.get(alg)
        usable = (
            isinstance(kid, str)
            and bool(kid)
            and jwk.get("use", "sig") == "sig"
            and shape is not None
            and (jwk.get("kty"), jwk.get("crv")) == shape
        )
        if not usable:
            log.warning("jwks_key_skipped", kid=kid, alg=alg, kty=jwk.get("kty"))
            continue
        try:
            keys[str(kid)] = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWKError as exc:
            log.warning("jwks_key_invalid", kid=kid, error=str(exc))
    return keys


class JwksCache:
    """Auth's public keys, fetched once at start, refreshed periodically and on an unknown kid.

    Refreshes triggered by unknown kids happen at most once per ``min_refresh_s``, so a flood of
    tokens with made-up kids cannot turn into a flood of requests to the auth service.
    """

    def __init__(
        self,
        session: ClientSession,
        auth_url: str,
        *,
        min_refresh_s: float,
        metrics: GatewayMetrics,
        on_change: Callable[[], None] = lambda: None,
        fetch_timeout_s: float = 3.0,
    ) -> None:
        self._session = session
        self._url = auth_url.rstrip("/") + JWKS_PATH
        self._min_refresh_s = min_refresh_s
        self._metrics = metrics
        self._on_change = on_change
        self._timeout = ClientTimeout(total=fetch_timeout_s)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = False
        self._last_attempt = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def fetched(self) -> bool:
        """True once a JWKS has been fetched successfully."""
        return self._fetched

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently trusted."""
        return frozenset(self._keys)

    async def refresh(self) -> None:
        """Fetch the JWKS now (raises :class:`JwksError` when that fails)."""
        async with self._lock:
            await self._refresh_locked()

    async def _refresh_locked(self) -> None:
        self._last_attempt = time.monotonic()
        try:
            async with self._session.get(self._url, timeout=self._timeout) as resp:
                if resp.status != 200:
                    raise JwksError(f"JWKS answered {resp.status}")
                document = await resp.json(content_type=None)
        except (ClientError, TimeoutError, ValueError) as exc:
            self._metrics.jwks_refreshes.labels("failed").inc()
            raise JwksError(f"JWKS fetch failed: {type(exc).__name__}: {exc}") from exc
        except JwksError:
            self._metrics.jwks_refreshes.labels("failed").inc()
            raise
        keys = parse_jwks(document)
        changed = keys.keys() != self._keys.keys()
        self._keys = keys
        self._fetched = True
        self._metrics.jwks_refreshes.labels("ok").inc()
        if changed:
            log.info("jwks_updated", kids=sorted(keys))
            self._on_change()

    async def key_for(self, kid: str) -> jwt.PyJWK | None:
        """The key for ``kid``; an unknown kid triggers a throttled refresh first."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            if time.monotonic() - self._last_attempt >= self._min_refresh_s:
                try:
                    await self._refresh_locked()
                except JwksError as exc:
                    log.warning("jwks_refresh_failed", error=str(exc))
            if not self._fetched:
                raise KeysUnavailable
            return self._keys.get(kid)

    async def run(self, interval_s: float) -> None:
        """Background loop: fetch until the first success (backing off), then every interval."""
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        while True:
            try:
                await self.refresh()
                backoff.reset()
                await asyncio.sleep(interval_s)
            except JwksError as exc:
                delay = backoff.next_delay()
                log.warning("jwks_refresh_failed", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)
