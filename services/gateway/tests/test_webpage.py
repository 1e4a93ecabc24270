"""The web page and its assets: content, caching and security headers."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.gateway.tests.support import Client, MakeGateway


async def test_page_has_a_strict_content_security_policy(gateway: Client) -> None:
    resp = await gateway.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "<title>board</title>" in await resp.text()
    csp = dict(
        part.strip().split(" ", 1) for part in resp.headers["Content-Security-Policy"].split(";")
    )
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    host = f"127.0.0.1:{gateway.port}"
    assert csp["connect-src"] == f"'self' ws://{host} wss://{host}"
    assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_forged_host_does_not_leak_into_the_policy(gateway: Client) -> None:
    resp = await gateway.get("/", headers={"Host": "evil.example; script-src *"})
    assert "connect-src 'self';" in resp.headers["Content-Security-Policy"]


async def test_assets_are_cached_briefly_and_revalidated(gateway: Client) -> None:
    resp = await gateway.get("/static/app.js")
    assert resp.status == 200
    assert "javascript" in resp.content_type
    assert resp.headers["Cache-Control"] == "public, max-age=300"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    etag, modified = resp.headers.get("ETag"), resp.headers["Last-Modified"]
    conditional = {"If-None-Match": etag} if etag else {"If-Modified-Since": modified}
    again = await gateway.get("/static/app.js", headers=conditional)
    assert again.status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/static/missing.js",
        "/static/0",
        "/static/../conftest.py",
        "/static/%2e%2e/conftest.py",
        "/static/.hidden",
        "/static/a/b",
    ],
)
async def test_nothing_outside_the_static_dir_is_served(gateway: Client, path: str) -> None:
    resp = await gateway.get(path)
    assert resp.status in (403, 404)
    assert resp.content_type == "application/problem+json"  # aiohttp's static 404 was bare


async def test_a_missing_page_is_a_404_problem(make_gateway: MakeGateway, tmp_path: Path) -> None:
    client = await make_gateway(wait_kafka=False, static_dir=tmp_path / "nowhere")
    resp = await client.get("/")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
