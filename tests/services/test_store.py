"""The registry store on a real SQLite file and a real PostgreSQL schema:
migrations, task versions, checkpoints, routes with history and rollback,
and transactions (all-or-nothing promotions, never half-seen)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import pytest

from mtserve.errors import IntegrityError, NotFoundError, PreconditionError, ValidationError
from mtserve.records import PolicyRecord, RouteChange, TaskStatus
from mtserve.tasks import Channel, Taxonomy
from services.registry.store import RegistryStore, schema_revision


@pytest.fixture
def store(db_url):
    s = RegistryStore(db_url)
    yield s
    s.close()


@pytest.fixture
def catalogued(store, hotel, tiny_llama_dir, tiny_qwen_dir):
    store.apply_catalogue(hotel.tasks, PolicyRecord(hotel.truncation, "hotel"))
    store.register_checkpoint(tiny_llama_dir)
    store.register_checkpoint(tiny_qwen_dir)
    return store


def test_migrations_reach_head_and_match_the_schema_module(store, db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from services.registry.schema import metadata

    assert schema_revision(store.engine) == "0002"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], f"services/registry/schema.py and the migrations disagree: {diff}"
    RegistryStore(db_url).close()  # a second start migrates nothing and keeps the data
    assert store.revision() == 0


def test_a_registry_at_0001_with_routes_upgrades_to_the_audit_schema(db_url, hotel, tiny_llama_dir):
    """A database made before the audit trail (at 0001, with a task in it)
    migrates to 0002 at start, keeps its data, and records actors from then on."""
    from alembic import command
    from alembic.config import Config

    from services.registry.store import MIGRATIONS

    old = RegistryStore(db_url, run_migrations=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with old.engine.begin() as conn:  # a route as the 0001 code wrote it
        conn.exec_driver_sql("INSERT INTO tasks (name, status, latest_version, updated_at) VALUES ('csa', 'active', 1, 't0')")
        conn.exec_driver_sql(
            "INSERT INTO task_versions (name, version, content_hash, definition_json, created_at) VALUES ('csa', 1, 'h', ?, 't0')"
            if conn.dialect.name == "sqlite" else
            "INSERT INTO task_versions (name, version, content_hash, definition_json, created_at) VALUES ('csa', 1, 'h', %s, 't0')",
            (json.dumps(hotel.task("csa").with_version(None).to_dict()),),
        )
    old.close()
    store = RegistryStore(db_url)  # migrates to head
    try:
        assert schema_revision(store.engine) == "0002"
        store.register_checkpoint(tiny_llama_dir, actor="ops-bob")
        store.set_routes([RouteChange("csa", "tiny-llama")], "after the upgrade", actor="ops-bob")
        assert [e.actor for e in store.route_history("csa")] == ["ops-bob"]
        assert [(e.actor, e.action) for e in store.audit_log()] == [("ops-bob", "set_route"), ("ops-bob", "register_checkpoint")]
    finally:
        store.close()


def test_versions_change_only_when_the_definition_does(store, hotel):
    task = hotel.task("rc-a")
    first = store.register_task(task)
    assert (first.record.version, first.changed) == (1, True)
    revision = store.revision()
    again = store.register_task(task.with_version(9))  # a version sent along is ignored
    assert (again.record.version, again.changed) == (1, False)
    assert store.revision() == revision  # a no-op commits nothing
    changed = store.register_task(dataclasses.replace(task, instruction=task.instruction + " Be strict."))
    assert (changed.record.version, changed.changed) == (2, True)
    assert store.get_task("rc-a").task.instruction.endswith("Be strict.")
    assert store.get_task("rc-a", 1).task == task.with_version(1)
    with pytest.raises(NotFoundError, match=r"task 'rc-a' has no version 3; its versions are 1 to 2"):
        store.get_task("rc-a", 3)
    with pytest.raises(NotFoundError, match=r"unknown task 'nope'"):
        store.get_task("nope")
    with pytest.raises(ValidationError, match=r"name: must match"):
        store.get_task("No Such")


def test_apply_catalogue_is_one_transaction_and_sets_the_policy(store, hotel):
    results, revision = store.apply_catalogue(hotel.tasks, PolicyRecord(hotel.truncation, "hotel"))
    assert revision == 1 and all(r.changed and r.record.version == 1 for r in results)
    assert store.policy() == PolicyRecord(hotel.truncation, "hotel")
    results, revision = store.apply_catalogue(hotel.tasks, PolicyRecord(hotel.truncation, "hotel"))
    assert revision == 1 and not any(r.changed for r in results)
    dup = list(hotel.tasks) + [hotel.tasks[0]]
    with pytest.raises(ValidationError, match=r"tasks\[18\].name: duplicate task name \(also tasks\[0\]\)"):
        store.apply_catalogue(dup, PolicyRecord())


def test_list_filters_and_retire(store, hotel):
    store.apply_catalogue(hotel.tasks, PolicyRecord(hotel.truncation, "hotel"))
    assert [r.name for r in store.list_tasks(channel=Channel.EMAIL)] == ["ec"]
    assert [r.name for r in store.list_tasks(taxonomy=Taxonomy.MULTILABEL)] == ["csc", "rtc"]
    retired = store.retire_task("ec")
    assert retired.status is TaskStatus.RETIRED
    assert [r.name for r in store.list_tasks(status=TaskStatus.RETIRED)] == ["ec"]
    assert "ec" not in [r.name for r in store.list_tasks(status=TaskStatus.ACTIVE)]
    assert len(store.list_tasks()) == len(hotel.tasks)
    # registering it again serves it again, same version
    back = store.register_task(hotel.task("ec"))
    assert back.changed and back.record.version == 1 and back.record.status is TaskStatus.ACTIVE


def test_checkpoints_are_verified_and_immutable(store, tiny_llama_dir, tmp_path):
    record, changed = store.register_checkpoint(tiny_llama_dir)
    assert changed and record.id == "tiny-llama" and record.kind == "full"
    assert json.loads(record.manifest_json)["id"] == "tiny-llama"
    assert store.register_checkpoint(tiny_llama_dir) == (record, False)
    assert [c.id for c in store.list_checkpoints()] == ["tiny-llama"]
    # the same id with other content is refused
    copy = tmp_path / "copy"
    shutil.copytree(tiny_llama_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["description"] = "something else"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PreconditionError, match=r"checkpoint 'tiny-llama' is already registered with another manifest"):
        store.register_checkpoint(copy)
    # a tampered file is refused before anything is recorded
    (copy / "config.json").write_text("{}")
    with pytest.raises(IntegrityError, match=r"config.json has sha256"):
        store.register_checkpoint(copy)
    with pytest.raises(ValidationError, match=r"path: is not a folder the registry can read"):  # INVALID_ARGUMENT, like every path error
        store.register_checkpoint(tmp_path / "missing")
    with pytest.raises(NotFoundError, match=r"id: checkpoint 'other' is not registered"):
        store.get_checkpoint("other")


def test_routes_validate_everything_they_name(catalogued):
    s = catalogued
    cases = [
        (RouteChange("nope", "tiny-llama"), NotFoundError, r"route.task: unknown task 'nope'"),
        (RouteChange("rc-a", "nope"), NotFoundError, r"route.checkpoint_id: checkpoint 'nope' is not registered"),
        (RouteChange("rc-a", "tiny-llama", 5), NotFoundError, r"route.task_version: task 'rc-a' has no version 5"),
        (RouteChange("rc-a", "Bad Id"), ValidationError, r"route.checkpoint_id: must match"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            s.set_routes([change], where="route")
    s.retire_task("id")
    with pytest.raises(PreconditionError, match=r"task 'id' is retired"):
        s.set_routes([RouteChange("id", "tiny-llama")], where="route")
    assert s.get_routes()[0] == []


def test_set_routes_is_all_or_nothing(catalogued):
    s = catalogued
    good = [RouteChange(n, "tiny-llama") for n in ("rc-a", "rc-i", "uc-a")]
    with pytest.raises(NotFoundError, match=r"routes\[3\].checkpoint_id: checkpoint 'missing'"):
        s.set_routes(good + [RouteChange("uc-i", "missing")])
    assert s.get_routes() == ([], s.revision())
    with pytest.raises(ValidationError, match=r"routes\[1\].task: appears twice \(also routes\[0\]\)"):
        s.set_routes([RouteChange("rc-a", "tiny-llama"), RouteChange("rc-a", "tiny-qwen")])
    updates, revision = s.set_routes(good, reason="promotion")
    assert [u.changed for u in updates] == [True] * 3
    routes, read_at = s.get_routes()
    assert read_at == revision and [(r.task, r.task_version, r.checkpoint_id, r.reason) for r in routes] == [
        ("rc-a", 1, "tiny-llama", "promotion"), ("rc-i", 1, "tiny-llama", "promotion"), ("uc-a", 1, "tiny-llama", "promotion")]
    updates, again = s.set_routes(good)
    assert not any(u.changed for u in updates) and again == revision  # nothing new: no history, no revision


def test_rollback_walks_back_through_the_history(catalogued, hotel):
    s = catalogued
    with pytest.raises(PreconditionError, match=r"task 'rc-a' has no route to roll back"):
        s.rollback("rc-a")
    s.set_routes([RouteChange("rc-a", "tiny-llama")], reason="first")
    with pytest.raises(PreconditionError, match=r"no earlier route to roll back to"):
        s.rollback("rc-a")
    s.register_task(dataclasses.replace(hotel.task("rc-a"), title="v2"))
    s.set_routes([RouteChange("rc-a", "tiny-qwen")], reason="second")  # latest version: 2
    s.set_routes([RouteChange("rc-a", "tiny-llama", 2)], reason="third")
    back = s.rollback("rc-a")
    assert (back.task_version, back.checkpoint_id) == (2, "tiny-qwen")
    back = s.rollback("rc-a")
    assert (back.task_version, back.checkpoint_id) == (1, "tiny-llama")
    history = s.route_history("rc-a")
    assert [(e.route.reason, e.current, bool(e.rolled_back_at)) for e in history] == [
        ("third", False, True), ("second", False, True), ("first", True, False)]
    s.set_routes([RouteChange("rc-a", "tiny-qwen", 2)], reason="fourth")
    assert s.rollback("rc-a").checkpoint_id == "tiny-llama"  # back to "first", skipping rolled-back entries


def test_snapshot_holds_latest_and_routed_versions(catalogued, hotel):
    s = catalogued
    s.set_routes([RouteChange("rc-a", "tiny-llama")])
    s.register_task(dataclasses.replace(hotel.task("rc-a"), title="v2"))
    snap = s.snapshot()
    assert {r.version for r in snap.tasks if r.name == "rc-a"} == {1, 2}  # v1 is routed, v2 is the latest
    assert snap.latest()["rc-a"].version == 2
    assert snap.route_table()["rc-a"].task_version == 1
    assert {c.id for c in snap.checkpoints} == {"tiny-llama", "tiny-qwen"}
    assert snap.policy == PolicyRecord(hotel.truncation, "hotel")
    s.retire_task("rc-a")
    change = s.snapshot().changes_since(snap)
    assert {(r.name, r.version, r.status) for r in change.tasks} == {("rc-a", 1, TaskStatus.RETIRED), ("rc-a", 2, TaskStatus.RETIRED)}
    assert change.routes == () and change.policy is None
    assert snap.apply(change) == s.snapshot()


def test_concurrent_registrations_get_distinct_versions(store, hotel):
    base = hotel.task("csa")
    store.register_task(base)
    errors = []

    def register(i: int) -> None:
        try:
            store.register_task(dataclasses.replace(base, title=f"variant {i}"))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.get_task("csa").version == 9
    assert sorted(store.get_task("csa", v).task.title for v in range(2, 10)) == sorted(f"variant {i}" for i in range(8))


def test_a_reader_never_sees_half_a_promotion(catalogued, hotel):
    """Promotions move all 18 tasks between two checkpoints, back and forth;
    a concurrent reader polls the route table and must see every task on
    the same checkpoint each time."""
    s = catalogued
    names = [t.name for t in hotel.tasks]
    s.set_routes([RouteChange(n, "tiny-llama") for n in names])
    stop = threading.Event()
    seen: list[set[str]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                routes, _ = s.get_routes()
                seen.append({r.checkpoint_id for r in routes})
                assert len(routes) == len(names)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            target = "tiny-qwen" if i % 2 == 0 else "tiny-llama"
            s.set_routes([RouteChange(n, target) for n in names], reason=f"promotion {i}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert seen and all(len(checkpoints) == 1 for checkpoints in seen), [c for c in seen if len(c) != 1][:3]
