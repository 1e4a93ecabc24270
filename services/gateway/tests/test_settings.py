"""Settings from SCOREBOARD_* variables: keys, proxies and the catalog, with their checks."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from gateway.settings import Settings


def test_environment_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SCOREBOARD_ACTION_HMAC_KEYS", "k2:new-secret-0123456789, k1:old-secret-0123456789"
    )
    monkeypatch.setenv("SCOREBOARD_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
    monkeypatch.setenv(
        "SCOREBOARD_ACTION_CATALOG", '{"jump": {"points": 3, "min_duration_ms": 250}}'
    )
    settings = Settings.load()
    assert [k.key_id for k in settings.action_hmac_keys] == ["k2", "k1"]
    assert "new-secret" not in repr(settings)  # secrets stay out of logs
    assert settings.trusted_proxies == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    ]
    assert settings.action_catalog["jump"].points == 3
    assert not settings.uses_dev_hmac_key


def test_json_list_of_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREBOARD_ACTION_HMAC_KEYS", '["k1:old-secret-0123456789"]')
    assert Settings.load().action_hmac_keys[0].key_id == "k1"


def test_defaults_work_locally_and_say_they_are_for_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ACTION_HMAC_KEYS", "ACTION_CATALOG", "PORT"):
        monkeypatch.delenv(f"SCOREBOARD_{name}", raising=False)
    settings = Settings.load()
    assert settings.uses_dev_hmac_key
    assert set(settings.action_catalog) == {"quest", "puzzle", "daily_login", "tap"}
    assert settings.port == 8080


@pytest.mark.parametrize(
    "overrides",
    [
        {"action_hmac_keys": "k1:short"},
        {"action_hmac_keys": "no-colon-0123456789abcdef"},
        {"action_hmac_keys": "bad.id:secret-0123456789abcdef"},
        {"action_hmac_keys": "k1:secret-0123456789abc,k1:secret-0123456789xyz"},
        {"action_hmac_keys": ""},
        {"action_catalog": {"Bad-Name": {"points": 1}}},
        {"action_catalog": {"tap": {"points": 0}}},
        {"action_catalog": {}},
        {"trusted_proxies": "not-an-ip"},
        {"claim_stale_after_s": 5, "publish_timeout_s": 5},
    ],
)
def test_invalid_settings_are_refused_at_start(overrides: dict[str, object]) -> None:
    with pytest.raises((ValidationError, ValueError)):
        Settings.load(**overrides)
