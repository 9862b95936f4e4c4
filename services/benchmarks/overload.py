"""Latency under overload: what a flood does to the calls that are accepted.

    .venv/bin/python -m services.benchmarks.overload [--flood 200] [--steady 4] [--calls 12]

A registry and an inference service on the prepared default model, in this
process, for each of two arms of the same run:

* admission (the default): inference.max_workers 64, max_inflight_calls 48;
* no admission (the old behaviour): 320 worker threads, 319 calls admitted,
  i.e. everything up to gRPC's limit waits for the model.

Each arm first measures `--steady` clients making `--calls` calls each (the
baseline), then `--flood` clients sending one Classify each at the same
moment. Reported per arm: calls accepted and refused (RESOURCE_EXHAUSTED),
latency p50/p95/max of the accepted, and the flood's p95 over the steady p50
(the ratio the goal is about: how much worse an accepted call gets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mtserve.config import load_settings
from mtserve.errors import OverloadedError
from mtserve.inputs import input_from_dict
from mtserve.models import prepare_default
from mtserve.records import RouteChange

SAMPLES = Path(__file__).resolve().parents[2] / "mtserve" / "samples"


def _arm(name: str, overrides: dict[str, Any], flood: int, steady: int, calls: int) -> dict[str, Any]:
    from mtserve.tasks import builtin_catalogue_path, load_catalogue
    from mtserve_api.inference import InferenceClient
    from mtserve_api.registry import RegistryClient
    from services.inference.server import create_server as inference_server
    from services.registry.server import create_server as registry_server

    model = prepare_default(load_settings().checkpoints_root)
    home = Path(tempfile.mkdtemp(prefix=f"mtserve-overload-{name}-"))
    s = load_settings(overrides={"home": str(home), "checkpoints_dir": str(model.parent), "registry.metrics_address": "",
                                 "inference.metrics_address": "", "inference.queue_size": 4096, **overrides}, env={})
    registry, rport = registry_server("127.0.0.1:0", s)
    registry.start()
    raddr = f"127.0.0.1:{rport}"
    with RegistryClient(raddr, timeout=60, settings=s) as client:
        client.apply_catalogue(load_catalogue(builtin_catalogue_path("hotel")))
        record, _ = client.register_checkpoint(str(model))
        client.set_routes([RouteChange("ec", record.id)])
    inference, iport = inference_server("127.0.0.1:0", s, registry_address=raddr)
    inference.start()
    address = f"127.0.0.1:{iport}"
    email = input_from_dict(json.loads((SAMPLES / "email.json").read_text(encoding="utf-8")), "email")
    try:
        with InferenceClient(address, timeout=300, settings=s) as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # until the model is loaded
                try:
                    client.classify("ec", email)
                    break
                except Exception:  # noqa: BLE001 - not ready yet
                    time.sleep(0.5)

        def run(clients: int, per_client: int) -> tuple[list[float], int, int]:
            latencies: list[float] = []
            refused = failed = 0
            lock = threading.Lock()
            start = threading.Barrier(clients)

            def one() -> None:
                nonlocal refused, failed
                with InferenceClient(address, timeout=600, settings=s) as c:
                    start.wait()
                    for _ in range(per_client):
                        t0 = time.monotonic()
                        try:
                            c.classify("ec", email)
                            with lock:
                                latencies.append(time.monotonic() - t0)
                        except OverloadedError:
                            with lock:
                                refused += 1
                        except Exception:  # noqa: BLE001 - counted: a benchmark reports, it does not stop
                            with lock:
                                failed += 1

            threads = [threading.Thread(target=one) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return latencies, refused, failed

        base, _, _ = run(steady, calls)
        flooded, refused, failed = run(flood, 1)
    finally:
        inference.stop(grace=5)
        registry.stop(grace=1)
    q = statistics.quantiles(flooded, n=20) if len(flooded) >= 2 else [float("nan")] * 19
    return {
        "arm": name, "settings": overrides, "steady_p50_s": statistics.median(base),
        "flood": flood, "accepted": len(flooded), "refused": refused, "failed": failed,
        "accepted_p50_s": statistics.median(flooded) if flooded else None, "accepted_p95_s": q[18],
        "accepted_max_s": max(flooded) if flooded else None,
        "p95_over_steady_p50": q[18] / statistics.median(base),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--steady", type=int, default=4)
    parser.add_argument("--calls", type=int, default=12)
    args = parser.parse_args(argv)
    arms = [
        ("admission", {}),
        ("no-admission", {"inference.max_workers": 320, "inference.max_inflight_calls": 319}),
    ]
    results = [_arm(name, over, args.flood, args.steady, args.calls) for name, over in arms]
    print(json.dumps(results, indent=2))
    for r in results:
        print(f"{r['arm']}: {r['accepted']} accepted, {r['refused']} refused, {r['failed']} failed of {r['flood']}; "
              f"accepted p50 {r['accepted_p50_s']:.2f} s, p95 {r['accepted_p95_s']:.2f} s, max {r['accepted_max_s']:.2f} s; "
              f"steady p50 {r['steady_p50_s']:.2f} s; p95/steady p50 = {r['p95_over_steady_p50']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
