"""Every registry write records who made it (the token's name), when and why;
checkpoints register only from inside the checkpoint roots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtserve.auth import Role, TokenStore
from mtserve.errors import ValidationError
from mtserve.records import RouteChange
from mtserve_api.registry import RegistryClient

from .conftest import make_settings, start_registry


@pytest.fixture
def registry(tmp_path, session_home, hotel, tiny_llama_dir):
    service, address = start_registry(make_settings(tmp_path, **{"registry.checkpoint_roots": []}))  # the home's root only
    alice = TokenStore(session_home).create(f"alice-{tmp_path.name}"[:60], Role.ADMIN)
    with RegistryClient(address, timeout=20, token=alice) as client:
        yield service, client, f"alice-{tmp_path.name}"[:60]
    service.stop(grace=1)


def test_route_history_and_the_audit_log_name_the_caller(registry, hotel, tiny_llama_dir):
    service, client, alice = registry
    client.apply_catalogue(hotel)
    checkpoint = client.register_checkpoint(str(tiny_llama_dir))[0].id
    client.set_routes([RouteChange("csa", checkpoint)], reason="first rollout")
    entries = client.route_history("csa")
    assert [(e.actor, e.route.reason) for e in entries] == [(alice, "first rollout")]
    log = service.store.audit_log()
    assert (log[0].actor, log[0].action, log[0].target, log[0].reason) == (alice, "set_route", f"csa v1 -> {checkpoint}", "first rollout")
    actions = {e.action for e in log}
    assert {"register_task", "set_policy", "register_checkpoint", "set_route"} <= actions
    assert all(e.actor == alice and e.at for e in log)
    # a write that changes nothing records nothing
    before = len(service.store.audit_log())
    client.set_routes([RouteChange("csa", checkpoint)], reason="same again")
    assert len(service.store.audit_log()) == before


def test_checkpoints_register_only_from_inside_the_checkpoint_roots(registry, tmp_path, tiny_llama_dir):
    _, client, _ = registry
    outside = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(tiny_llama_dir, outside)
    with pytest.raises(ValidationError) as refused:
        client.register_checkpoint(str(outside))
    assert "path: must be inside a checkpoint root" in str(refused.value) and str(outside) in str(refused.value)
    link = Path(tiny_llama_dir).parent / f"link-out-{tmp_path.name}"
    link.symlink_to(outside)
    try:
        with pytest.raises(ValidationError, match="must be inside a checkpoint root"):
            client.register_checkpoint(str(link))  # resolved first: a link inside cannot lead out
    finally:
        link.unlink()
    assert client.register_checkpoint(str(tiny_llama_dir))[0].id == "tiny-llama"


def test_path_errors_quote_the_callers_string_and_no_server_path(registry, tmp_path, tiny_llama_dir):
    """Every bad path is INVALID_ARGUMENT quoting what the caller sent: no
    expansion of ~ on the server, no working folder, no root, and the same
    answer outside the roots whether a folder exists there or not."""
    _, client, _ = registry
    root = Path(tiny_llama_dir).parent
    inside_roots = "must be inside a checkpoint root of the registry (settings checkpoints_dir and registry.checkpoint_roots)"
    cases = {
        "~": "must be an absolute path (~ is not expanded on the server)",
        "~nosuchuser-xyz/ckpt": "must be an absolute path (~ is not expanded on the server)",
        "relative/ckpt": "must be an absolute path (a relative one would be read from the server's working folder)",
        "/a\x00b": "must not contain a NUL character",
        "/" + "n" * 300: "must not have a name over 255 bytes",
        "/x" * 2100: "must be at most 4096 bytes",
        "/etc": inside_roots,  # exists
        "/no/such/folder": inside_roots,  # does not: the same answer
        str(root / "no-such-checkpoint"): "is not a folder the registry can read",  # inside the root
        str(root): "has no manifest.json: not an mtserve checkpoint (run `mtserve models import` on a plain model folder)",
    }
    for value, rule in cases.items():
        with pytest.raises(ValidationError) as refused:
            client.register_checkpoint(value)
        details = refused.value.details  # type: ignore[attr-defined]
        assert refused.value.code.name == "INVALID_ARGUMENT", (value, details)  # type: ignore[attr-defined]
        assert details.startswith(f"path: {rule} (got "), (value, details)
        for server_path in (str(Path.home()), str(Path.cwd())):
            assert server_path not in details.replace(value[:100], ""), (value, details)


def test_every_write_keeps_its_reason_and_operators_read_the_log_remotely(registry, hotel, tiny_llama_dir, session_home, tmp_path):
    service, client, alice = registry
    client.apply_catalogue(hotel, reason="ticket OPS-1: the hotel catalogue")
    checkpoint = client.register_checkpoint(str(tiny_llama_dir), reason="ticket OPS-2: the tiny model")[0].id
    client.retire_task("hs", reason="ticket OPS-3: hs moves to its own model")
    log = client.audit_log(500)  # over gRPC, newest first
    assert [(e.action, e.target, e.reason) for e in log[:2]] == [
        ("retire_task", "hs", "ticket OPS-3: hs moves to its own model"),
        ("register_checkpoint", checkpoint, f"{Path(tiny_llama_dir).resolve()}; ticket OPS-2: the tiny model"),
    ]
    assert {e.reason for e in log if e.action in ("register_task", "set_policy")} == {"ticket OPS-1: the hotel catalogue"}
    assert all(e.actor == alice for e in log) and log == service.store.audit_log(500)
    # Operators read it; clients do not.
    from mtserve_api.client import RemotePermissionDenied

    address = client.address
    operator = TokenStore(session_home).create(f"audit-op-{tmp_path.name}"[:60], Role.OPERATOR)
    with RegistryClient(address, timeout=20, token=operator) as as_operator:
        assert as_operator.audit_log(1) == log[:1]
    reader = TokenStore(session_home).create(f"audit-client-{tmp_path.name}"[:60], Role.CLIENT)
    with RegistryClient(address, timeout=20, token=reader) as as_client, pytest.raises(RemotePermissionDenied):
        as_client.audit_log(1)


def test_mtserve_audit_prints_the_log(registry, hotel, capsys):
    import json

    from mtserve_cli import main

    _, client, _ = registry
    client.apply_catalogue(hotel, reason="for the CLI")
    main(["audit", "--registry", client.address, "--limit", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and {r["reason"] for r in rows} == {"for the CLI"}  # the session's admin token reads it
    main(["tasks", "retire", "hs", "--reason", "from the CLI", "--registry", client.address])
    capsys.readouterr()
    main(["audit", "--registry", client.address, "-n", "1", "--json"])
    assert json.loads(capsys.readouterr().out)[0]["reason"] == "from the CLI"
