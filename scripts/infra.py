#!/usr/bin/env python3
"""Local infrastructure without Docker: real PostgreSQL 15, Redis and Apache Kafka (KRaft).

    python3 scripts/infra.py up [postgres|redis|kafka ...]   start (installing what is missing)
    python3 scripts/infra.py down                           stop what `up` started
    python3 scripts/infra.py status                         where each server listens
    python3 scripts/infra.py clean                          stop and wipe .local/ and the database

Idempotent: a server already answering is left alone. Standard library only, so it runs before
the Python environment exists. State lives under .local/ (ignored by git); the Kafka jars are
cached under ~/.cache/scoreboard so a second start needs no network.

Ports: SCOREBOARD_PG_PORT, SCOREBOARD_REDIS_PORT, SCOREBOARD_KAFKA_PORT (5432, 6379, 9094).
Kafka listens only with SASL/SCRAM-SHA-512 on 9094 (and its controller, SASL/PLAIN, on 9095),
one user per service (:data:`KAFKA_USERS`) and ACLs enforced; a broker formatted before SASL
(plaintext on 9092, state in .local/kafka) is left running if it runs and stopped by ``down``.
SCOREBOARD_LOCAL_DIR moves the state directory (relative to the repository root; default
.local). With it set, PostgreSQL too runs as a private cluster in <dir>/postgres instead of the
system's cluster, so a second, separate set of servers can run beside the usual one (on other
ports). :func:`launch_postgres`, :func:`launch_redis` and :func:`launch_kafka` start one server
with its state in a given directory, for programs that stop and restart their own servers.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRIVATE = bool(os.environ.get("SCOREBOARD_LOCAL_DIR"))  # a state directory of its own
LOCAL = (ROOT / os.environ.get("SCOREBOARD_LOCAL_DIR", ".local")).resolve()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scoreboard"

PG_PORT = int(os.environ.get("SCOREBOARD_PG_PORT", "5432"))
REDIS_PORT = int(os.environ.get("SCOREBOARD_REDIS_PORT", "6379"))
# 9094, not Kafka's usual 9092: a broker formatted before SASL may still hold 9092 on a machine
# where others' tests use it, and a client of the old plaintext port fails at once here instead
# of stalling in a SASL handshake (docs/operations.md#kafka-users-and-acls).
KAFKA_PORT = int(os.environ.get("SCOREBOARD_KAFKA_PORT", "9094"))
KAFKA_CONTROLLER_PORT = KAFKA_PORT + 1
KAFKA_VERSION = "3.9.1"
KAFKA_HEAP = os.environ.get("SCOREBOARD_KAFKA_HEAP", "384m")
DB_USER = DB_PASSWORD = DB_NAME = "scoreboard"  # noqa: S105 - local development only
# The services' PostgreSQL login roles, beside the owner (DB_USER, who alone runs migrations),
# with their development passwords (the services' default DSNs use the same).
DB_SERVICE_ROLES = {
    f"scoreboard_{service}": f"{service}-local-dev-password"
    for service in ("auth", "score", "broadcaster")
}
# The local broker's SCRAM-SHA-512 users and their development passwords (the services' settings
# default to the same; production takes them from Secrets). admin is the super user (topics,
# ACLs, tests); the others get only the ACLs of common.kafka_acls. controller authenticates
# the broker to its own controller (SASL/PLAIN: KRaft controllers cannot use SCRAM).
KAFKA_USERS = {
    name: f"{name}-local-dev-password"
    for name in ("admin", "gateway", "score", "broadcaster", "integrator")
}
KAFKA_CONTROLLER_USER = ("controller", "controller-local-dev-password")


def say(msg: str) -> None:
    print(f"[infra] {msg}", flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = subprocess.run(cmd, check=True, text=True, **kw)
    return result


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise SystemExit(f"[infra] {what} did not become ready within {timeout:.0f}s")


_apt_updated = False


def apt_install(*packages: str) -> None:
    global _apt_updated
    if os.geteuid() != 0:
        raise SystemExit(f"[infra] please install: {' '.join(packages)} (needs root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        say("apt-get update")
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        _apt_updated = True
    say(f"installing {' '.join(packages)}")
    run(["apt-get", "install", "-y", "-q", *packages], env=env, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------- PostgreSQL


def _as_postgres(cmd: list[str]) -> list[str]:
    """``cmd`` run as the postgres user when we are root (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _psql(sql: str, db: str = "postgres", port: int = PG_PORT, host: Path | None = None) -> str:
    where = ["-h", str(host)] if host is not None else []
    cmd = ["psql", *where, "-p", str(port), "-U", "postgres", "-d", db, "-tAc", sql]
    out = run(_as_postgres(cmd), capture_output=True, cwd="/")
    return out.stdout.strip()


def _create_role_and_database(port: int = PG_PORT, host: Path | None = None) -> None:
    if _psql(f"SELECT 1 FROM pg_roles WHERE rolname='{DB_USER}'", port=port, host=host) != "1":
        _psql(
            f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'", port=port, host=host
        )
    # The services' own roles (common.db_access grants them their rights after each migration).
    for role, password in DB_SERVICE_ROLES.items():
        if _psql(f"SELECT 1 FROM pg_roles WHERE rolname='{role}'", port=port, host=host) != "1":
            _psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", port=port, host=host)
    if _psql(f"SELECT 1 FROM pg_database WHERE datname='{DB_NAME}'", port=port, host=host) != "1":
        _psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}", port=port, host=host)


