"""Wiring: the score service's aiohttp application and the resources it owns."""

from __future__ import annotations

from aiohttp import web

from common.web import create_base_app
from score.settings import Settings

settings_key = web.AppKey("settings", Settings)


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    app[settings_key] = settings
    return app
