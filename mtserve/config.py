"""Configuration in one place: defaults here, then a YAML file, then
`MTSERVE_*` environment variables, then command-line flags. Unknown keys and
wrong types fail at start with the key named.

Environment variables use `__` between a section and its key:
`MTSERVE_HOME=/data/mtserve`, `MTSERVE_INFERENCE__MAX_BATCH_TOKENS=4096`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from mtserve.errors import ValidationError
from mtserve.files import load_yaml

if TYPE_CHECKING:
    from mtserve.auth import TokenStore
    from mtserve.tls import ClientPems, ServerPems

ENV_PREFIX = "MTSERVE_"
DEFAULT_HOME = Path("~/.cache/mtserve")


def mtserve_home() -> Path:
    """Root of everything mtserve writes by default (checkpoints, databases,
    caches). `MTSERVE_HOME` overrides it."""
    return Path(os.environ.get("MTSERVE_HOME") or DEFAULT_HOME).expanduser()


def is_loopback(address: str) -> bool:
    """Is `address` (HOST:PORT) one only this machine can reach?"""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _threads_left(section: Any, bounded: str) -> None:
    """A gRPC server's worker threads must outnumber the calls allowed to hold
    one for long (`bounded`: open streams, calls waiting for the model), so
    that health checks and short calls always find a thread."""
    if getattr(section, bounded) >= section.max_workers:
        raise ValueError(f"{bounded} ({getattr(section, bounded)}) must be below max_workers ({section.max_workers})")


MIB = 1024 * 1024


class RegistrySettings(_Section):
    address: str = "127.0.0.1:50051"
    # SQLite file under home by default; `postgresql+psycopg://user@host/db` for PostgreSQL.
    database_url: str | None = None
    # RegisterCheckpoint accepts folders inside the checkpoints root
    # (`checkpoints_dir`) and inside these folders only.
    checkpoint_roots: list[str] = Field(default_factory=list)
    # gRPC server: each Watch stream (one per inference replica) holds a
    # worker thread, so open streams are bounded below the threads: a stream
    # beyond max_streams is refused (RESOURCE_EXHAUSTED), and the unary calls
    # keep max_workers - max_streams threads whatever the streams do.
    max_workers: int = Field(default=32, ge=2)
    max_streams: int = Field(default=24, ge=1)
    # Prometheus /metrics (services/common/metrics.py); "" turns it off.
    metrics_address: str = "127.0.0.1:9461"
    max_message_bytes: int = Field(default=16 * MIB, ge=64 * 1024)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    # How often a Watch stream re-reads the revision, to see writes made by
    # another registry replica on the same database (local writes wake it at once).
    watch_poll_seconds: float = Field(default=1.0, gt=0)
    # Deadline of each call the CLI and other clients make to the registry.
    client_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> RegistrySettings:
        _threads_left(self, "max_streams")
        return self


class TgiSettings(_Section):
    """The text-generation-inference backend (mtserve/tgi.py, docs/services.md):
    how the inference service talks to the TGI servers that checkpoints of
    kind `tgi` name. One set for every such server."""

    # The bearer token the servers expect (TGI's --api-key), read from this
    # file. Without one no Authorization header is sent at all: never the
    # Hugging Face token huggingface_hub would otherwise pick up.
    token_file: str | None = None
    # A CA to trust for https:// endpoints, on top of the system's.
    ca_file: str | None = None
    # Per HTTP request (one label path or one generation step).
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Retries of a request refused with 429, 5xx or a connection error:
    # exponential backoff from backoff_initial_seconds, capped, jittered.
    retries: int = Field(default=2, ge=0)
    backoff_initial_seconds: float = Field(default=0.2, gt=0)
    backoff_max_seconds: float = Field(default=2.0, gt=0)
    # The server's --max-top-n-tokens (TGI's default is 5; /info does not
    # report it). Grammar mode refuses a task that needs more top tokens.
    max_top_n_tokens: int = Field(default=5, ge=1)
    # HTTP requests in flight to one server per batch (TGI batches them).
    max_concurrency: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _backoff_grows(self) -> TgiSettings:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError(
                f"backoff_max_seconds ({self.backoff_max_seconds}) must not be below backoff_initial_seconds ({self.backoff_initial_seconds})"
            )
        return self


class InferenceSettings(_Section):
    address: str = "127.0.0.1:50052"
    registry_address: str | None = None  # defaults to registry.address
    # Dynamic batching: requests for different tasks share forward passes.
    max_batch_tokens: int = Field(default=8192, ge=64)
    max_batch_requests: int = Field(default=64, ge=1)
    max_wait_ms: float = Field(default=5.0, ge=0)
    queue_size: int = Field(default=256, ge=1)
    # Where the last-known-good copy of tasks and routes is kept, for serving
    # through a registry outage (under home by default).
    state_file: str | None = None
    # gRPC server: a call waiting for its batch holds a worker thread.
    # Admission: at most max_inflight_calls Classify/ClassifyMany/Generate
    # calls wait for the model at once; the next is refused at once with
    # RESOURCE_EXHAUSTED (not queued into latency), and the threads above the
    # bound keep health checks and ModelInfo answering under a flood.
    max_workers: int = Field(default=64, ge=2)
    max_inflight_calls: int = Field(default=48, ge=1)
    metrics_address: str = "127.0.0.1:9462"  # Prometheus /metrics; "" turns it off
    max_message_bytes: int = Field(default=16 * MIB, ge=64 * 1024)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # Reconnecting to the registry's Watch: exponential backoff with jitter.
    reconnect_initial_seconds: float = Field(default=0.5, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    # Deadline of each call clients (CLI, batch scorer) make to the service.
    client_timeout_seconds: float = Field(default=60.0, gt=0)
    # Checkpoints of kind `tgi`: the model runs on a TGI server.
    tgi: TgiSettings = Field(default_factory=TgiSettings)

    @model_validator(mode="after")
    def _calls_leave_threads(self) -> InferenceSettings:
        _threads_left(self, "max_inflight_calls")
        return self


class BatchSettings(_Section):
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None  # defaults to broker_url
    results_database_url: str | None = None  # SQLite file under home by default
    # Prefix of every Redis key the broker and the result backend write, and
    # the queue the chunk tasks go to: several deployments (or test runs) can
    # share one Redis without seeing each other's messages.
    key_prefix: str = ""
    queue: str = "mtserve-batch"
    # Prometheus /metrics of a worker (`mtserve worker`: the pool processes'
    # metrics, collected by the parent); "" turns it off.
    metrics_address: str = "127.0.0.1:9464"
    chunk_size: int = Field(default=25, ge=1)
    # Conversations per scorer call: the local engine batches their prefixes
    # together; results are committed after each group, so a chunk that is cut
    # short resumes after its last committed group.
    conversations_per_call: int = Field(default=8, ge=1)
    # Redis redelivers an unacknowledged task after this many seconds: it must
    # be longer than the longest chunk (see batch/celery_app.py).
    visibility_timeout: int = Field(default=3600, ge=1)
    # Hard limit: the worker process running the chunk is killed. The soft
    # limit (default 90% of the hard one) raises inside the task, which then
    # hands the chunk back with a retry; the retry skips what was committed.
    chunk_time_limit: int = Field(default=1800, ge=1)
    chunk_soft_time_limit: int | None = Field(default=None, ge=1)
    # How often a worker looks for unacknowledged messages older than the
    # visibility timeout (a dead worker's chunks) and puts them back in the queue.
    restore_interval: int = Field(default=10, ge=1)
    # Retries of a chunk when the inference service is UNAVAILABLE or
    # overloaded: exponential backoff (1, 2, 4, ... s, jittered) capped here.
    max_retries: int = Field(default=8, ge=0)
    retry_backoff_max: int = Field(default=120, ge=1)
    # A job that finished no chunk for this long (default: visibility timeout
    # + chunk time limit, by when a lost message would have come back) is
    # stalled: `batch status --wait`/`batch reconcile` re-enqueue its missing chunks.
    stall_seconds: float | None = Field(default=None, gt=0)
    # Rounds of re-enqueueing missing chunks before a job is declared incomplete.
    max_rounds: int = Field(default=10, ge=1)
    # "grpc" scores through the inference service; "local" loads the engine in the worker.
    scorer: Literal["grpc", "local"] = "grpc"
    # A gRPC target: HOST:PORT, or several replicas as dns:///NAME:PORT or
    # ipv4:H:P,H:P (docs/services.md, "Replicas"). Defaults to inference.address.
    inference_address: str | None = None
    # Local scorer: the task catalogue (default: the built-in hotel catalogue)
    # and the checkpoint, a folder or an id under checkpoints_dir (default: the
    # prepared default model).
    catalogue: str | None = None
    checkpoint: str | None = None
    # Worker processes per `mtserve worker` (default: 1 for the local scorer,
    # whose one process already uses every core; 4 for grpc, which waits on the network).
    worker_concurrency: int | None = Field(default=None, ge=1)
    # How long a new worker process may take to load its scorer (the model)
    # before the worker kills and replaces it; Celery's default of 4 s would
    # kill every process loading a real model, forever.
    worker_start_timeout: float = Field(default=600.0, gt=0)
    # Rejects files, reports and the Parquet export (under home by default).
    output_dir: str | None = None
    # Testing and demos only: sleep this long after each committed group, to
    # watch progress or to kill a worker in the middle of a chunk.
    debug_pause_seconds: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _limits_fit(self) -> BatchSettings:
        soft = self.soft_time_limit
        if soft >= self.chunk_time_limit:
            raise ValueError(f"chunk_soft_time_limit ({soft}) must be below chunk_time_limit ({self.chunk_time_limit})")
        # A chunk still running when its visibility timeout expires is handed
        # to a second worker, and a retry's countdown is spent holding the
        # message unacknowledged: both must fit inside the timeout.
        if self.visibility_timeout <= self.chunk_time_limit:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout}) must be longer than chunk_time_limit ({self.chunk_time_limit})"
            )
        if self.retry_backoff_max >= self.visibility_timeout:
            raise ValueError(
                f"retry_backoff_max ({self.retry_backoff_max}) must be shorter than visibility_timeout ({self.visibility_timeout})"
            )
        return self

    @property
    def soft_time_limit(self) -> int:
        return self.chunk_soft_time_limit or max(1, int(self.chunk_time_limit * 0.9))

    @property
    def stall_after(self) -> float:
        return self.stall_seconds or float(self.visibility_timeout + self.chunk_time_limit)


class TrainerSettings(_Section):
    address: str = "127.0.0.1:50053"
    # The service runs jobs whose folders (and output folders) lie inside this
    # one; under home by default (`<home>/training`).
    root: str | None = None
    # A train worker's work folder per job (the spec it runs, stderr), on the
    # worker's machine; under home by default. Job records live in database_url.
    jobs_dir: str | None = None
    # Where jobs register their checkpoints and promote routes (default: registry.address).
    registry_address: str | None = None
    # Job records and their progress events (services/trainer/store.py): the
    # service and every train worker must reach it; a SQLite file under home by
    # default, `postgresql+psycopg://...` across machines.
    database_url: str | None = None
    # Train queue (services/trainer/celery_app.py, broker batch.broker_url):
    # Redis hands an unacknowledged job back after this many seconds, which is
    # how soon a job held by a dead machine's worker resumes elsewhere.
    visibility_timeout: int = Field(default=3600, ge=2)
    # A running job's worker heartbeats its record; one silent this long is
    # taken for dead, and a redelivered job may then resume on another worker.
    lease_seconds: float = Field(default=60.0, gt=0)
    # Cancelling (and stopping the service): SIGTERM to the job's process
    # group, SIGKILL after this long.
    cancel_grace_seconds: float = Field(default=10.0, ge=0)
    # How often running jobs' processes and event logs are looked at.
    poll_seconds: float = Field(default=0.2, gt=0)
    # gRPC server: each WatchJob stream holds a worker thread; streams beyond
    # max_streams are refused, as the registry's are.
    max_workers: int = Field(default=16, ge=2)
    max_streams: int = Field(default=12, ge=1)
    metrics_address: str = "127.0.0.1:9463"  # Prometheus /metrics; "" turns it off
    max_message_bytes: int = Field(default=16 * MIB, ge=64 * 1024)
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    # Deadline of each call the CLI makes to the service (CancelJob waits for
    # the process to end: it gets cancel_grace_seconds more).
    client_timeout_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> TrainerSettings:
        _threads_left(self, "max_streams")
        return self


class AuthSettings(_Section):
    # Servers: check a bearer token with a role on every RPC but health
    # (mtserve_api/roles.py). Off only by this explicit setting, and then only
    # on a loopback address; the server says so when it starts.
    enabled: bool = True
    # Clients (CLI, batch workers, inference's registry watch, the trainer):
    # the token to send; else the one in token_file; else the local admin
    # token <home>/auth/admin.token when it exists.
    token: str | None = Field(default=None, repr=False)
    token_file: str | None = None
    # Servers: the token store (sha256 hashes only) calls are checked
    # against. Default <home>/auth/tokens.json, with the local admin token
    # made on first start. Given (a read-only secret in a container), it is
    # only read: the operator makes the tokens (`mtserve tokens create` on
    # the home the file comes from) and no local admin token is made.
    tokens_file: str | None = None


class TlsSettings(_Section):
    # TLS on every gRPC hop. Off only by this explicit setting, and then only
    # on loopback addresses; the server says so when it starts.
    enabled: bool = True
    # Servers: their certificate and key (default: the local CA's server
    # certificate in <home>/tls, made on first start for localhost, 127.0.0.1,
    # ::1, the host name and server_names).
    cert_file: str | None = None
    key_file: str | None = None
    server_names: list[str] = Field(default_factory=list)
    # Servers, mutual TLS: require client certificates signed by this CA.
    client_ca_file: str | None = None
    # Clients: the CA to trust (default <home>/tls/ca.pem), and for mutual
    # TLS their own certificate and key.
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    # Clients: the name to verify in the server's certificate when the target
    # names addresses, not a host (several replicas as ipv4:HOST:P1,HOST:P2);
    # default: the target's host.
    server_name: str | None = None


class Settings(_Section):
    home: Path = Field(default_factory=mtserve_home)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: float32 on a CPU, float16 on a GPU without bf16; where the bf16 probe
    # (mtserve.precision) finds bf16 units, serving (the inference service, the
    # batch local scorer) measures bf16 against float32 at load and keeps it only
    # if the answers match (mtserve/serving_precision.py; ModelInfo says which).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Torch's CPU threads in a process that runs the model (the inference
    # service; each pool process of a local-scorer worker). Default: OMP_NUM_THREADS
    # if set, else the cores the process may use divided by the processes
    # sharing them (mtserve/threads.py; docs/operations.md).
    torch_threads: int | None = Field(default=None, ge=1)
    checkpoints_dir: str | None = None  # under home by default
    log_level: str = "INFO"
    # Service logs: "text" (one line, with the request id) or "json" (one
    # object per line). Customer text is never logged unless
    # log_customer_text, an explicit debug setting.
    log_format: Literal["text", "json"] = "text"
    log_customer_text: bool = False
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    # -- derived paths --------------------------------------------------------
    def client_token(self) -> str | None:
        """The bearer token this process sends (see AuthSettings)."""
        from mtserve.auth import admin_token_path, read_token_file

        if self.auth.token:
            return self.auth.token
        if self.auth.token_file:
            return read_token_file(Path(self.auth.token_file).expanduser())
        local = admin_token_path(self.home)
        return read_token_file(local) if local.exists() else None

    def server_token_store(self) -> TokenStore:
        """The tokens a server checks: auth.tokens_file, read only; else this
        home's store, with the local admin token made on first use."""
        from mtserve.auth import TokenStore, ensure_local_admin

        if self.auth.tokens_file:
            path = Path(self.auth.tokens_file).expanduser()
            if not path.is_file():
                from mtserve.errors import PreconditionError

                raise PreconditionError(f"auth.tokens_file {path} does not exist (make it with `mtserve tokens create` on the home it comes from)")
            return TokenStore(self.home, path)
        ensure_local_admin(self.home)
        return TokenStore(self.home)

    def server_tls(self) -> ServerPems | None:
        """What a server presents (None: TLS off): the configured files, else
        the local CA's server certificate, made on first use."""
        from mtserve.tls import ServerPems, read_pem

        files = self.server_tls_files()
        if files is None:
            return None
        t = self.tls
        chain, key = read_pem(files[0], "TLS certificate"), read_pem(files[1], "TLS key")
        client_ca = read_pem(Path(t.client_ca_file), "client CA") if t.client_ca_file else None
        return ServerPems(chain, key, client_ca)

    def server_tls_files(self) -> tuple[Path, Path] | None:
        """The server certificate and key files (None: TLS off): the
        configured ones, else the local CA's, made on first use."""
        from mtserve.tls import ensure_local_ca

        t = self.tls
        if not t.enabled:
            return None
        if t.cert_file or t.key_file:
            if not (t.cert_file and t.key_file):
                raise ValidationError("tls.cert_file", "give tls.cert_file and tls.key_file together", t.cert_file or t.key_file)
            return Path(t.cert_file).expanduser(), Path(t.key_file).expanduser()
        folder = ensure_local_ca(self.home, tuple(t.server_names))
        return folder / "server.pem", folder / "server.key"

    def client_tls(self) -> ClientPems | None:
        """What a client trusts and presents (None: TLS off)."""
        from mtserve.tls import ClientPems, read_pem, tls_dir

        t = self.tls
        if not t.enabled:
            return None
        ca = Path(t.ca_file).expanduser() if t.ca_file else tls_dir(self.home) / "ca.pem"
        if not ca.exists():
            from mtserve.errors import PreconditionError

            raise PreconditionError(
                f"TLS: no CA to trust at {ca}: start a service on this home first (it makes the local CA), "
                "or set tls.ca_file to the servers' CA (tls.enabled=false only on loopback)"
            )
        cert = read_pem(Path(t.client_cert_file), "client certificate") if t.client_cert_file else None
        key = read_pem(Path(t.client_key_file), "client key") if t.client_key_file else None
        return ClientPems(read_pem(ca, "CA certificate"), cert, key, t.server_name)

    @property
    def checkpoints_root(self) -> Path:
        return Path(self.checkpoints_dir).expanduser() if self.checkpoints_dir else self.home / "checkpoints"

    @property
    def registry_checkpoint_roots(self) -> list[Path]:
        return [self.checkpoints_root, *(Path(p).expanduser() for p in self.registry.checkpoint_roots)]

    @property
    def registry_database_url(self) -> str:
        return self.registry.database_url or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def results_database_url(self) -> str:
        return self.batch.results_database_url or f"sqlite:///{self.home / 'results.db'}"

    @property
    def batch_output_dir(self) -> Path:
        return Path(self.batch.output_dir).expanduser() if self.batch.output_dir else self.home / "batch"

    @property
    def batch_inference_address(self) -> str:
        return self.batch.inference_address or self.inference.address

    @property
    def inference_registry_address(self) -> str:
        return self.inference.registry_address or self.registry.address

    @property
    def trainer_jobs_dir(self) -> Path:
        return Path(self.trainer.jobs_dir).expanduser() if self.trainer.jobs_dir else self.home / "trainer-jobs"

    @property
    def trainer_database_url(self) -> str:
        return self.trainer.database_url or f"sqlite:///{self.home / 'trainer.db'}"

    @property
    def trainer_root(self) -> Path:
        return Path(self.trainer.root).expanduser() if self.trainer.root else self.home / "training"

    @property
    def trainer_registry_address(self) -> str:
        return self.trainer.registry_address or self.registry.address

    @property
    def inference_state_file(self) -> Path:
        return Path(self.inference.state_file).expanduser() if self.inference.state_file else self.home / "inference-state.json"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# MTSERVE_* variables that are not settings: the config file's path, and the
