"""Shared fixtures: tokenizers and tiny random models, built once per session
into a temporary MTSERVE_HOME so tests never write into the user's home."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from mtserve.localdev import local_services
from mtserve.tasks import Catalogue, builtin_catalogue_path, load_catalogue

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("mtserve-home")
    os.environ["MTSERVE_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _isolated_home(session_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTSERVE_HOME", str(session_home))


# -- PostgreSQL ----------------------------------------------------------------------------------
# scripts/setup.sh starts a private, password-protected cluster and writes its
# URL where mtserve.localdev reads it (TEST_POSTGRES_URL overrides);
# scripts/test.sh sets TEST_REQUIRE_SERVICES=1, so under the README's test
# command an unreachable server fails the PostgreSQL and Redis tests instead
# of skipping them. A bare `pytest` elsewhere skips them.
POSTGRES_URL = (os.environ.get("TEST_POSTGRES_URL") or local_services().get("LOCAL_POSTGRES_URL")
                or "postgresql+psycopg://mtserve@127.0.0.1:5433/test")


def services_required() -> bool:
    return os.environ.get("TEST_REQUIRE_SERVICES") == "1"


def _postgres_problem() -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: no PostgreSQL for the tests
        return str(exc).strip().splitlines()[0]
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose tables live in a fresh schema of the test database
    (search_path set in the URL), dropped with everything in it afterwards."""
    problem = _postgres_problem()
    if problem:
        message = f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string(hide_password=True)} is unreachable ({problem})"
        if services_required():
            pytest.fail(message + "; TEST_REQUIRE_SERVICES=1 (scripts/test.sh) requires it: run scripts/setup.sh")
        pytest.skip(message)
    from sqlalchemy import create_engine, text

    schema = f"mtserve_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def hotel() -> Catalogue:
    return load_catalogue(builtin_catalogue_path("hotel"))


@pytest.fixture(scope="session")
def smollm2_tok(session_home: Path):
    from mtserve.models import smollm2_tokenizer

    return smollm2_tokenizer(session_home / "tokenizers" / "smollm2")


@pytest.fixture(scope="session")
def qwen2_tok(session_home: Path):
    from mtserve.qwen_vocab import load_qwen2_tokenizer

    return load_qwen2_tokenizer(session_home / "tokenizers" / "qwen2")


@pytest.fixture(scope="session", params=["smollm2", "qwen2"])
def any_tok(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_tok")


@pytest.fixture(scope="session")
def tiny_llama_dir(session_home: Path, smollm2_tok) -> Path:
    """A 2-layer random Llama with the SmolLM2 tokenizer, as a checkpoint."""
    from mtserve.models import build_tiny_checkpoint

    return build_tiny_checkpoint(session_home / "checkpoints" / "tiny-llama", smollm2_tok, checkpoint_id="tiny-llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_qwen_dir(session_home: Path, qwen2_tok) -> Path:
    """A 2-layer random Qwen2 with the Qwen2-vocabulary tokenizer, as a checkpoint."""
    from mtserve.models import build_tiny_checkpoint

    return build_tiny_checkpoint(session_home / "checkpoints" / "tiny-qwen", qwen2_tok, checkpoint_id="tiny-qwen", arch="qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tiny_llama_dir: Path):
    from mtserve.models import load_checkpoint

    return load_checkpoint(tiny_llama_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_qwen_dir: Path):
    from mtserve.models import load_checkpoint

    return load_checkpoint(tiny_qwen_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session", params=["llama", "qwen"])
def tiny_model(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"tiny_{request.param}")


_USER_HOME = os.environ.get("MTSERVE_HOME")  # before the fixtures point it at a temp dir


@pytest.fixture(scope="session")
def default_model_dir(session_home: Path) -> Path:
    """The real SmolLM2 checkpoint: the one scripts/setup.sh prepared (read
    only), or prepared once into the session's home."""
    from mtserve.config import DEFAULT_HOME
    from mtserve.models import DEFAULT_CHECKPOINT_ID, prepare_default

    prepared = Path(_USER_HOME or DEFAULT_HOME).expanduser() / "checkpoints" / DEFAULT_CHECKPOINT_ID
    if (prepared / "manifest.json").exists():
        return prepared
    return prepare_default(session_home / "checkpoints")
