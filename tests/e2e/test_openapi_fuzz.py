"""docs/openapi.yaml, property-tested: schemathesis generates requests for every operation and
checks each answer of the real system against the document.

The real gateway, auth, score and broadcaster (``edge_system``: address limits lifted, so what
is measured is the contract, not the rate limiter), real accounts registered and logged in
through the gateway, their tokens on every secured operation. For each operation hypothesis
generates valid requests (positive) and requests the document forbids (negative), with a fixed
seed so a run is reproducible. Every answer must be: not a 5xx, a documented status, the
documented content type, headers and body schema; a request the document forbids must be
refused with a 4xx; a method an operation lacks must get 405 with ``Allow``. A few real flows
(a ticket redeemed: 202, again: 409, with ``Prefer: wait``: 200) are checked the same way, so
the success schemas are exercised too. The counts per operation and status are printed (``-s``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case as AnyCase
from schemathesis import GenerationMode
from schemathesis.checks import (  # the check registry resolves these names
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.e2e.harness import System

Case = AnyCase[Any]

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
EXAMPLES_PER_MODE = 120  # per operation; operations without inputs stop after their few cases
# Each logout case logs in first (a session of its own, argon2 included): fewer of them.
EXAMPLES = {"/api/auth/logout": 20}
AT_LEAST = 2_000  # generated requests over the whole document
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    unsupported_method,
]
PASSWORD = "correct horse battery"


class Accounts:
    """Real users through the real auth service (via the gateway), and their tokens."""

    def __init__(self, http: requests.Session, gateway: str) -> None:
        self.http = http
        self.gateway = gateway
        self.username = f"fuzz_{uuid.uuid4().hex[:10]}"
        reply = http.post(
            f"{gateway}/api/auth/register",
            json={"username": self.username, "password": PASSWORD},
            timeout=15,
        )
        assert reply.status_code == 201, reply.text
        self.user_id = reply.json()["user_id"]
        self.token = self.login()

    def login(self) -> str:
        """A new login session's access token."""
        reply = self.http.post(
            f"{self.gateway}/api/auth/login",
            json={"username": self.username, "password": PASSWORD},
            timeout=15,
        )
        assert reply.status_code == 200, reply.text
        return str(reply.json()["access_token"])

    def headers_for(self, case: Case) -> dict[str, str]:
        """The bearer token a secured operation needs: logout gets a session of its own."""
        if not case.operation.definition.raw.get("security"):
            return {}
        token = self.login() if case.operation.path == "/api/auth/logout" else self.token
        return {"Authorization": f"Bearer {token}"}


class Run:
    """Sends cases, validates each answer, counts them."""

    def __init__(self, gateway: str, accounts: Accounts) -> None:
        self.gateway = gateway
        self.accounts = accounts
        self.http = accounts.http
        self.answers: dict[str, Counter[int]] = {}

    def __call__(self, case: Case, headers: dict[str, str] | None = None) -> Any:
        headers = {**self.accounts.headers_for(case), **(headers or {})}
        response = case.call(base_url=self.gateway, session=self.http, headers=headers, timeout=15)
        self.answers.setdefault(case.operation.label, Counter())[response.status_code] += 1
        case.validate_response(
            response,
            checks=CHECKS,
            headers=headers,
            transport_kwargs={"base_url": self.gateway, "session": self.http, "headers": headers},
        )
        return response

    @property
    def total(self) -> int:
        """Requests sent."""
        return sum(sum(c.values()) for c in self.answers.values())


@pytest.fixture(scope="module")
def schema() -> schemathesis.BaseSchema:
    """The document, as schemathesis reads it (it refuses an invalid OpenAPI document)."""
    return schemathesis.openapi.from_path(DOC)


@pytest.fixture(scope="module")
def run(edge_system: System) -> Iterator[Run]:
    """A client session with a real account."""
    with requests.Session() as http:
        yield Run(edge_system.gateway, Accounts(http, edge_system.gateway))


