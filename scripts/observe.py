#!/usr/bin/env python3
"""A real Prometheus next to `make up`, scraping the local services with the alert rules loaded.

    python3 scripts/observe.py start    fetch Prometheus once, start it: http://127.0.0.1:9090/
    python3 scripts/observe.py stop
    python3 scripts/observe.py status
    python3 scripts/observe.py fetch    only download and extract (scripts/install-tools.sh)

The server is Debian's ``prometheus`` package (the same build promtool comes from), extracted
with its web UI's JavaScript packages into ~/.cache/scoreboard/prometheus without installing
the daemon (no service user, no systemd unit, nothing under /etc). It scrapes each service's
admin port (``SCOREBOARD_ADMIN_PORT``, 9080-9083 by default) every 5 s as job = the service's
name, which is what deploy/prometheus/alerts.yml expects, and evaluates those rules every 5 s.
Data, config and log live under .local/prometheus/. ``SCOREBOARD_PROMETHEUS_PORT`` moves the
UI off 9090. tests/e2e/test_prometheus.py runs the same server against a private system.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
STATE = ROOT / ".local" / "prometheus"
CACHE = Path(os.environ.get("SCOREBOARD_TOOLS_DIR", Path.home() / ".cache" / "scoreboard"))
PROMETHEUS_ROOT = CACHE / "prometheus"
# The server and what its web UI's static files link to (the package's Depends).
PACKAGES = (
    "prometheus",
    "fonts-glyphicons-halflings",
    "libjs-bootstrap4",
    "libjs-bootstrap",
    "libjs-d3",
    "libjs-eonasdan-bootstrap-datetimepicker",
    "libjs-jquery",
    "libjs-jquery-hotkeys",
    "libjs-moment",
    "libjs-moment-timezone",
    "libjs-mustache",
    "libjs-popper.js",
    "libjs-rickshaw",
)
# The local services' admin ports (the services' defaults, as in deploy/k8s).
ADMIN_PORTS = {"gateway": 9080, "auth": 9081, "score": 9082, "broadcaster": 9083}


def say(msg: str) -> None:
    print(f"[observe] {msg}", flush=True)


def prometheus_binary() -> Path:
    """The extracted server, downloading and unpacking the packages the first time."""
    binary = PROMETHEUS_ROOT / "usr" / "bin" / "prometheus"
    if binary.is_file():
        return binary
    say(f"extracting Debian's prometheus package into {PROMETHEUS_ROOT}")
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", *PACKAGES]
        if subprocess.run(download, cwd=tmp, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(download, cwd=tmp, check=True)
        staging = Path(tmp) / "root"
        for deb in sorted(Path(tmp).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        PROMETHEUS_ROOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(PROMETHEUS_ROOT, ignore_errors=True)
        shutil.move(str(staging), PROMETHEUS_ROOT)
    return binary


def config(targets: dict[str, str], rules: Path, interval: str = "5s") -> str:
    """prometheus.yml: one job per service (job = its name, honor_labels), the rules loaded."""
    jobs = "".join(
        f"  - job_name: {job}\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
        for job, target in targets.items()
    )
    return (
        "# Written by scripts/observe.py.\n"
        f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
        f"rule_files: ['{rules}']\n"
        f"scrape_configs:\n{jobs}"
    )


def launch(directory: Path, port: int, conf: str) -> subprocess.Popen[bytes]:
    """Start a Prometheus with ``conf``, its data and log in ``directory``; wait until ready."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "prometheus.yml").write_text(conf)
    web = PROMETHEUS_ROOT / "usr" / "share" / "prometheus" / "web"
    command = [
        str(prometheus_binary()),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.local-assets={web}/",
        f"--web.console.templates={PROMETHEUS_ROOT / 'etc' / 'prometheus' / 'consoles'}",
        f"--web.console.libraries={PROMETHEUS_ROOT / 'etc' / 'prometheus' / 'console_libraries'}",
        "--storage.tsdb.retention.time=2d",
    ]
    with open(directory / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (directory / "prometheus.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"prometheus not ready on :{port} after 30 s")


def _port() -> int:
    return int(os.environ.get("SCOREBOARD_PROMETHEUS_PORT", "9090"))


def _pid() -> int | None:
    try:
        pid = int((STATE / "prometheus.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def start() -> None:
    """Start the local Prometheus (idempotent)."""
    port = _port()
    if _pid():
        say(f"already running: http://127.0.0.1:{port}/")
        return
    targets = {
        job: f"127.0.0.1:{os.environ.get(f'SCOREBOARD_{job.upper()}_ADMIN_PORT', default)}"
        for job, default in ADMIN_PORTS.items()
    }
    proc = launch(STATE, port, config(targets, ALERTS))
    (STATE / "prometheus.pid").write_text(str(proc.pid))
    say(f"Prometheus is up: http://127.0.0.1:{port}/classic/alerts")
    say(f"config {STATE / 'prometheus.yml'}, log {STATE / 'prometheus.log'}")


def stop() -> None:
    """SIGTERM the local Prometheus and wait for it."""
    pid = _pid()
    if pid is None:
        say("not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _pid():
        time.sleep(0.2)
    (STATE / "prometheus.pid").unlink(missing_ok=True)
    say("stopped")


def main() -> None:
    """Dispatch start, stop or status."""
    action = sys.argv[1] if len(sys.argv) > 1 else "status"
    if action == "start":
        start()
    elif action == "stop":
        stop()
    elif action == "fetch":
        say(f"Prometheus at {prometheus_binary()}")
    elif action == "status":
        pid = _pid()
        say(f"running (pid {pid}): http://127.0.0.1:{_port()}/" if pid else "not running")
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
