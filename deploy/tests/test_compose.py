"""docker-compose.yml, checked without a Docker engine: what `make up` relies on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from common import db_access, redis_access

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
APP_SERVICES = {"gateway": 8080, "auth": 8081, "score": 8082, "broadcaster": 8083}
INFRA_IMAGES = {"kafka": "apache/kafka:3.9.1", "postgres": "postgres:15", "redis": "redis:7"}
# Compose's own keys for a service (a misspelt key is an error for `docker compose config`).
SERVICE_KEYS = {
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "depends_on",
    "healthcheck",
    "restart",
    "init",
    "read_only",
    "tmpfs",
    "cap_drop",
    "cap_add",
    "security_opt",
    "stop_grace_period",
    "user",
    "working_dir",
    "networks",
    "profiles",
    "deploy",
    "labels",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, with an empty environment."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match.group("name"), match.group("op"), match.group("default")
        current = env.get(name)
        if op == ":-" and not current:
            return default or ""
        if op == "-" and current is None:
            return default or ""
        if current is None:
            raise KeyError(f"${{{name}}} has no default")
        return current

    return _VARIABLE.sub(substitute, value).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> Manifest:
    """The compose file as `docker compose config` would see it with no variables exported."""
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    result: Manifest = interpolate(raw)
    return result


def environment(service: Manifest) -> dict[str, str]:
    """A service's environment as strings, whichever form (map or list) it is written in."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_words(service: Manifest) -> list[str]:
    """The command as a list of words."""
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def console_scripts() -> set[str]:
    """Every [project.scripts] entry of the workspace's members."""
    names: set[str] = set()
    for pyproject in [*REPO.glob("libs/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]:
        names |= set(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return names


def test_services_use_only_known_keys(compose: Manifest) -> None:
    """Top level and services hold only keys Compose knows (extension fields start with x-)."""
    for key in compose:
        assert key in {"name", "services", "volumes", "networks", "secrets", "configs"} or (
            key.startswith("x-")
        ), key
    for name, service in compose["services"].items():
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)


def test_whole_system_is_there(compose: Manifest) -> None:
    """The official infrastructure images, the four services and the one-shot migration."""
    services = compose["services"]
    assert set(services) == {*APP_SERVICES, *INFRA_IMAGES, "migrate"}
    for name, image in INFRA_IMAGES.items():
        assert services[name]["image"] == image
        assert "build" not in services[name]


def test_services_are_built_from_the_repository(compose: Manifest) -> None:
    """One image from ./Dockerfile; the command picks the program, which really exists."""
    scripts = console_scripts()
    for name in [*APP_SERVICES, "migrate"]:
        service = compose["services"][name]
        assert service["build"]["context"] == "."
        assert (REPO / service["build"].get("dockerfile", "Dockerfile")).is_file()
        assert service["image"] == compose["services"]["gateway"]["image"]
        words = command_words(service)
        programs = re.findall(r"[a-z-]+", " ".join(words[2:])) if words[:2] == ["sh", "-c"] else []
        if name == "migrate":
            assert words[:2] == ["sh", "-c"]
            assert re.fullmatch(r"scoreboard-migrate\s*&&\s*scoreboard-topics", words[2])
            assert set(programs) <= scripts
        else:
            assert words == [name]
            assert name in scripts


def test_dependencies_exist_and_wait_for_the_right_condition(compose: Manifest) -> None:
    """depends_on names real services: one-shots completed, the rest healthy (with a check)."""
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long form with a condition"
        for dep, rule in depends.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            one_shot = services[dep].get("restart") == "no"
            if one_shot:
                assert rule["condition"] == "service_completed_successfully", (name, dep)
            else:
                assert rule["condition"] == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert set(services["migrate"]["depends_on"]) == {"postgres", "kafka"}
    assert set(services["gateway"]["depends_on"]) >= {"auth", "broadcaster"}


def test_dependency_graph_has_no_cycle(compose: Manifest) -> None:
    """Compose refuses a cycle; so does this."""
    graph = {n: set(s.get("depends_on") or {}) for n, s in compose["services"].items()}
    done: set[str] = set()
    while graph:
        ready = {n for n, deps in graph.items() if deps <= done}
        assert ready, f"cycle among {sorted(graph)}"
        done |= ready
        graph = {n: deps for n, deps in graph.items() if n not in ready}


def test_one_shots_are_awaited_by_a_long_running_service(compose: Manifest) -> None:
    """`docker compose up --wait` exits 0 only if a running service adopts each one-shot."""
    services = compose["services"]
    for name, service in services.items():
        if service.get("restart") != "no":
            continue
        adopters = [
            other
            for other, spec in services.items()
            if (spec.get("depends_on") or {}).get(name, {}).get("condition")
            == "service_completed_successfully"
        ]
        assert adopters, f"nothing waits for one-shot {name}"
        assert "healthcheck" not in service


def test_every_long_running_service_has_a_healthcheck(compose: Manifest) -> None:
    """Infrastructure checks itself; each app service probes /healthz on its own port."""
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "retries"):
            assert key in check, (name, key)
        if name in APP_SERVICES:
            probe = " ".join(check["test"])
            port = APP_SERVICES[name]
            assert f"http://127.0.0.1:{port}/healthz" in probe, probe
            assert environment(service)["SCOREBOARD_PORT"] == str(port)


def test_only_the_gateway_publishes_a_port(compose: Manifest) -> None:
    """The gateway is the one public origin, on 8080; nothing else is reachable from the host."""
    for name, service in compose["services"].items():
        if name == "gateway":
            (mapping,) = service["ports"]
            host, _, container = str(mapping).rpartition(":")
            assert container == "8080"
            assert host.endswith("8080")
        else:
            assert "ports" not in service, f"{name} publishes a port"


def test_app_services_reach_the_infrastructure_by_service_name(compose: Manifest) -> None:
    """DSN, Redis URL, Kafka bootstrap and upstream URLs point at services that exist."""
    services = compose["services"]
    kafka_env = environment(services["kafka"])
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split("//", 1)[1]
    for name in [*APP_SERVICES, "migrate"]:
        env = environment(services[name])
        assert env["SCOREBOARD_HOST"] == "0.0.0.0"  # noqa: S104 (inside its container)
        dsn = urlsplit(env["SCOREBOARD_POSTGRES_DSN"])
        postgres = environment(services["postgres"])
        assert dsn.hostname in services
        if name in db_access.SERVICES:  # its own role, created by the init script
            assert dsn.username == db_access.role(name)
            assert dsn.password == postgres[f"SCOREBOARD_PG_{name.upper()}_PASSWORD"]
        else:  # the owner: migrations (and the gateway, which has no database at all)
            assert dsn.username == postgres["POSTGRES_USER"]
            assert dsn.password == postgres["POSTGRES_PASSWORD"]
        assert dsn.path == "/" + postgres["POSTGRES_DB"]
        redis_url = urlsplit(env["SCOREBOARD_REDIS_URL"])
        assert redis_url.hostname in services
        if name in redis_access.SERVICES:
            assert redis_url.username == name
        # Clients reconnect to the advertised address: it must be the one they bootstrap from.
        assert env["SCOREBOARD_KAFKA_BOOTSTRAP"] == advertised
    gateway = environment(services["gateway"])
    for setting, upstream in (
        ("SCOREBOARD_AUTH_URL", "auth"),
        ("SCOREBOARD_BROADCASTER_URL", "broadcaster"),
    ):
        url = urlsplit(gateway[setting])
        assert (url.hostname, url.port) == (upstream, APP_SERVICES[upstream])
    assert gateway["SCOREBOARD_ACTION_HMAC_KEYS"], "the gateway needs a ticket key"
    # The score service applies only commands signed with a key of its set: the gateway's.
    score = environment(services["score"])
    assert gateway["SCOREBOARD_COMMAND_KEYS"]
    assert gateway["SCOREBOARD_COMMAND_KEYS"] == score["SCOREBOARD_COMMAND_KEYS"]


def test_kafka_is_a_single_kraft_node_without_auto_created_topics(compose: Manifest) -> None:
    """KRaft combined mode, replication factors of one, topics only from scoreboard-topics."""
    env = environment(compose["services"]["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{node}@")
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env[key] == "1"
    # A KRaft cluster id is 16 bytes in URL-safe base64 (22 characters).
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    listeners = env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners


def test_data_survives_restarts_in_named_volumes(compose: Manifest) -> None:
    """PostgreSQL, Redis and Kafka keep their data in declared named volumes."""
    declared = set(compose["volumes"])
    expected_paths = {
        "postgres": "/var/lib/postgresql/data",
        "redis": "/data",
        "kafka": environment(compose["services"]["kafka"])["KAFKA_LOG_DIRS"],
    }
    for name, path in expected_paths.items():
        mounts = [str(v).split(":") for v in compose["services"][name]["volumes"]]
        assert [m for m in mounts if m[0] in declared and m[1] == path], (name, mounts)


def test_app_containers_are_locked_down(compose: Manifest) -> None:
    """Read-only root with a small /tmp, no capabilities, no privilege escalation."""
    for name in [*APP_SERVICES, "migrate"]:
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert any(str(t).startswith("/tmp") for t in service["tmpfs"]), name  # noqa: S108


def test_redis_declares_each_service_user_with_its_acl(compose: Manifest) -> None:
    """Redis' command line carries common.redis_access's rules for prefix sb: (and the admin
    password); every service connects as its own user with the password declared there."""
    redis = compose["services"]["redis"]
    args = [str(a) for a in redis["command"]]
    assert "--requirepass" in args
    declared = {}
    for i, arg in enumerate(args):
        if arg == "--user":
            rest = args[i + 1 :]
            end = next((j for j, a in enumerate(rest) if a.startswith("--")), len(rest))
            declared[rest[0]] = rest[1:end]
    assert set(declared) == set(redis_access.SERVICES)
    for service, rules in declared.items():
        password = rules[1][1:]
        assert rules == redis_access.acl_rules(service, "sb:", password)[1:]
        url = urlsplit(environment(compose["services"][service])["SCOREBOARD_REDIS_URL"])
        assert (url.username, url.password) == (service, password)


def test_postgres_creates_the_service_roles_once(compose: Manifest) -> None:
    """The init script that creates the roles is mounted where the image runs it on first start."""
    volumes = compose["services"]["postgres"]["volumes"]
    script = next(v for v in volumes if "postgres-roles.sh" in v)
    host, _, target = script.partition(":")
    assert (REPO / host).exists()
    assert target.startswith("/docker-entrypoint-initdb.d/")
