"""Every console script of the workspace answers ``--help`` and ``--version`` without side effects.

The scripts are read from every member's pyproject.toml, so a new one is covered as soon as it is
declared. Each runs as an operator would run it, with every dependency pointed at a listening
socket of this test's: an answer must come back (exit 0) without a single connection reaching it,
so no server was started, no migration applied and no connection opened. Subcommands found in a
``--help`` (``auth ban``, ``score boards``...) answer their own ``--help`` the same way.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def console_scripts() -> list[str]:
    """Every ``[project.scripts]`` entry of the workspace's members."""
    names = []
    for pyproject in sorted(
        [*ROOT.glob("libs/*/pyproject.toml"), *ROOT.glob("services/*/pyproject.toml")]
    ):
        names += tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {})
    return names


@pytest.fixture
def sentinel() -> Iterator[socket.socket]:
    """A listening socket that every dependency address points at; nothing may connect."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def _environ(sentinel: socket.socket) -> dict[str, str]:
    port = sentinel.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREBOARD_", "OTEL_"))}
    env.update(
        SCOREBOARD_POSTGRES_DSN=f"postgresql://nobody:nothing@127.0.0.1:{port}/nothing",
        SCOREBOARD_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        SCOREBOARD_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
        SCOREBOARD_AUTH_URL=f"http://127.0.0.1:{port}",
        SCOREBOARD_BROADCASTER_URL=f"http://127.0.0.1:{port}",
        SCOREBOARD_PORT=str(port),  # taken: a server that started would fail, not exit 0
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
    )
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


def _nothing_connected(sentinel: socket.socket) -> None:
    try:
        conn, _ = sentinel.accept()
    except BlockingIOError:
        return
    conn.close()
    pytest.fail("a --help or --version opened a connection to a dependency")


def test_the_workspace_declares_the_expected_scripts() -> None:
    scripts = set(console_scripts())
    expected = {
        "gateway",
        "score",
        "broadcaster",
        "auth",
        "scoreboard-migrate",
        "scoreboard-topics",
    }
    assert expected <= scripts


@pytest.mark.parametrize("script", console_scripts())
def test_help_and_version_have_no_side_effects(script: str, sentinel: socket.socket) -> None:
    env = _environ(sentinel)
    version = _run([script, "--version"], env)
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(rf"{re.escape(script)} \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    shown = _run([script, "--help"], env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: {script}"), shown.stdout
    # Subcommands, as argparse lists them: {serve,boards,...}
    listed = re.search(r"\{([a-z-]+(?:,[a-z-]+)+)\}", shown.stdout)
    commands = listed.group(1).split(",") if listed else []
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: (c, _run([script, c, "--help"], env)), commands))
    for command, result in results:
        assert result.returncode == 0, f"{script} {command} --help: {result.stderr}"
        assert result.stdout.startswith(f"usage: {script} {command}"), result.stdout
    _nothing_connected(sentinel)
