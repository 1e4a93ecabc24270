"""The Grafana dashboard of the whole system, built with grafana-foundation-sdk.

``uv run python deploy/grafana/dashboard.py`` writes ``deploy/grafana/scoreboard.json`` (import it
in Grafana, or mount it with a dashboard provider); deploy/tests/test_dashboard.py fails when the
committed JSON drifts from this code, when an expression does not parse (promtool) or names a
metric the services do not export. One row per question an operator asks: is the ingest
flowing, are commands applied, does fan-out keep up, what fails, how far behind is each stage,
and what is saturated. The ``job`` label is the service (the scrape setup of
docs/operations.md, "Metrics and scraping").
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import (
    Dashboard as DashboardBuilder,
)
from grafana_foundation_sdk.builders.dashboard import (
    DatasourceVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).with_name("scoreboard.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


@dataclass(frozen=True)
class Graph:
    """One time series panel: a title, its unit and its queries (expression, legend)."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    description: str = ""


def _q(expr: str, legend: str) -> tuple[str, str]:
    return (" ".join(expr.split()), legend)


RATE = "[$__rate_interval]"

ROWS: dict[str, tuple[Graph, ...]] = {
    "Ingest (gateway)": (
        Graph(
            "Requests by route",
            "reqps",
            (
                _q(
                    f'sum by (route) (rate(scoreboard_http_requests_total{{job="gateway"}}{RATE}))',
                    "{{route}}",
                ),
            ),
        ),
        Graph(
            "Commands accepted by action type",
            "ops",
            (
                _q(
                    "sum by (action_type) "
                    f"(rate(scoreboard_gateway_commands_accepted_total{RATE}))",
                    "{{action_type}}",
                ),
            ),
        ),
        Graph(
            "Refusals by reason",
            "ops",
            (
                _q(
                    f"sum by (reason) (rate(scoreboard_gateway_rejections_total{RATE}))",
                    "{{reason}}",
                ),
            ),
            "4xx the admission checks answer: 401 token, 409 done, 429 limits, 400 ticket.",
        ),
        Graph(
            "Kafka publish latency",
            "s",
            (
                _q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(scoreboard_gateway_publish_duration_seconds_bucket{RATE})))",
                    "p99",
                ),
                _q(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(scoreboard_gateway_publish_duration_seconds_bucket{RATE})))",
                    "p50",
                ),
            ),
        ),
    ),
    "Apply (score)": (
        Graph(
            "Commands applied, duplicates, dead-lettered",
            "ops",
            (
                _q(f"sum(rate(scoreboard_score_commands_applied_total{RATE}))", "applied"),
                _q(f"sum(rate(scoreboard_score_commands_duplicate_total{RATE}))", "duplicate"),
                _q(
                    f"sum by (reason) (rate(scoreboard_score_commands_dead_lettered_total{RATE}))",
                    "dead-lettered: {{reason}}",
                ),
            ),
        ),
        Graph(
            "Batch apply duration",
            "s",
            (
                _q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(scoreboard_score_apply_duration_seconds_bucket{RATE})))",
                    "p99",
                ),
            ),
        ),
        Graph(
            "ScoreChanged published, outbox backlog",
            "short",
            (
                _q(f"sum(rate(scoreboard_score_relay_published_total{RATE}))", "published/s"),
                _q("max(scoreboard_score_outbox_backlog)", "unsent rows"),
                _q("sum(scoreboard_score_relay_leader)", "relay leaders (want 1)"),
            ),
        ),
    ),
    "Fan-out (broadcaster)": (
        Graph(
            "Board events applied and ignored",
            "ops",
            (
                _q(
                    f"sum(rate(scoreboard_broadcaster_board_events_applied_total{RATE}))", "applied"
                ),
                _q(f"sum(rate(scoreboard_broadcaster_board_events_stale_total{RATE}))", "stale"),
                _q(
                    f"sum(rate(scoreboard_broadcaster_board_events_invalid_total{RATE}))",
                    "invalid",
                ),
            ),
        ),
        Graph(
            "WebSocket clients and frames",
            "short",
            (
                _q("sum(scoreboard_broadcaster_ws_clients)", "clients"),
                _q(
                    f"sum by (type) (rate(scoreboard_broadcaster_ws_frames_sent_total{RATE}))",
                    "frames/s: {{type}}",
                ),
                _q(
                    f"sum(rate(scoreboard_broadcaster_ws_slow_closes_total{RATE}))", "slow closes/s"
                ),
            ),
        ),
        Graph(
            "Ticker round",
            "s",
            (
                _q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(scoreboard_broadcaster_ws_tick_seconds_bucket{RATE})))",
                    "p99",
                ),
            ),
            "A round past 100 ms means the 10 Hz top frames slip.",
        ),
    ),
    "Errors": (
        Graph(
            "5xx by service",
            "reqps",
            (
                _q(
                    f'sum by (job) (rate(scoreboard_http_requests_total{{status=~"5.."}}{RATE}))',
                    "{{job}}",
                ),
            ),
        ),
        Graph(
            "Failures by stage",
            "ops",
            (
                _q(
                    f"sum by (reason) (rate(scoreboard_gateway_publish_failures_total{RATE}))",
                    "gateway publish: {{reason}}",
                ),
                _q(
                    f"sum by (stage) (rate(scoreboard_score_failures_total{RATE}))",
                    "score: {{stage}}",
                ),
                _q(
                    f"sum by (reason) (rate(scoreboard_broadcaster_fallbacks_total{RATE}))",
                    "broadcaster fallback: {{reason}}",
                ),
                _q(
                    f"sum by (upstream) (rate(scoreboard_gateway_upstream_errors_total{RATE}))",
                    "gateway upstream: {{upstream}}",
                ),
            ),
        ),
        Graph(
            "Scrape targets up",
            "short",
            (_q('sum by (job) (up{job=~"gateway|auth|score|broadcaster"})', "{{job}}"),),
        ),
    ),
    "Lag": (
        Graph(
            "Score consumer lag (records)",
            "short",
            (_q("sum by (topic) (scoreboard_score_consumer_lag)", "{{topic}}"),),
        ),
        Graph(
            "Command age at apply, event age at the board",
            "s",
            (
                _q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(scoreboard_score_command_age_seconds_bucket{RATE})))",
                    "command p99 (accepted → applied)",
                ),
                _q(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(scoreboard_broadcaster_board_event_lag_seconds_bucket{RATE})))",
                    "ScoreChanged p99 (applied → on the board)",
                ),
            ),
        ),
    ),
    "Saturation": (
        Graph(
            "CPU per replica",
            "percentunit",
            (_q(f"rate(process_cpu_seconds_total{RATE})", "{{job}} {{instance}}"),),
            "One core = 100%. A Python process uses at most one core.",
        ),
        Graph(
            "Resident memory",
            "bytes",
            (_q("process_resident_memory_bytes", "{{job}} {{instance}}"),),
        ),
        Graph(
            "Open file descriptors (share of the limit)",
            "percentunit",
            (_q("process_open_fds / process_max_fds", "{{job}} {{instance}}"),),
        ),
        Graph(
            "GC collections",
            "ops",
            (
                _q(
                    f"sum by (job, generation) (rate(python_gc_collections_total{RATE}))",
                    "{{job}} gen {{generation}}",
                ),
            ),
        ),
    ),
}


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard (what the tests parse and check)."""
    return [expr for graphs in ROWS.values() for g in graphs for expr, _ in g.queries]


def build() -> DashboardBuilder:
    """The dashboard: a row per question, two panels a line."""
    dashboard = (
        DashboardBuilder("Scoreboard")
        .uid("scoreboard-overview")
        .tags(["scoreboard", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    for title, graphs in ROWS.items():
        dashboard = dashboard.with_row(Row(title))
        for graph in graphs:
            panel = (
                Timeseries()
                .title(graph.title)
                .unit(graph.unit)
                .datasource(DATASOURCE)
                .height(8)
                .span(12)
            )
            if graph.description:
                panel = panel.description(graph.description)
            for ref, (expr, legend) in zip("ABCDEFGH", graph.queries, strict=False):
                panel = panel.with_target(
                    Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
                )
            dashboard = dashboard.with_panel(panel)
    return dashboard


def render() -> str:
    """The dashboard as Grafana's JSON model."""
    doc = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(build().build()))
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write the JSON next to this file (or to the path given)."""
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