# override of mtserve.precision's CPU probe (PROBE_ENV; kept import-free here).
NOT_SETTINGS = frozenset({"MTSERVE_CONFIG", "MTSERVE_CPU_BF16"})


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    # Not pydantic-settings: it drops a MTSERVE_* variable naming no setting (pydantic-settings#985); this refuses it, naming it.
    layer: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"inference.max_wait_ms": 3} -> {"inference": {"max_wait_ms": 3}}; None values are skipped."""
    out: dict[str, Any] = {}
    for dotted, value in flat.items():
        if value is None:
            continue
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def load_settings(
    file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < file < environment < overrides (flags, as dotted keys)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    source = "defaults"
    if file is None and env.get("MTSERVE_CONFIG"):
        file = env["MTSERVE_CONFIG"]
    if file is not None:
        source = str(file)
        loaded = load_yaml(file, "config") or {}
        if not isinstance(loaded, Mapping):
            raise ValidationError(str(file), "must be a mapping of settings", type(loaded).__name__)
        data = _merge(data, loaded)
    env_layer = _env_layer({k: v for k, v in env.items() if k not in NOT_SETTINGS})
    data = _merge(data, env_layer)
    data = _merge(data, _nest(overrides or {}))
    try:
        return Settings.model_validate(data)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        origin = source
        env_name = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
        matches = sorted(n for n in env if n.startswith(env_name) and n not in NOT_SETTINGS)
        if matches and not _nest(overrides or {}).get(str(err["loc"][0])):
            origin = f"environment variable {matches[0]}"
        if err["type"] == "extra_forbidden":
            raise ValidationError(key, f"unknown setting (from {origin})", err.get("input"), show_value=False) from None
        raise ValidationError(key, f"{err['msg']} (from {origin})", err.get("input")) from None