def postgres_bin() -> Path:
    """The directory of PostgreSQL's programs (initdb, pg_ctl), version 15 if installed."""
    if not Path("/usr/lib/postgresql").exists():
        apt_install("postgresql")
    versions = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir())
    return Path("/usr/lib/postgresql") / ("15" if "15" in versions else versions[-1]) / "bin"


def pg_ctl(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pg_ctl`` on the private cluster in ``state`` (see :func:`launch_postgres`)."""
    cmd = [str(postgres_bin() / "pg_ctl"), "-D", str(state / "data"), *args]
    return run(_as_postgres(cmd), cwd="/", stdout=subprocess.DEVNULL)


def launch_postgres(state: Path, port: int) -> None:
    """Create (once) and start a private PostgreSQL cluster with its data under ``state``,
    listening on 127.0.0.1:``port`` (its socket in ``state`` too), with the scoreboard role and
    database; return once it accepts connections. Stop it with ``pg_ctl(state, "stop", ...)``."""
    data = state / "data"
    state.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(state, "postgres", "postgres")
        _let_others_traverse(state)
    if not (data / "PG_VERSION").exists():
        cmd = [str(postgres_bin() / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
        run(_as_postgres([*cmd, "-E", "UTF8", "--no-sync"]), cwd="/", stdout=subprocess.DEVNULL)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{state}'\nmax_connections = 200\n"
            )
    pg_ctl(state, "start", "-w", "-t", "120", "-l", str(state / "postgres.log"))
    _create_role_and_database(port, state)


def _let_others_traverse(path: Path) -> None:
    """The postgres user must pass through every directory above its data: add the search bit
    (o+x, no listing) where one lacks it, as a checkout under a 0700 ``mktemp -d`` does."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def postgres_up() -> None:
    if PRIVATE:
        state = LOCAL / "postgres"
        if not port_open(PG_PORT):
            say(f"starting a private PostgreSQL cluster in {state}")
            launch_postgres(state, PG_PORT)
        say(f"PostgreSQL ready: postgresql://{DB_USER}:***@127.0.0.1:{PG_PORT}/{DB_NAME}")
        return
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").exists():
        apt_install("postgresql")
    if not port_open(PG_PORT):
        versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
        version = "15" if "15" in versions else versions[-1]
        say(f"starting PostgreSQL {version}")
        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"])
        wait_for("PostgreSQL", lambda: port_open(PG_PORT), 60)
    _create_role_and_database()
    say(f"PostgreSQL ready: postgresql://{DB_USER}:***@127.0.0.1:{PG_PORT}/{DB_NAME}")


def postgres_down() -> None:
    if PRIVATE:
        if (LOCAL / "postgres" / "data" / "postmaster.pid").exists():
            pg_ctl(LOCAL / "postgres", "stop", "-m", "fast", "-w")
            say("PostgreSQL stopped")
        return
    if port_open(PG_PORT) and shutil.which("pg_ctlcluster"):
        for version in sorted(p.name for p in Path("/etc/postgresql").iterdir()):
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop"],
                check=False,
            )
        say("PostgreSQL stopped")


