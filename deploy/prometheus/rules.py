"""The alert rules' runbook links and their Prometheus Operator wrapping, from one source.

``deploy/prometheus/alerts.yml`` is the source of the rules (plain Prometheus loads it with
``rule_files:``). Alertmanager, PagerDuty and Slack show ``runbook_url`` out of context, so
every link is absolute, built from one base: the public address of docs/operations.md.
Set it for your fork and regenerate:

    uv run python deploy/prometheus/rules.py --runbook-base https://git.example.com/ops.md

(or ``SCOREBOARD_RUNBOOK_BASE=...``). That rewrites every ``runbook_url`` in alerts.yml to
``<base>#<anchor>`` and writes the same groups as the PrometheusRule of the kustomize component
``deploy/k8s/components/monitoring``. deploy/tests/test_alerts.py fails when the two drift
apart, when links do not share one absolute base, or when an anchor is missing from the runbook.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ALERTS = Path(__file__).with_name("alerts.yml")
MONITORING = Path(__file__).resolve().parents[1] / "k8s" / "components" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DEFAULT_RUNBOOK_BASE = "https://github.com/example/scoreboard/blob/main/docs/operations.md"
_RUNBOOK_LINE = re.compile(r"^(?P<lead>[ \t]*runbook_url:[ \t]*)(?P<url>\S+)[ \t]*$", re.MULTILINE)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the PromQL expressions) as literal blocks, as alerts.yml does."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def runbook_urls(text: str) -> list[str]:
    """Every runbook_url in an alerts file, in order."""
    return [m.group("url") for m in _RUNBOOK_LINE.finditer(text)]


def current_base(text: str) -> str:
    """The one base every runbook link of ``text`` shares (ValueError if they differ)."""
    bases = {url.partition("#")[0] for url in runbook_urls(text)}
    if len(bases) != 1:
        raise ValueError(f"runbook links do not share one base: {sorted(bases)}")
    return bases.pop()


def with_runbook_base(text: str, base: str) -> str:
    """``text`` with each runbook_url's part before ``#`` replaced by ``base`` (comments kept)."""

    def swap(match: re.Match[str]) -> str:
        anchor = match.group("url").partition("#")[2]
        return f"{match.group('lead')}{base}#{anchor}"

    return _RUNBOOK_LINE.sub(swap, text)


def prometheus_rule(alerts_text: str) -> str:
    """The PrometheusRule manifest carrying exactly the groups of ``alerts_text``."""
    groups: list[Any] = yaml.safe_load(alerts_text)["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "scoreboard",
            "labels": {"app.kubernetes.io/part-of": "scoreboard"},
        },
        "spec": {"groups": groups},
    }
    header = "# GENERATED from deploy/prometheus/alerts.yml by deploy/prometheus/rules.py.\n"
    return header + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    """Rewrite alerts.yml's runbook links to the base, then write the PrometheusRule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runbook-base",
        default=os.environ.get("SCOREBOARD_RUNBOOK_BASE"),
        help="absolute URL of docs/operations.md (default: keep the one in alerts.yml, "
        f"initially {DEFAULT_RUNBOOK_BASE})",
    )
    args = parser.parse_args(argv)
    text = ALERTS.read_text()
    base = args.runbook_base or current_base(text)
    if not re.match(r"^https?://", base):
        parser.error(f"the runbook base must be an absolute http(s) URL, not {base!r}")
    text = with_runbook_base(text, base.split("#")[0])
    ALERTS.write_text(text)
    PROMETHEUS_RULE.parent.mkdir(parents=True, exist_ok=True)
    PROMETHEUS_RULE.write_text(prometheus_rule(text))
    print(f"runbook base {base}: wrote {ALERTS.name} and {PROMETHEUS_RULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
