"""docker/compose.yaml ships secure defaults (no Docker here to start it, so
its content is what is checked): gRPC ports published on loopback only,
PostgreSQL and Redis behind passwords on an internal network, and the
mtserve processes reading their credentials from a settings file mounted as
a secret, whose example parses into settings with credentials in the URLs."""

from __future__ import annotations

from pathlib import Path

import yaml

from mtserve.config import load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


def test_grpc_ports_are_published_on_loopback_only():
    services = compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"registry", "inference", "trainer"}
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports)


def test_postgres_and_redis_need_passwords_and_are_not_published():
    services = compose()["services"]
    pg, redis = services["postgres"], services["redis"]
    assert "POSTGRES_HOST_AUTH_METHOD" not in pg["environment"]
    assert pg["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
    assert "--requirepass" in " ".join(redis["command"]) and "redis_password" in redis["secrets"]
    assert "ports" not in pg and "ports" not in redis


def test_mtserve_processes_read_credentials_from_a_secret_settings_file():
    doc = compose()
    for name in ("registry", "inference", "trainer", "worker"):
        service = doc["services"][name]
        assert service["environment"]["MTSERVE_CONFIG"] == "/run/secrets/mtserve_settings"
        assert "mtserve_settings" in service["secrets"]
        assert not any("@" in str(v) for v in service["environment"].values())  # no credentials in plain environment
    settings = load_settings(DOCKER / "mtserve-secrets.example.yaml", env={})
    assert settings.registry_database_url.startswith("postgresql+psycopg://mtserve:PG_PASSWORD@postgres/")
    assert settings.batch.broker_url == "redis://:REDIS_PASSWORD@redis:6379/0"
