#!/usr/bin/env bash
# What `make test` needs besides the Python environment, installed if missing: Debian's PostgreSQL,
# Redis, a JRE and Maven (for Apache Kafka's jars), Chromium (the browser test), promtool (the
# alert-rule test), Prometheus (`make observe`, the alert-firing test), uv, kustomize (the k8s
# overlays) and the AsyncAPI parser (Node.js, the contract test). `make test` and `.ci/run` both run it,
# so a fresh machine skips no test. Safe to run again: it installs only what is missing.
# Debian packages need root (or sudo); everything else installs as the current user.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -E "$@"
  else echo "install-tools: '$*' needs root; run it as root or install the packages yourself" >&2; return 1
  fi
}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v make >/dev/null || need+=(make)
[ -x /usr/bin/chromium ] || need+=(chromium)   # the browser test drives Debian's Chromium
if [ "${#need[@]}" -gt 0 ]; then
  echo "install-tools: installing ${need[*]}"
  as_root apt-get update -q
  as_root apt-get install -y -q "${need[@]}"
fi

command -v uv >/dev/null || python3 -m pip install -q uv

# kustomize renders the k8s overlays in deploy/tests (Go module proxy; ~1 min to build, cached).
if ! command -v kustomize >/dev/null && [ ! -x "$HOME/go/bin/kustomize" ] && command -v go >/dev/null; then
  echo "install-tools: building kustomize"
  go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1 \
    || echo "install-tools: kustomize unavailable; deploy tests use their Python renderer" >&2
fi

# promtool checks the alert rules in deploy/tests: taken from Debian's prometheus package without
# installing the server (no daemon, no postinst).
if ! command -v promtool >/dev/null; then
  echo "install-tools: extracting promtool from Debian's prometheus package"
  tmp=$(mktemp -d)
  fetch() { (cd "$tmp" && apt-get download -q prometheus && dpkg -x prometheus_*.deb x); }
  fetch || { as_root apt-get update -q && fetch; }
  as_root install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

# The Prometheus server that `make observe` and tests/e2e/test_prometheus.py run: the same Debian
# package with its web UI's JavaScript packages, extracted into ~/.cache/scoreboard/prometheus.
python3 "$(dirname "$0")/observe.py" fetch

# The AsyncAPI reference parser validates docs/asyncapi.yaml in libs/common/tests/test_asyncapi.py:
# npm packages locked in scripts/asyncapi/, installed into a cache (not the work tree).
repo=$(cd "$(dirname "$0")/.." && pwd)
tools_dir=${SCOREBOARD_TOOLS_DIR:-$HOME/.cache/scoreboard}
asyncapi_dir="$tools_dir/asyncapi"
if ! cmp -s "$repo/scripts/asyncapi/package-lock.json" "$asyncapi_dir/package-lock.json" 2>/dev/null \
    || [ ! -d "$asyncapi_dir/node_modules/@asyncapi/parser" ]; then
  command -v npm >/dev/null || { as_root apt-get update -q && as_root apt-get install -y -q nodejs npm; }
  echo "install-tools: installing the AsyncAPI parser into $asyncapi_dir"
  mkdir -p "$asyncapi_dir"
  cp "$repo"/scripts/asyncapi/package{,-lock}.json "$asyncapi_dir/"
  (cd "$asyncapi_dir" && npm ci --no-audit --no-fund --silent)
fi