def _fuzz(strategy: Any, send: Callable[[Case], Any], examples: int) -> None:
    @settings(
        max_examples=examples,
        derandomize=True,  # the same requests every run: a failure reproduces
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def exercise(case: Case) -> None:
        send(case)

    exercise()


def test_real_flows_conform(schema: schemathesis.BaseSchema, run: Run) -> None:
    tickets = schema["/api/actions"]["POST"]
    update = schema["/api/scoreboard/update"]["POST"]
    for prefer in (None, "wait=5"):
        ticket = run(tickets.Case(body={"action_type": "daily_login" if prefer else "puzzle"}))
        assert ticket.status_code == 201, ticket.text
        if not prefer:
            time.sleep(1.05)  # puzzle's min_duration_ms
        body = {k: ticket.json()[k] for k in ("action_id", "action_type", "action_hash")}
        headers = {"Prefer": prefer} if prefer else {}
        first = run(update.Case(body=body, headers=headers))
        assert first.status_code == (200 if prefer else 202), first.text
        assert run(update.Case(body=body)).status_code == 409
    me = run(schema["/api/scoreboard/me"]["GET"].Case())
    assert me.status_code == 200, me.text
    standing_of = schema["/api/scoreboard/users/{user_id}"]["GET"]
    deadline = time.monotonic() + 10
    while True:  # both actions on the board (20 + 10 points)
        standing = run(standing_of.Case(path_parameters={"user_id": run.accounts.user_id}))
        if standing.status_code == 200 and standing.json()["score"] == 30:
            break
        assert time.monotonic() < deadline, standing.text
        time.sleep(0.1)


def test_generated_requests_conform(schema: schemathesis.BaseSchema, run: Run) -> None:
    started, before = time.monotonic(), run.total
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    unsatisfiable: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
                continue  # nothing the document could forbid
            examples = EXAMPLES.get(operation.path, EXAMPLES_PER_MODE)
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), run, examples)
            except Unsatisfiable:  # a free-form string path parameter has no invalid value
                unsatisfiable.append(f"{operation.label} {mode.value}")
    elapsed, generated = time.monotonic() - started, run.total - before
    print(f"\nschemathesis: {generated} generated requests in {elapsed:.1f} s")
    print(f"  (no invalid value to generate: {unsatisfiable})")
    for label, statuses in run.answers.items():
        print(f"  {label:<40} {dict(sorted(statuses.items()))}")
    overall = sum(run.answers.values(), Counter[int]())
    print(f"  {'all':<40} {dict(sorted(overall.items()))}")
    assert generated >= AT_LEAST
    assert not [s for s in overall if s >= 500]


def _has_inputs(operation: Any) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


@pytest.mark.parametrize(
    ("status", "body", "media"),
    [
        (202, {"status": "accepted", "action_id": str(uuid.uuid4())}, "application/json"),
        (202, {"status": "accepted", "action_id": "x", "points": 1}, "application/json"),
        (418, {"type": "about:blank", "title": "t", "status": 418, "detail": "d"}, None),
        (500, {"type": "about:blank", "title": "t", "status": 500, "detail": "d"}, None),
        (400, {"title": "no type, no detail"}, None),
        (
            429,
            {"type": "about:blank", "title": "t", "status": 429, "detail": "no Retry-After"},
            None,
        ),
        (400, {"type": "about:blank", "title": "t", "status": 400, "detail": "d"}, "text/html"),
    ],
)
def test_the_checks_are_not_a_rubber_stamp(
    schema: schemathesis.BaseSchema, status: int, body: dict[str, Any], media: str | None
) -> None:
    case = schema["/api/scoreboard/update"]["POST"].Case(
        body={"action_id": str(uuid.uuid4()), "action_type": "tap", "action_hash": "k.0"}
    )
    request = requests.Request(
        "POST", "http://127.0.0.1:8080/api/scoreboard/update", data=json.dumps(case.body)
    ).prepare()
    response = schemathesis.Response(
        status_code=status,
        headers={"content-type": [media or "application/problem+json"]},
        content=json.dumps(body).encode(),
        request=request,
        elapsed=0.01,
        verify=True,
    )
    with pytest.raises(BaseExceptionGroup):
        case.validate_response(response, checks=CHECKS)
