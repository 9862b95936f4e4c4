"""A real `mtserve worker` serves its pool processes' metrics: after a day
is scored, a scrape over HTTPS with the local admin token shows the chunks,
conversations and results the pool process counted."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from batch.synth import generate_day, write_day
from mtserve.auth import admin_token_path, read_token_file
from mtserve.tls import tls_dir

from .conftest import free_port, poll_until

DATE = "2024-06-02"


def scrape(port: int, home: Path) -> dict[str, float]:
    context = ssl.create_default_context(cafile=str(tls_dir(home) / "ca.pem"))
    token = read_token_file(admin_token_path(home))
    request = urllib.request.Request(f"https://localhost:{port}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = out.get(key, 0.0) + s.value
    return out


def test_a_worker_serves_what_its_pool_processes_counted(tmp_path, tiny_llama_dir, local_redis, make_batch_env):
    port = free_port()
    env = make_batch_env(tmp_path / "env", tiny_llama_dir, broker_url=local_redis, chunk_size=10, metrics_address=f"127.0.0.1:{port}")
    try:
        day = generate_day(DATE, 20, 7)
        logs = write_day(day, tmp_path / "day").logs
        env.start_worker("metered")
        job = json.loads(env.cli("batch", "submit", "--logs", str(logs), "--date", DATE, "--json").stdout)["job_id"]
        env.cli("batch", "status", job, "--wait", "--timeout", "240")
        home = Path(env.env["MTSERVE_HOME"])
        report = env.store().job(job).report
        metrics = poll_until(lambda: (m := scrape(port, home)).get("mtserve_worker_chunks_total{status=done}") == 2 and m, 30,
                             "both chunks counted")
        assert metrics["mtserve_worker_conversations_total"] == 20
        assert metrics["mtserve_worker_results_total"] == report["results"] > 0
        assert metrics["mtserve_worker_chunk_seconds_count"] == 2
    finally:
        env.cleanup()