def postgres_clean() -> None:
    if PRIVATE:  # its data directory goes with the state directory
        return
    if port_open(PG_PORT):
        _psql(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        for name in _psql("SELECT datname FROM pg_database WHERE datname LIKE 'sbtest_%'").split():
            _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        say("database dropped")


# --------------------------------------------------------------------------- Redis


def redis_up() -> None:
    if port_open(REDIS_PORT):
        say(f"Redis ready: redis://127.0.0.1:{REDIS_PORT}/0 (already running)")
        return
    say("starting Redis")
    launch_redis(LOCAL / "redis", REDIS_PORT)
    say(f"Redis ready: redis://127.0.0.1:{REDIS_PORT}/0")


def launch_redis(state: Path, port: int, extra: tuple[str, ...] = ()) -> int:
    """Start a daemonised Redis with its data (append-only file) and ACL users under ``state``
    (``extra``: more command-line options); return its pid (also in ``state``/redis.pid) once it
    accepts connections."""
    if not shutil.which("redis-server"):
        apt_install("redis-server")
    state.mkdir(parents=True, exist_ok=True)
    pidfile = state / "redis.pid"
    pidfile.unlink(missing_ok=True)
    # The ACL users (common.redis_access) live in this file, saved by ACL SAVE: a restart keeps
    # them, as it keeps the data. Redis refuses to start without the file.
    aclfile = state / "users.acl"
    aclfile.touch()
    run(
        [
            "redis-server",
            "--aclfile", str(aclfile),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(state),
            "--daemonize", "yes",
            "--pidfile", str(state / "redis.pid"),
            "--logfile", str(state / "redis.log"),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxclients", "20000",
            *extra,
        ]
    )  # fmt: skip
    # Redis creates the pidfile before it writes the pid: wait for the number, not the file.
    wait_for("Redis", lambda: port_open(port) and _pid_in(pidfile) is not None, 30)
    pid = _pid_in(pidfile)
    assert pid is not None
    return pid


def _pid_in(pidfile: Path) -> int | None:
    """The pid a pidfile holds, or None while it is missing or not yet written."""
    try:
        return int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def launch_redis_cluster(state: Path, ports: list[int], bus_ports: list[int]) -> list[int]:
    """Start a Redis Cluster of ``len(ports)`` masters (at least three, no replicas), each a
    daemonised ``redis-server --cluster-enabled yes`` with its data under ``state``/<port> and
    its cluster bus on the matching ``bus_ports`` entry; return their pids once the cluster
    serves every slot (``cluster_state:ok`` on each node). The caller stops them (SIGTERM)."""
    if not shutil.which("redis-cli"):
        apt_install("redis-tools")
    pids: list[int] = []
    try:
        for port, bus_port in zip(ports, bus_ports, strict=True):
            node = state / str(port)
            extra = (
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node / "nodes.conf"),
                "--cluster-port", str(bus_port),
            )  # fmt: skip
            pids.append(launch_redis(node, port, extra))
        # Slots split evenly in port order (redis-cli's allocation: 0-5460, 5461-10922, ...).
        nodes = [f"127.0.0.1:{port}" for port in ports]
        create = ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0"]
        run([*create, "--cluster-yes"], stdout=subprocess.DEVNULL)

        def serving() -> bool:
            for port in ports:
                info = run(["redis-cli", "-p", str(port), "cluster", "info"], capture_output=True)
                if "cluster_state:ok" not in info.stdout:
                    return False
            return True

        wait_for("Redis Cluster", serving, 30)
    except BaseException:
        for port in ports[: len(pids)]:
            _kill(state / str(port) / "redis.pid", f"Redis {port}")
        raise
    return pids


