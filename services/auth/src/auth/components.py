"""The service's parts, built once per app (see app.py) and reached by handlers via one AppKey."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from auth.accounts import Accounts
from auth.keys import KeyStore
from auth.metrics import AuthMetrics
from auth.sessions import Sessions
from auth.settings import Settings
from auth.tokens import Tokens


@dataclass(frozen=True)
class Components:
    """Everything a request handler needs."""

    settings: Settings
    accounts: Accounts
    sessions: Sessions
    tokens: Tokens
    keystore: KeyStore
    metrics: AuthMetrics


components_key = web.AppKey("auth_components", Components)
