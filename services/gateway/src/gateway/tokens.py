"""Access-token verification: the signature against auth's JWKS and the claims.

A token is accepted only when it is signed by a key in auth's JWKS with an allowed asymmetric
algorithm (never ``none`` or HMAC), carries our issuer and audience, and is inside its validity
window (30 s leeway for clock skew). Whether its session or user is still in good standing is
checked live, per request (:mod:`gateway.accounts`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

import jwt

from common.problems import Unauthorized
from common.rejections import Rejection
from gateway.jwks import JwksCache

# Asymmetric algorithms only: with an allowlist, a token cannot pick "none" or an HMAC that
# would be "verified" with the public key as the shared secret.
ALLOWED_ALGORITHMS: Final = ("EdDSA", "ES256")
_REQUIRED_CLAIMS: Final = ["exp", "iat", "iss", "aud", "sub", "jti", "sid"]
MAX_TOKEN_LENGTH: Final = 8192


class InvalidToken(Unauthorized, Rejection):
    """401: the token is missing, malformed, expired, revoked or not ours."""

    def __init__(self, detail: str, *, reason: str = "token_invalid") -> None:
        challenge = 'Bearer realm="scoreboard"'
        if reason != "token_missing":
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})
        self.reason = reason


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: uuid.UUID
    username: str
    roles: tuple[str, ...]
    session_id: str
    token_id: str
    expires_at: float


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
        # A JWT is base64url and dots. Header bytes beyond ASCII reach us as surrogates
        # (aiohttp decodes with surrogateescape), which no encoder accepts: refuse them here.
        if not token.isascii() or not token.isprintable():
            raise InvalidToken("the token is not a JWT", reason="token_malformed")
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
