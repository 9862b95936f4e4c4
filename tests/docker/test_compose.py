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
    assert set(published) == {"registry", "inference", "trainer", "grafana"}
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


def test_prometheus_scrapes_every_service_over_tls_with_a_token():
    doc = compose()
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    job = config["scrape_configs"][0]
    assert job["scheme"] == "https" and job["authorization"]["credentials_file"] == "/run/secrets/prometheus_token"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    env = doc["x-mtserve"]["environment"]
    for service, port in (("registry", 9461), ("inference", 9462), ("trainer", 9463)):
        assert f"{service}:{port}" in targets
        assert env[f"MTSERVE_{service.upper()}__METRICS_ADDRESS"] == f"0.0.0.0:{port}"
    # The certificate names the hosts Prometheus dials.
    assert set(load_settings(DOCKER / "mtserve-secrets.example.yaml", env={}).tls.server_names) == {"registry", "inference", "trainer"}
    assert "ports" not in doc["services"]["prometheus"]


def test_the_grafana_dashboard_queries_only_metrics_the_services_export():
    import json
    import re

    from prometheus_client import REGISTRY

    import services.common.metrics  # noqa: F401 - registers the metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    # Names from the definitions, not from samples: a labelled metric has none until first used.
    exported = {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "mtserve.json").read_text(encoding="utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    used = {name for e in exprs for name in re.findall(r"\b((?:mtserve|process)_[a-z_]+)", e)}
    assert used and used <= exported, used - exported
    provisioning = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090" and datasource["uid"] == "mtserve-prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "mtserve.yaml").read_text())["providers"][0]
    grafana = compose()["services"]["grafana"]
    assert any(v.endswith(":" + provider["options"]["path"] + ":ro") for v in grafana["volumes"])
    assert grafana["ports"] == ["127.0.0.1:3000:3000"] and "GF_SECURITY_ADMIN_PASSWORD__FILE" in grafana["environment"]
