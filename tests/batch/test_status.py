"""`mtserve status` sees the batch workers through the broker: none before
one starts (NOT_SERVING, exit 1), the real worker process once it runs."""

from __future__ import annotations

import json


def workers(env) -> tuple[int, dict]:
    out = env.cli("status", "--registry", "127.0.0.1:1", "--inference", "127.0.0.1:1", "--json", check=False)
    assert out.stdout.strip(), out.stderr
    return out.returncode, next(c for c in json.loads(out.stdout) if c["kind"] == "workers")


def test_status_lists_the_running_workers_and_the_queue(batch_env):
    code, before = workers(batch_env)
    assert code == 1 and before["health"] == "NOT_SERVING" and before["detail"]["workers"] == []
    batch_env.start_worker("status")
    code, after = workers(batch_env)
    assert code == 1  # the registry and inference addresses given are unreachable
    assert after["health"] == "SERVING" and len(after["detail"]["workers"]) == 1
    assert after["detail"]["queue_depth"] == 0
