"""Access tokens: EdDSA (Ed25519) JWTs signed with the current key, verified against our own keys.

Claims (the cross-service agreement): iss, aud, sub (user id), name, roles, iat, nbf, exp, jti,
sid (login session id). The gateway verifies them against the JWKS; this service verifies them
only for logout.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from auth.keys import ALGORITHM, KeyStore
from auth.security import SecurityRejection
from auth.settings import Settings
from common.problems import Unauthorized

# Verifiers allow this much clock skew (the gateway uses the same).
LEEWAY_S = 30
_REQUIRED = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid"]


class InvalidAccessToken(SecurityRejection, Unauthorized):
    """401: the bearer token is missing, malformed, expired, or not ours."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            "a valid access token is required",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
        self.reason = reason


@dataclass(frozen=True)
class AccessToken:
    """A freshly signed token and what the client is told about it."""

    token: str
    expires_in: int
    jti: str
    kid: str


@dataclass(frozen=True)
class VerifiedToken:
    """The claims of a token that verified."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    username: str
    jti: str
    expires_at: int


class Tokens:
    """Issues and verifies access tokens with the replica's key store."""

    def __init__(self, keystore: KeyStore, settings: Settings) -> None:
        self._keys = keystore
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._ttl_s = settings.access_ttl_s

    def issue(
        self, *, user_id: uuid.UUID, username: str, roles: list[str], session_id: uuid.UUID
    ) -> AccessToken:
        """Sign a token for ``user_id`` in login session ``session_id``."""
        key = self._keys.signing_key()
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "name": username,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + self._ttl_s,
            "jti": jti,
            "sid": str(session_id),
        }
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return AccessToken(token=token, expires_in=self._ttl_s, jti=jti, kid=key.kid)

    async def verify(self, token: str) -> VerifiedToken:
        """Check signature (EdDSA only, a published kid), issuer, audience and times."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidAccessToken("malformed_token") from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise InvalidAccessToken("wrong_algorithm_or_kid")
        public_key = await self._keys.verification_key(kid)
        if public_key is None:
            raise InvalidAccessToken("unknown_kid")
        try:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": _REQUIRED},
            )
            return VerifiedToken(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                username=str(claims.get("name", "")),
                jti=str(claims["jti"]),
                expires_at=int(claims["exp"]),
            )
        except jwt.ExpiredSignatureError:
            raise InvalidAccessToken("expired_token") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidAccessToken("invalid_token") from None
