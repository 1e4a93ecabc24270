"""The web page: ``GET /`` (index.html) and ``/static/*``, with caching and security headers.

The page gets a strict Content-Security-Policy: scripts, styles and connections from this origin
only (plus its ws:/wss: form, which older browsers do not include in 'self'), nothing inline,
no framing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import structlog
from aiohttp import web

from common.problems import NotFound

log = structlog.get_logger(__name__)

static_dir_key = web.AppKey("static_dir", Path)

STATIC_PREFIX: Final = "/static/"
# File names are not content-hashed, so assets are cached briefly and revalidated (ETag and
# Last-Modified make that a cheap 304); the page itself is always revalidated.
ASSET_CACHE: Final = "public, max-age=300"
PAGE_CACHE: Final = "no-cache"
_HOST: Final = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def content_security_policy(host: str | None) -> str:
    """The page's CSP; ``host`` (when well-formed) adds its ws:/wss: origins."""
    connect = "'self'"
    if host and _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "font-src 'self'",
            "manifest-src 'self'",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


async def index(request: web.Request) -> web.FileResponse:
    """``GET /``: the live board page."""
    page = request.app[static_dir_key] / "index.html"
    if not page.is_file():
        raise NotFound("the web page is not installed")
    response = web.FileResponse(page)
    response.headers["Content-Type"] = "text/html; charset=utf-8"
    response.headers["Content-Security-Policy"] = content_security_policy(request.host)
    response.headers["Cache-Control"] = PAGE_CACHE
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


async def asset(request: web.Request) -> web.FileResponse:
    """``GET /static/{path}``: one of the page's files (ETag, Last-Modified, 304 by aiohttp).

    Not aiohttp's static resource: that answers a missing file with a bare 404 of its own,
    past the problem middleware. The route matches a plain file name only (no separators, no
    leading dot), so nothing outside the folder can be named; symlinks are not followed out.
    """
    root = request.app[static_dir_key].resolve()
    path = (root / request.match_info["path"]).resolve()
    if path.parent != root or not path.is_file():
        raise NotFound("no such asset")
    return web.FileResponse(path)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith(STATIC_PREFIX) and response.status in (200, 304):
        response.headers["Cache-Control"] = ASSET_CACHE


def setup_webpage(app: web.Application, static_dir: Path) -> None:
    """Serve the page and its assets from ``static_dir``."""
    app[static_dir_key] = static_dir
    app.router.add_get("/", index)
    if static_dir.is_dir():
        app.router.add_get(STATIC_PREFIX + r"{path:[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}}", asset)
    else:
        log.warning("static_dir_missing", path=str(static_dir))
    app.on_response_prepare.append(_security_headers)