def redis_down() -> None:
    pidfile = LOCAL / "redis" / "redis.pid"
    if pidfile.exists():
        _kill(pidfile, "Redis")


# --------------------------------------------------------------------------- Kafka

KAFKA_POM = ROOT / "deploy" / "local" / "kafka" / "pom.xml"
KAFKA_LOG4J = ROOT / "deploy" / "local" / "kafka" / "log4j.properties"


def kafka_jars() -> Path:
    jars = CACHE / f"kafka-{KAFKA_VERSION}-jars"
    marker = jars / ".complete"
    if marker.exists():
        return jars
    if not shutil.which("java"):
        apt_install("openjdk-17-jre-headless")
    if not shutil.which("mvn"):
        apt_install("maven")
    say(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central into {jars}")
    jars.mkdir(parents=True, exist_ok=True)
    run(
        [
            "mvn", "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={jars}",
        ]
    )  # fmt: skip
    marker.touch()
    return jars


def _kafka_sasl_ready(port: int) -> bool:
    """Send a SaslHandshake v1 for SCRAM-SHA-512: a broker answers it (error 0) only once it
    serves requests, on a listener that offers SCRAM; no credentials needed to ask."""
    client, mechanism = b"scoreboard-infra", b"SCRAM-SHA-512"
    body = struct.pack(">hhih", 17, 1, 7, len(client)) + client
    body += struct.pack(">h", len(mechanism)) + mechanism
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv(s, 4))[0]
            data = _recv(s, size)
    except OSError:
        return False
    correlation, error = struct.unpack(">ih", data[:6])
    return bool(correlation == 7 and error == 0)


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def _kafka_properties(data: Path, port: int, controller_port: int) -> str:
    """A single-node KRaft broker that takes only authenticated clients (SASL/SCRAM-SHA-512)
    and enforces ACLs; admin and the controller's own user are the super users."""
    admin = KAFKA_USERS["admin"]
    ctl_user, ctl_password = KAFKA_CONTROLLER_USER
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=SASL_PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            f'{scram} required username="admin" password="{admin}";',
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.plain.sasl.jaas.config="
            f'{plain} required username="{ctl_user}" password="{ctl_password}" '
            f'user_{ctl_user}="{ctl_password}";',
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            f"super.users=User:admin;User:{ctl_user}",
            "allow.everyone.if.no.acl.found=false",
            f"log.dirs={data}",
            "num.partitions=12",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=12",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.cleaner.dedupe.buffer.size=2097152",
            "",
        ]
    )


