"""Access-token verification: JWKS from the auth service, JWT checks, revocation and bans.

A token is accepted only when it is signed by a key in auth's JWKS with an allowed asymmetric
algorithm (never ``none`` or HMAC), carries our issuer and audience, is inside its validity window
(30 s leeway for clock skew), and neither its login session is revoked nor its user banned or
deleted (one Redis MGET, never cached, so a logout or a ban takes effect at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import jwt
import redis.asyncio as aioredis
import structlog
from aiohttp import ClientError, ClientSession, ClientTimeout, web

from common.problems import Forbidden, ServiceUnavailable, Unauthorized
from gateway.metrics import GatewayMetrics
from gateway.security import Rejection, user_key

log = structlog.get_logger(__name__)

# Asymmetric algorithms only: with an allowlist, a token cannot pick "none" or an HMAC that
# would be "verified" with the public key as the shared secret.
ALLOWED_ALGORITHMS: Final = ("EdDSA", "ES256")
_KEY_SHAPES: Final = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}
_REQUIRED_CLAIMS: Final = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]
MAX_TOKEN_LENGTH: Final = 8192
JWKS_PATH: Final = "/.well-known/jwks.json"


class InvalidToken(Unauthorized, Rejection):
    """401: the token is missing, malformed, expired, revoked or not ours."""

    def __init__(self, detail: str, *, reason: str = "token_invalid") -> None:
        challenge = 'Bearer realm="scoreboard"'
        if reason != "token_missing":
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})
        self.reason = reason


class UserBanned(Forbidden, Rejection):
    """403: the account is banned."""

    reason = "user_banned"


class KeysUnavailable(ServiceUnavailable):
    """503: the auth service's keys were never fetched, so no token can be checked yet."""

    def __init__(self) -> None:
        super().__init__(
            "token keys are not available yet; retry shortly", headers={"Retry-After": "1"}
        )


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: uuid.UUID
    username: str
    roles: tuple[str, ...]
    session_id: str
    token_id: str
    expires_at: float


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
        retry = 0.5
        while True:
            try:
                await self.refresh()
                retry = 0.5
                await asyncio.sleep(interval_s)
            except JwksError as exc:
                log.warning("jwks_refresh_failed", error=str(exc), retry_in_s=retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, 10.0)


@dataclass(frozen=True)
class _Cached:
    principal: Principal
    valid_until: float


