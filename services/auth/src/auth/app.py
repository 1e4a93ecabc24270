"""Wiring: the auth service's aiohttp application and the resources it owns."""

from __future__ import annotations

from aiohttp import web

from auth.settings import Settings
from common.web import create_base_app

settings_key = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    app[settings_key] = settings
    return app