def launch_kafka(
    state: Path, port: int, controller_port: int, heap: str = KAFKA_HEAP
) -> subprocess.Popen[bytes]:
    """Format (once) and start a single-node KRaft broker with its data under ``state``;
    return once it serves metadata. Tests use this for a private broker they may stop."""
    jars = kafka_jars()
    data = state / "data"
    state.mkdir(parents=True, exist_ok=True)
    props = state / "server.properties"
    props.write_text(_kafka_properties(data, port, controller_port))
    java = ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{KAFKA_LOG4J}", "-cp", f"{jars}/*"]  # fmt: skip
    users_marker = data / "scoreboard-scram-users"
    if (data / "meta.properties").exists() and not users_marker.exists():
        # Formatted before SASL: no SCRAM credentials in its metadata and nobody who could add
        # them (the plaintext listener is gone). Its topics are recreated by scoreboard-topics;
        # what it held was transient (PostgreSQL is the truth).
        say(f"{data} was formatted without SCRAM users: formatting it again (its data is lost)")
        shutil.rmtree(data)
    if not (data / "meta.properties").exists():
        cluster_file = state / "cluster.id"
        cluster_id = (
            cluster_file.read_text().strip() if cluster_file.exists() else str(uuid.uuid4())
        )
        cluster_file.write_text(cluster_id)
        kraft_id = base64.urlsafe_b64encode(uuid.UUID(cluster_id).bytes).decode().rstrip("=")
        scram = [
            arg
            for name, password in KAFKA_USERS.items()
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        # --cluster-id=: a base64 id may begin with "-", which would read as an option.
        fmt = ["kafka.tools.StorageTool", "format", f"--cluster-id={kraft_id}", "-c", str(props)]
        run([*java, *fmt, "--ignore-formatted", *scram], stdout=subprocess.DEVNULL)
        users_marker.write_text("\n".join(KAFKA_USERS) + "\n")
    log = open(state / "kafka.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [*java, "kafka.Kafka", str(props)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 120
    while not _kafka_sasl_ready(port):
        if proc.poll() is not None:
            tail = (state / "kafka.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"[infra] Kafka exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("[infra] Kafka did not become ready within 120s")
        time.sleep(0.3)
    return proc


KAFKA_STATE = LOCAL / "kafka-sasl"
# Where the broker of the plaintext days kept its state (its pid file lets `down` stop it).
KAFKA_LEGACY_STATE = LOCAL / "kafka"


def kafka_up() -> None:
    if _kafka_sasl_ready(KAFKA_PORT):
        say(f"Kafka ready: SASL_PLAINTEXT 127.0.0.1:{KAFKA_PORT} (already running)")
        return
    state = KAFKA_STATE
    say(f"starting Kafka {KAFKA_VERSION} (KRaft, SASL/SCRAM, ACLs, heap {KAFKA_HEAP})")
    proc = launch_kafka(state, KAFKA_PORT, KAFKA_CONTROLLER_PORT)
    (state / "kafka.pid").write_text(str(proc.pid))
    say(f"Kafka ready: SASL_PLAINTEXT 127.0.0.1:{KAFKA_PORT} (log {state / 'kafka.log'})")
    if (KAFKA_LEGACY_STATE / "kafka.pid").exists():
        say(f"a broker from before SASL may still run from {KAFKA_LEGACY_STATE}: `down` stops it")


def kafka_down() -> None:
    for state in (KAFKA_STATE, KAFKA_LEGACY_STATE):
        pidfile = state / "kafka.pid"
        if pidfile.exists():
            _kill(pidfile, "Kafka", timeout=30)


def _kill(pidfile: Path, name: str, timeout: float = 15) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 15)
    except (ValueError, ProcessLookupError, FileNotFoundError):
        pidfile.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
    pidfile.unlink(missing_ok=True)
    say(f"{name} stopped")


SERVERS = {
    "postgres": (postgres_up, postgres_down),
    "redis": (redis_up, redis_down),
    "kafka": (kafka_up, kafka_down),
}


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    command, names = argv[0], argv[1:] or list(SERVERS)
    unknown = set(names) - set(SERVERS)
    if unknown:
        raise SystemExit(f"[infra] unknown server(s): {', '.join(sorted(unknown))}")
    if command == "up":
        for name in names:
            SERVERS[name][0]()
    elif command == "down":
        for name in reversed(names):
            SERVERS[name][1]()
    elif command == "status":
        say(f"PostgreSQL 127.0.0.1:{PG_PORT}: {'up' if port_open(PG_PORT) else 'down'}")
        say(f"Redis      127.0.0.1:{REDIS_PORT}: {'up' if port_open(REDIS_PORT) else 'down'}")
        up = _kafka_sasl_ready(KAFKA_PORT)
        say(f"Kafka      127.0.0.1:{KAFKA_PORT}: {'up (SASL/SCRAM)' if up else 'down'}")
    elif command == "clean":
        postgres_clean()
        for name in reversed(names):
            SERVERS[name][1]()
        shutil.rmtree(LOCAL, ignore_errors=True)
        say(f"removed {LOCAL}")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