class TokenVerifier:
    """Signature and claims checks, with a small cache of verified tokens.

    A cache entry never outlives the token's ``exp`` and is dropped whenever the key set changes
    (a key removed from the JWKS must stop verifying tokens at once).
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway_s: float,
        max_lifetime_s: int,
        cache_size: int,
        cache_ttl_s: float = 60.0,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._max_lifetime = max_lifetime_s
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl_s

    def clear_cache(self) -> None:
        """Forget every verified token (called when the JWKS changes)."""
        self._cache.clear()

    async def verify(self, token: str) -> Principal:
        """The principal of a valid token, else :class:`InvalidToken`."""
        digest = hashlib.blake2b(token.encode(), digest_size=32).digest()
        now = time.time()
        hit = self._cache.get(digest)
        if hit is not None:
            if hit.valid_until > now:
                self._cache.move_to_end(digest)
                return hit.principal
            del self._cache[digest]
        principal = await self._verify(token, now)
        if self._cache_size > 0:
            self._cache[digest] = _Cached(
                principal, min(principal.expires_at, now + self._cache_ttl)
            )
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str, now: float) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token is too long", reason="token_malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("token is malformed", reason="token_malformed") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidToken("token algorithm is not accepted", reason="token_algorithm")
        if not isinstance(kid, str) or not kid:
            raise InvalidToken("token has no key id", reason="token_malformed")
        key = await self._jwks.key_for(kid)
        if key is None:
            raise InvalidToken("token is signed by an unknown key", reason="token_unknown_key")
        if key.algorithm_name != alg:
            raise InvalidToken("token algorithm does not match its key", reason="token_algorithm")
        claims = self._decode(token, key, alg)
        return self._principal(claims, now)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token has expired", reason="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token is not valid yet", reason="token_not_yet_valid") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("token signature is invalid", reason="token_signature") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError, jwt.MissingRequiredClaimError):
            raise InvalidToken("token is not for this service", reason="token_claims") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("token is invalid", reason="token_invalid") from None

    def _principal(self, claims: dict[str, Any], now: float) -> Principal:
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError:
            raise InvalidToken("token subject is not a user id", reason="token_claims") from None
        sid, jti = claims["sid"], claims["jti"]
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(sid, str) or not sid or not isinstance(jti, str) or not jti:
            raise InvalidToken("token session or id is invalid", reason="token_claims")
        if exp - iat > self._max_lifetime + self._leeway:
            raise InvalidToken("token lifetime exceeds the maximum", reason="token_claims")
        name = claims.get("name")
        roles = claims.get("roles")
        return Principal(
            user_id=user_id,
            username=name if isinstance(name, str) else "",
            roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
            session_id=sid,
            token_id=jti,
            expires_at=float(exp),
        )


def raise_for_account(*, revoked: bool, status: object) -> None:
    """Raise what a revoked session (401), deleted user (401) or banned user (403) gets."""
    if revoked:
        raise InvalidToken("this login session has been revoked", reason="session_revoked")
    if status == b"deleted":
        raise InvalidToken("this account no longer exists", reason="user_deleted")
    if status == b"banned":
        raise UserBanned("this account is banned")


class Authenticator:
    """Token verification plus the live account checks in Redis."""

    def __init__(self, verifier: TokenVerifier, redis: aioredis.Redis, prefix: str) -> None:
        self.verifier = verifier
        self._redis = redis
        self._prefix = prefix

    def account_keys(self, principal: Principal) -> tuple[str, str]:
        """The Redis keys of the live account checks: revoked session, user status."""
        return (
            f"{self._prefix}revoked-session:{principal.session_id}",
            f"{self._prefix}user-status:{principal.user_id}",
        )

    async def check_account(self, principal: Principal) -> None:
        """401 if the session was revoked or the user deleted, 403 if banned (one MGET)."""
        revoked, status = await self._redis.mget(*self.account_keys(principal))
        raise_for_account(revoked=revoked is not None, status=status)

    async def authenticate(
        self, request: web.Request, token: str, *, check_account: bool = True
    ) -> Principal:
        """Verify ``token`` for ``request`` (the user id is recorded for security logs).

        ``check_account=False`` leaves the live account checks to the caller, which must make
        them (the update path does, in its single admission round trip).
        """
        principal = await self.verifier.verify(token)
        request[user_key] = str(principal.user_id)
        if check_account:
            await self.check_account(principal)
        return principal


authenticator_key = web.AppKey("authenticator", Authenticator)
jwks_key = web.AppKey("jwks", JwksCache)


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header (None without the header)."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise InvalidToken("use 'Authorization: Bearer <token>'", reason="token_malformed")
    return token


def websocket_token(request: web.Request) -> tuple[str | None, bool]:
    """A WebSocket's token and whether it came as the ``bearer, <token>`` subprotocol pair.

    Browsers cannot set headers on a WebSocket, hence the query parameter and the subprotocol.
    """
    token = bearer_token(request)
    if token is not None:
        return token, False
    query_token = request.query.get("access_token")
    if query_token:
        return query_token, False
    offered = [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in value.split(",")
    ]
    lowered = [p.lower() for p in offered]
    if "bearer" in lowered:
        at = lowered.index("bearer")
        if at + 1 < len(offered) and offered[at + 1]:
            return offered[at + 1], True
        raise InvalidToken("send the token after the 'bearer' subprotocol", reason="token_missing")
    return None, False


async def require_principal(request: web.Request, *, check_account: bool = True) -> Principal:
    """The verified principal of a request with a Bearer token (401 without one)."""
    token = bearer_token(request)
    if token is None:
        raise InvalidToken("this endpoint needs a Bearer access token", reason="token_missing")
    return await request.app[authenticator_key].authenticate(
        request, token, check_account=check_account
    )
