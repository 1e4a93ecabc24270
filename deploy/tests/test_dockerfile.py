"""The Dockerfile and .dockerignore, checked without a Docker engine."""

from __future__ import annotations

import glob
import re
import shlex
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SERVICES = {"gateway": 8080, "auth": 8081, "score": 8082, "broadcaster": 8083}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """Instructions grouped by FROM."""
    groups: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            groups.append([])
        if groups:
            groups[-1].append((keyword, rest))
    return groups


def build_args() -> dict[str, str]:
    """Default values of the ARGs declared before the first FROM or in a stage."""
    values: dict[str, str] = {}
    for keyword, rest in instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            values[name] = value
    return values


def resolve(text: str) -> str:
    """Substitute ${ARG} with its default."""
    args = build_args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), text)


def test_both_stages_use_python_311_slim() -> None:
    """Same base for build and runtime, so the copied venv's interpreter link holds."""
    bases = [resolve(s[0][1]).split()[0] for s in stages()]
    assert len(bases) == 2
    assert bases[0] == bases[1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", bases[0]), bases[0]


def test_dependencies_come_from_the_lock_file_with_a_pinned_uv() -> None:
    """uv from PyPI at a pinned version; `uv sync --frozen --no-dev --all-packages` into /app."""
    build = stages()[0]
    runs = [resolve(rest) for keyword, rest in build if keyword == "RUN"]
    assert any(re.search(r"pip install .*\buv==\d+\.\d+\.\d+", r) for r in runs), runs
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs
    for sync in syncs:
        for flag in ("--frozen", "--no-dev", "--all-packages"):
            assert flag in sync, (flag, sync)
    env = " ".join(rest for keyword, rest in build if keyword == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/app/.venv" in env
    assert "UV_COMPILE_BYTECODE=1" in env  # the runtime filesystem is read-only


def test_every_workspace_member_is_copied_before_the_dependency_layer() -> None:
    """A member missing here would make `uv sync --frozen` fail (or cache the wrong layer)."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = [
        Path(p).relative_to(REPO).as_posix()
        for pattern in root["tool"]["uv"]["workspace"]["members"]
        for p in sorted(glob.glob(str(REPO / pattern)))
        if (Path(p) / "pyproject.toml").is_file()
    ]
    assert members
    build = stages()[0]
    first_sync = next(i for i, (k, r) in enumerate(build) if k == "RUN" and "uv sync" in r)
    copied = [shlex.split(rest)[0] for k, rest in build[:first_sync] if k == "COPY"]
    for member in members:
        assert f"{member}/pyproject.toml" in copied, member
    assert "uv.lock" in " ".join(r for k, r in build[:first_sync] if k == "COPY")


def test_runtime_runs_as_the_user_kubernetes_expects() -> None:
    """A numeric non-root USER, the same uid the manifests declare in runAsUser."""
    runtime = stages()[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    deployment = yaml.safe_load_all((REPO / "deploy/k8s/base/gateway.yaml").read_text())
    pod = next(d for d in deployment if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)


def test_default_command_is_a_service_and_ports_are_exposed() -> None:
    """CMD names a console script; EXPOSE lists the four agreed ports."""
    runtime = stages()[-1]
    cmd = next(rest for keyword, rest in runtime if keyword == "CMD")
    program = yaml.safe_load(cmd)[0]
    assert program in SERVICES
    exposed = {int(p) for k, r in runtime if k == "EXPOSE" for p in r.split()}
    assert exposed == set(SERVICES.values())
    env = " ".join(rest for keyword, rest in runtime if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "/app/.venv/bin" in env


def test_build_context_is_an_allow_list() -> None:
    """Only manifests, the lock file and the packages reach the build; never .venv or .git."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    assert {"!pyproject.toml", "!uv.lock", "!libs/", "!services/"} <= set(patterns)
    assert "**/.venv/" in patterns
    assert not any(p.startswith("!") and (".venv" in p or ".git" in p) for p in patterns)
