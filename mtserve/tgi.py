"""Scoring on a text-generation-inference (TGI) server.

A checkpoint of kind `tgi` (mtserve/checkpoints.py) has no weights here: its
model runs on a TGI server. Everything else stays local and shared with the
torch engine: the prompt comes from the one renderer (sent as text, with the
special-token strings of untrusted text defused), label paths from the
checkpoint folder's tokenizer, and the answer from `assemble_prediction`.
Two scoring modes, chosen per checkpoint (`base.mode`):

    grammar  one request per question: a regex grammar alternating the task's
             verbalizers, max_new_tokens=1, details with top_n_tokens. TGI's
             grammar mask is character-level, so the step allows every token
             whose text is a prefix of a verbalizer ("y", "ye", "yes"), and the
             log-probabilities it reports are renormalized over those allowed
             tokens: the ratio of two label tokens stays the model's own. When
             every label is one token, renormalizing the label tokens over the
             labels is exactly the local engine's distribution. top_n_tokens is
             the number of tokens the grammar allows (counted in the
             vocabulary), so every label token is listed. Labels of several
             tokens are refused: TGI masks the later steps too, so the
             unconstrained continuation probabilities the local engine
             multiplies in are not available. The conversation's prefix stays
             in TGI's prefix cache across the tasks scored on it.

    prefill  one request per label path: the prompt followed by the label,
             decoder_input_details=true, max_new_tokens=1. A label's
             log-probability is the sum of its tokens' prompt log-probabilities,
             renormalized over the labels: exact for any label set. Needs a
             server started with --enable-prefill-logprobs (TGI 3 reports none
             without it; detected), and such requests bypass the prefix cache.

Generation tasks decode greedily on the server in either mode.

What is checked, and when: at load and again after the server was
unreachable, /health, then /info (its model_id, and model_sha when the
manifest names one, must be the checkpoint's: else every route to it is
FAILED_PRECONDITION, naming both), then /tokenize on a probe text, which must
give the local tokenizer's ids. In prefill mode every response's prompt
tokens are compared with the local tokenization too.

HTTP. /generate goes through `huggingface_hub.InferenceClient`, the client
TGI's documentation points to (its legacy `text-generation` package pins
huggingface-hub<1, which cannot be installed beside transformers 5). That
client sends through huggingface_hub's process-wide session, whose default
would refuse every request when HF_HUB_OFFLINE=1 (the CLI and the Docker
image set it), trust only the system's CAs, and send the user's cached
Hugging Face token when no token is given. So a session factory is installed
(huggingface_hub's documented hook): requests to the TGI origins in use carry
exactly the configured bearer token or no Authorization header at all, and
skip the Hub's offline guard; every other request keeps huggingface_hub's
own hook; the CA of `inference.tgi.ca_file` is added to the default trust.
/health, /info and /tokenize use that session directly, with our timeout
(the client's own health_check and get_endpoint_info have none).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import InferenceClient, TextGenerationInputGrammarType, TextGenerationOutput, set_client_factory
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError
from huggingface_hub.inference._common import _UNSUPPORTED_TEXT_GENERATION_KWARGS as _UNSUPPORTED_KWARGS
from huggingface_hub.utils import get_session
from huggingface_hub.utils._http import hf_request_event_hook

from mtserve.auth import read_token_file
from mtserve.checkpoints import (
    MANIFEST,
    Manifest,
    check_tgi_base,
    checkpoint_dir,
    read_manifest,
    staging_dir,
    verify_checkpoint,
    write_manifest,
)
from mtserve.config import TgiSettings, is_loopback
from mtserve.engine import assemble_prediction, decode_answer, label_verbalizers
from mtserve.errors import (
    IntegrityError,
    MtserveError,
    OverloadedError,
    PreconditionError,
    UnavailableError,
    ValidationError,
)
from mtserve.inputs import Input, check_task_accepts, validate_input
from mtserve.labels import LabelTrie
from mtserve.predictions import Prediction, Request
from mtserve.prompt import DEFAULT_STYLE, PromptRenderer, RenderedInput, Segments
from mtserve.tasks import Label, Task, Taxonomy, TruncationPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

# Written into the probe: ASCII, Latin-1, CJK and an emoji, so that a server
# tokenizing differently is caught by /tokenize before any answer.
PROBE_TEXT = "Probe: booking #4471 for 2 nights, café au lait, 预订确认 \u2713 \U0001f600"


# -- the HTTP session ------------------------------------------------------------------------
_SESSION_LOCK = threading.Lock()
_TOKENS: dict[str, str | None] = {}  # TGI origin -> the bearer token it gets (None: no Authorization header)
_CA_FILES: list[str] = []
_factory_installed = False


def _origin(url: str | httpx2.URL) -> str:
    u = httpx2.URL(str(url))
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{u.host}:{port}"


def _route_request(request: httpx2.Request) -> None:
    """The session's request hook. A TGI origin gets exactly its configured
    bearer token or no Authorization header, whatever huggingface_hub put
    there (it adds the cached Hub token when given none), and is not Hub
    traffic, so HF_HUB_OFFLINE does not stop it. Anything else is Hub
    traffic and keeps huggingface_hub's own hook."""
    origin = _origin(request.url)
    if origin in _TOKENS:
        token = _TOKENS[origin]
        if token:
            request.headers["authorization"] = f"Bearer {token}"
        elif "authorization" in request.headers:
            del request.headers["authorization"]
        return
    hf_request_event_hook(request)


def _ssl_context() -> Any:
    ctx = httpx2.create_ssl_context()
    for ca in _CA_FILES:
        ctx.load_verify_locations(cafile=ca)
    return ctx


def _make_session() -> httpx2.Client:
    # As huggingface_hub's default client (redirects, no client-wide timeout:
    # every call here passes its own), plus the hook and the CAs above.
    return httpx2.Client(event_hooks={"request": [_route_request]}, follow_redirects=True, timeout=None, verify=_ssl_context())


def use_endpoint(endpoint: str, token: str | None, ca_file: str | None) -> None:
    """Route `endpoint`'s origin through the session as above; install the
    session factory once (again when a new CA file is added)."""
    global _factory_installed
    with _SESSION_LOCK:
        renew = not _factory_installed
        if ca_file:
            path = str(Path(ca_file).expanduser())
            if path not in _CA_FILES:
                try:
                    httpx2.create_ssl_context().load_verify_locations(cafile=path)
                except (OSError, ValueError) as exc:
                    raise PreconditionError(f"inference.tgi.ca_file: cannot read the CA {path} ({exc})") from None
                _CA_FILES.append(path)
                renew = True
        _TOKENS[_origin(endpoint)] = token
        if renew:
            set_client_factory(_make_session)
            _factory_installed = True


# -- the client ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TgiInfo:
    """What a server's /info says, of what is used here."""

    model_id: str
    model_sha: str | None
    max_input_tokens: int | None
    max_total_tokens: int | None
    version: str

    @classmethod
    def from_json(cls, data: Any) -> TgiInfo:
        if not isinstance(data, dict) or not isinstance(data.get("model_id"), str):
            raise PreconditionError(f"/info did not answer a JSON object with a model_id (got {str(data)[:120]!r}): is this a TGI server?")

        def number(*keys: str) -> int | None:
            for key in keys:
                if isinstance(data.get(key), int):
                    return int(data[key])
            return None

        sha = data.get("model_sha")
        # TGI 2.1 renamed max_input_length to max_input_tokens.
        return cls(data["model_id"], sha if isinstance(sha, str) else None, number("max_input_tokens", "max_input_length"),
                   number("max_total_tokens"), str(data.get("version", "?")))


class TgiClient:
    """HTTP to one TGI server: /generate through InferenceClient, the rest
    through the same session; retries and the mapping of failures to
    domain errors (429 -> OverloadedError, 5xx and connection errors ->
    UnavailableError, 422 -> ValidationError naming the parameter)."""

    def __init__(self, endpoint: str, settings: TgiSettings, *, token: str | None, name: str = ""):
        self.endpoint = endpoint.rstrip("/")
        self.settings = settings
        self.name = name
        self.has_token = bool(token)
        use_endpoint(self.endpoint, token, settings.ca_file)
        # With no token, InferenceClient would put the cached Hub token in an
        # Authorization header; a header set to None is dropped before sending
        # (the session hook removes it too).
        headers = None if token else cast(dict[str, str], {"authorization": None})
        self._client = InferenceClient(model=self.endpoint, token=token or None, timeout=settings.timeout_seconds, headers=headers)

    def where(self, what: str = "") -> str:
        return f"the TGI server at {self.endpoint}" + (f" ({what})" if what else "")

    # -- calls ---------------------------------------------------------------------------
    def generate(self, prompt: str, **parameters: Any) -> TextGenerationOutput:
        """POST / with details=true; refuses an answer without details (what
        InferenceClient returns after it silently retried without parameters,
        on a server that said they were not used: not a TGI server)."""

        def call() -> TextGenerationOutput:
            out = self._client.text_generation(prompt, model=self.endpoint, details=True, **parameters)
            if not isinstance(out, TextGenerationOutput) or out.details is None:
                # InferenceClient remembers, for the life of the process, the parameters a server once said it does not use,
                # and drops them from every later call to it: forget that, so the server is asked properly again.
                _UNSUPPORTED_KWARGS.pop(self.endpoint, None)
                raise PreconditionError(
                    f"{self.where('POST /')} answered without `details`: it ignores TGI's parameters, so it is not a "
                    "text-generation-inference server (or sits behind a proxy that drops them); the TGI backend needs TGI's /generate"
                )
            return out

        return self._retrying(call, "POST /")

    def health(self) -> int:
        """The status /health answers (TGI: 200 when it can generate, 503 when not)."""
        return self._retrying(lambda: self._get("/health"), "GET /health").status_code

    def info(self) -> TgiInfo:
        response = self._retrying(lambda: self._get("/info"), "GET /info")
        self._raise_for_status(response, "GET /info")
        return TgiInfo.from_json(_json(response))

    def tokenize(self, text: str) -> list[int] | None:
        """The server's token ids for `text` (its /tokenize), or None when it
        has no such route (TGI before 2.0)."""
        response = self._retrying(
            lambda: get_session().post(self.endpoint + "/tokenize", json={"inputs": text}, timeout=self.settings.timeout_seconds),
            "POST /tokenize",
        )
        if response.status_code in (404, 405):
            return None
        self._raise_for_status(response, "POST /tokenize")
        data = _json(response)
        if not isinstance(data, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in data):
            raise PreconditionError(f"{self.where('POST /tokenize')} did not answer a list of tokens (got {str(data)[:120]!r})")
        return [int(t["id"]) for t in data]

    def _get(self, path: str) -> httpx2.Response:
        return get_session().get(self.endpoint + path, timeout=self.settings.timeout_seconds)

    # -- retries and errors ----------------------------------------------------------------
    def _retrying(self, call: Callable[[], T], what: str) -> T:
        s = self.settings
        for attempt in range(s.retries + 1):
            try:
                return call()
            except Exception as exc:  # mapped below to a domain error, never swallowed
                error, retry = self._failure(exc, what)
                if not retry or attempt == s.retries:
                    if error is exc:
                        raise
                    raise error from exc
                delay = min(s.backoff_max_seconds, s.backoff_initial_seconds * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("%s: %s; retry %d of %d in %.2fs", self.name or self.endpoint, error, attempt + 1, s.retries, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _raise_for_status(self, response: httpx2.Response, what: str) -> None:
        if response.status_code >= 400:
            error, _ = self.status_error(response.status_code, _error_text(response), what)
            raise error

    def _failure(self, exc: BaseException, what: str) -> tuple[MtserveError, bool]:
        """The domain error for a failed call, and whether to try it again."""
        where = self.where(what)
        if isinstance(exc, MtserveError):
            return exc, False
        timeout = exc.__cause__ if isinstance(exc, InferenceTimeoutError) else exc
        if isinstance(timeout, httpx2.TimeoutException):
            if isinstance(timeout, httpx2.ConnectTimeout):
                return UnavailableError(f"{where}: cannot connect within {self.settings.timeout_seconds}s"), True
            return UnavailableError(f"{where}: no answer within {self.settings.timeout_seconds}s (inference.tgi.timeout_seconds)"), False
        if isinstance(exc, httpx2.TransportError):
            text = str(exc) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in text:
                return UnavailableError(f"{where}: its TLS certificate is not trusted ({text}); set inference.tgi.ca_file to the CA that signed it"), False
            return UnavailableError(f"{where}: cannot reach it ({type(exc).__name__}: {text})"), True
        response = None
        if isinstance(exc, TextGenerationError) and isinstance(exc.__cause__, HfHubHTTPError):
            response = exc.__cause__.response
        elif isinstance(exc, HfHubHTTPError):
            response = exc.response
        if response is not None:
            return self.status_error(response.status_code, str(exc) if isinstance(exc, TextGenerationError) else _error_text(response), what)
        log.error("%s: unexpected failure", where, exc_info=exc)
        return MtserveError(f"{where}: {type(exc).__name__}: {exc}"), False

    def status_error(self, status: int, message: str, what: str) -> tuple[MtserveError, bool]:
        where = self.where(what)
        if status == 429:
            return OverloadedError(f"{where} is overloaded (429: {message}); retry with backoff"), True
        if status in (500, 502, 503, 504):
            return UnavailableError(f"{where} failed ({status}: {message})"), True
        if status == 424:  # TGI: the generation itself failed (e.g. out of GPU memory); not retried
            return UnavailableError(f"{where} could not generate (424: {message})"), False
        if status == 422:
            return _validation_error(message, where, self.settings), False
        if status in (401, 403):
            configured = "the token in inference.tgi.token_file" if self.has_token else "a token, and inference.tgi.token_file sets none"
            return PreconditionError(f"{where} refused the credentials ({status}: {message}): it expects {configured} (TGI's --api-key)"), False
        if status == 413:
            return ValidationError("input", f"the request is over the payload limit of {where} (its --payload-limit)", status, show_value=False), False
        return MtserveError(f"{where} answered {status}: {message}"), False


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def _error_text(response: httpx2.Response) -> str:
    """TGI's `{error, error_type}` body, or the start of whatever came."""
    try:
        response.read()
        data = response.json()
    except Exception:  # noqa: BLE001 - a body that is not JSON (or was not kept) is described, not parsed
        try:
            return response.text[:200] or response.reason_phrase
        except Exception:  # noqa: BLE001
            return response.reason_phrase
    if isinstance(data, dict) and data.get("error"):
        return str(data["error"])
    return str(data)[:200]


def _validation_error(message: str, where: str, settings: TgiSettings) -> ValidationError:
    """TGI's 422 names the parameter in backquotes: `top_n_tokens` must be ..."""
    named = re.search(r"`([a-z_]+)`", message)
    parameter = named.group(1) if named else "request"
    hint = ""
    if parameter == "top_n_tokens":
        hint = (f"; the server's --max-top-n-tokens is below inference.tgi.max_top_n_tokens ({settings.max_top_n_tokens}): "
                "start it with a higher --max-top-n-tokens, or lower the setting to match")
    elif "prefill" in message.lower():
        hint = "; prefill mode needs the server started with --enable-prefill-logprobs"
    return ValidationError(f"tgi.{parameter}", f"{where} refused the request: {message}{hint}", parameter, show_value=False)


# -- a checkpoint served by TGI --------------------------------------------------------------
class TgiServer:
    """One server as a checkpoint names it: checks that it serves that
    model, at load and again after it was unreachable (it may have come back
    with another model), and keeps what its /info says."""

    def __init__(self, client: TgiClient, manifest: Manifest, probe: tuple[str, list[int]]):
        base = manifest.base or {}
        self.client = client
        self.checkpoint_id = manifest.id
        self.model_id = base["model_id"]
        self.model_sha = base.get("model_sha")
        self.probe = probe
        self.info: TgiInfo | None = None
        self._lock = threading.Lock()

    def check(self) -> TgiInfo:
        """PreconditionError when the server is not the checkpoint's model (or
        tokenizes otherwise), UnavailableError when it cannot answer now."""
        with self._lock:
            if self.info is not None:
                return self.info
            where = self.client.where()
            status = self.client.health()
            if status in (401, 403):
                raise self.client.status_error(status, "on /health", "GET /health")[0]
            if status != 200:
                raise UnavailableError(f"{where} is not healthy (/health answered {status}): it cannot generate yet")
            info = self.client.info()
            if info.model_id != self.model_id:
                raise PreconditionError(
                    f"{where} serves model {info.model_id!r}, but checkpoint {self.checkpoint_id!r} names model {self.model_id!r} "
                    "(/info model_id); point the checkpoint at the server that runs it"
                )
            if self.model_sha and info.model_sha != self.model_sha:
                raise PreconditionError(
                    f"{where} serves {info.model_id!r} at revision {info.model_sha!r}, but checkpoint {self.checkpoint_id!r} "
                    f"names revision {self.model_sha!r} (/info model_sha)"
                )
            text, expected = self.probe
            ids = self.client.tokenize(text)
            if ids is None:
                log.info("%s has no /tokenize; the tokenizer match is checked on prefill answers only", where)
            elif ids != expected:
                raise PreconditionError(
                    f"{where} tokenizes differently from the tokenizer in checkpoint {self.checkpoint_id!r} "
                    f"({_first_difference(ids, expected)}): the checkpoint folder must ship the served model's tokenizer files"
                )
            log.info("%s serves %s (revision %s, TGI %s) for checkpoint %s", where, info.model_id, info.model_sha, info.version, self.checkpoint_id)
            self.info = info
            return info

    def forget(self) -> None:
        """Check again before the next batch."""
        with self._lock:
            self.info = None


@dataclass
class LoadedTgi:
    """What `load_tgi_checkpoint` returns, in the place of a LoadedModel."""

    manifest: Manifest
    path: Path
    tokenizer: Any
    server: TgiServer
    strip: str = ""  # text the chat template starts with that the server's tokenizer adds itself (a BOS)
    model: None = None  # no local weights

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def mode(self) -> str:
        return (self.manifest.base or {})["mode"]


def load_tgi_checkpoint(folder: str | Path, settings: TgiSettings | None = None, *, verify: bool = True) -> LoadedTgi:
    """A `tgi` checkpoint: its files verified, its tokenizer loaded, its
    server checked. A server that does not answer yet is checked again
    before the first batch (TGI takes minutes to load a large model); one
    that serves another model is a load failure."""
    from mtserve.models import load_tokenizer

    settings = settings or TgiSettings()
    folder = Path(folder)
    manifest = verify_checkpoint(folder) if verify else read_manifest(folder)
    if manifest.kind != "tgi":
        raise ValidationError("kind", f"checkpoint {manifest.id!r} is not served by TGI", manifest.kind)
    if not (folder / "tokenizer_config.json").is_file():
        raise IntegrityError(
            f"checkpoint {manifest.id!r}: a TGI checkpoint ships the served model's tokenizer files, and tokenizer_config.json is missing "
            "(`mtserve models import-tgi` copies them)"
        )
    tokenizer = load_tokenizer(folder)
    PromptRenderer(tokenizer)  # refuses a tokenizer without a usable chat template, before any request
    strip = _leading_specials(tokenizer)
    probe_text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE_TEXT}], tokenize=False, add_generation_prompt=True)
    probe_text = probe_text[len(strip):] if strip and probe_text.startswith(strip) else probe_text
    probe_ids = list(tokenizer(probe_text, add_special_tokens=True)["input_ids"])
    endpoint = (manifest.base or {})["endpoint"]
    token = read_token_file(Path(settings.token_file).expanduser()) if settings.token_file else None
    parts = urlsplit(endpoint)
    if token and parts.scheme == "http" and not is_loopback(f"{parts.hostname}:{parts.port or 80}"):
        log.warning("checkpoint %s: the bearer token goes to %s over plain HTTP; put TLS in front of TGI", manifest.id, endpoint)
    server = TgiServer(TgiClient(endpoint, settings, token=token, name=manifest.id), manifest, (probe_text, probe_ids))
    try:
        server.check()
    except UnavailableError as exc:
        log.warning("checkpoint %s: %s; checking again before the first request", manifest.id, exc)
    return LoadedTgi(manifest, folder, tokenizer, server, strip)


def _leading_specials(tokenizer: Any) -> str:
    """TGI tokenizes its input with add_special_tokens=true; the renderer
    never adds them. A tokenizer that puts a BOS before every input is fine
    when the chat template starts with that BOS (its text is then not sent);
    anything else would shift what the server scores, and is refused."""
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    framed = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    start = next((k for k in range(len(framed) - len(plain) + 1) if framed[k:k + len(plain)] == plain), None)
    if start is None:
        raise ValidationError("tokenizer", "adds special tokens that change the input's own tokens; the TGI backend cannot match them", framed)
    head, tail = framed[:start], framed[start + len(plain):]
    if tail:
        raise ValidationError("tokenizer", f"appends {tokenizer.convert_ids_to_tokens(tail)} to every input, after which TGI would score the answer", tail)
    if not head:
        return ""
    text = tokenizer.decode(head)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True)
    if not rendered.startswith(text):
        raise ValidationError(
            "tokenizer",
            f"puts {text!r} before every input and the chat template does not start with it, so TGI would score a prompt the local renderer never makes",
            text,
        )
    return str(text)


def make_tgi_checkpoint(
    checkpoints_root: str | Path,
    checkpoint_id: str,
    *,
    endpoint: str,
    model_id: str,
    mode: str,
    tokenizer_folder: str | Path,
    model_sha: str | None = None,
    description: str = "",
) -> Path:
    """A checkpoint folder for a model served by TGI: the model's tokenizer
    files (from a local folder: a checkpoint or a Hugging Face model folder)
    and a manifest of kind tgi. Nothing is downloaded and no server is asked:
    the inference service checks the server when it loads the checkpoint."""
    from transformers import AutoTokenizer

    base = {"endpoint": endpoint, "model_id": model_id, "mode": mode}
    if model_sha is not None:
        base["model_sha"] = model_sha
    check_tgi_base(base)
    source = Path(tokenizer_folder).expanduser()
    if not (source / "tokenizer_config.json").is_file():
        raise ValidationError("tokenizer", "is not a folder with the model's tokenizer files (no tokenizer_config.json)", str(source))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValidationError("tokenizer", f"cannot load the tokenizer ({first_line})", str(source)) from None
    PromptRenderer(tokenizer)  # the refusals the service would give, now: no usable chat template,
    _leading_specials(tokenizer)  # special tokens TGI would add that the renderer cannot match
    # The model on the server is asked in the format it was trained in: a
    # trained mtserve checkpoint's, carried over; a plain model folder's, today's.
    trained = read_manifest(source) if (source / MANIFEST).is_file() else None
    style = trained.prompt_style if trained else DEFAULT_STYLE
    training: dict[str, Any] = {"prompt_format": style.format}
    if style.compact:  # recorded only when set, as the trainer does; its tasks are the markers it learnt
        training["suffixes"] = style.suffixes
    final = checkpoint_dir(checkpoints_root, checkpoint_id)
    with staging_dir(final) as tmp:
        tokenizer.save_pretrained(tmp)
        write_manifest(
            tmp, id=checkpoint_id, kind="tgi", base=base, training=training, tasks=trained.tasks if trained else (),
            description=description or f"{model_id} served by TGI at {endpoint} ({mode} mode)",
        )
    return final


# -- the engine ------------------------------------------------------------------------------
@dataclass
class _Call:
    """One HTTP request: a question (grammar), one label path (prefill) or a generation."""

    kind: str  # grammar | prefill | generate
    text: str
    parameters: dict[str, Any]
    label_ids: tuple[int, ...] = ()  # grammar: each label's token
    expected: tuple[int, ...] = ()  # prefill: the prompt and label as the server must tokenize them
    label_tokens: int = 0  # prefill: how many of the last prompt tokens are the label
    result: Any = None
    error: MtserveError | None = None


@dataclass
class _Job:
    """The calls one request needs, grouped per question (one per asked label for a multi-label task)."""

    index: int
    request: Request
    rendered: RenderedInput
    prompt_tokens: int = 0  # the longest question's prompt as the server tokenizes it
    questions: list[list[_Call]] = field(default_factory=list)


@dataclass(frozen=True)
class _GrammarPlan:
    regex: str
    top_n: int
    label_ids: tuple[int, ...]


class TgiEngine:
    """The `ScoringBackend` of a TGI-served checkpoint (see the module
    docstring). Like Engine, one thread at a time (the batcher's); the HTTP
    requests of a batch run concurrently, without touching the tokenizer."""

    def __init__(self, loaded: LoadedTgi, policy: TruncationPolicy | None = None, *, name: str = "", settings: TgiSettings | None = None):
        self.loaded = loaded
        self.server = loaded.server
        self.tokenizer = loaded.tokenizer
        self.renderer = PromptRenderer(loaded.tokenizer, policy, style=loaded.manifest.prompt_style)
        self.mode = loaded.mode
        self.name = name or loaded.id
        self.settings = settings or TgiSettings()
        self._head_ids: tuple[int, ...] = tuple(self.renderer.encode_template(loaded.strip)) if loaded.strip else ()
        self._tries: dict[Any, LabelTrie] = {}
        self._plans: dict[Any, _GrammarPlan] = {}
        self._label_views: dict[Any, list[tuple[str, tuple[int, ...]]]] = {}
        self._token_index: dict[bytes, list[int]] | None = None

    # -- tasks ---------------------------------------------------------------------------
    def _key(self, task: Task) -> Any:
        return ("multilabel", None) if task.taxonomy is Taxonomy.MULTILABEL else (task.name, task)

    def trie(self, task: Task) -> LabelTrie:
        key = self._key(task)
        trie = self._tries.get(key)
        if trie is None:
            names, verbs = label_verbalizers(task)
            trie = LabelTrie.build(names, verbs, self.renderer.encode_text, self.renderer.end_of_answer_id, f"task({task.name}).labels")
            self._tries[key] = trie
        return trie

    def validate_task(self, task: Task) -> None:
        """Label collisions (as the local engine), and in grammar mode what
        one generation step can score exactly."""
        if task.is_generation:
            return
        self.trie(task)
        if self.mode == "grammar":
            self._grammar_plan(task)

    def _grammar_plan(self, task: Task) -> _GrammarPlan:
        key = self._key(task)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        trie = self.trie(task)
        _, verbs = label_verbalizers(task)
        where = f"task({task.name}).labels"
        for i, (verb, path) in enumerate(zip(verbs, trie.paths)):
            if len(path) > 1:
                label = f"{where}[{i}].verbalizer" if task.taxonomy is not Taxonomy.MULTILABEL else f"{where} (the {verb!r} answer)"
                raise ValidationError(
                    label,
                    f"is {len(path)} tokens {self.tokenizer.convert_ids_to_tokens(list(path))}; the TGI grammar mode scores one "
                    "generation step, exact only when every label is one token: serve this task from a TGI checkpoint in prefill "
                    "mode, or give it single-token verbalizers",
                    verb,
                )
        index = self._tokens_by_bytes()
        allowed: set[int] = set()
        for verb in verbs:
            data = verb.encode("utf-8")
            for k in range(1, len(data) + 1):
                allowed.update(index.get(data[:k], ()))
        label_ids = tuple(path[0] for path in trie.paths)
        if not set(label_ids) <= allowed:
            raise ValidationError(where, "cannot tell which tokens TGI's grammar allows with this tokenizer; use prefill mode", verbs)
        cap = self.settings.max_top_n_tokens
        if len(allowed) > cap:
            raise ValidationError(
                where,
                f"grammar mode needs top_n_tokens={len(allowed)} (the {len(label_ids)} label tokens and the {len(allowed) - len(label_ids)} "
                f"partial-label tokens TGI's grammar also allows), over inference.tgi.max_top_n_tokens={cap}: start the TGI server with "
                f"--max-top-n-tokens {len(allowed)} or more and set inference.tgi.max_top_n_tokens to match, or use prefill mode",
                len(allowed),
            )
        plan = _GrammarPlan("(" + "|".join(_regex_literal(v) for v in verbs) + ")", len(allowed), label_ids)
        self._plans[key] = plan
        return plan

    def _tokens_by_bytes(self) -> dict[bytes, list[int]]:
        if self._token_index is None:
            self._token_index = token_bytes_index(self.tokenizer)
        return self._token_index

    def _labels_as_sent(self, task: Task) -> list[tuple[str, tuple[int, ...]]]:
        """Prefill mode: each label path as text to append to the prompt, and
        its tokens as the server will see them (special tokens on)."""
        key = self._key(task)
        views = self._label_views.get(key)
        if views is None:
            trie = self.trie(task)
            end = self.renderer.end_of_answer_id
            views = []
            for verb, path in zip(label_verbalizers(task)[1], trie.paths):
                text = self.renderer.defuse(verb)
                ids = tuple(self.renderer.encode_template(text))
                if path[-1] == end and len(path) == len(self.renderer.encode_text(verb)) + 1:  # the trie ended it: a prefix of another label
                    text += self.tokenizer.convert_ids_to_tokens(end)
                    ids += (end,)
                views.append((text, ids))
            self._label_views[key] = views
        return views

    # -- scoring -------------------------------------------------------------------------
    def predict(self, requests: Sequence[Request]) -> list[Prediction | MtserveError]:
        """Score a batch; a bad request gets its error in its slot, the others are scored."""
        requests = list(requests)
        if not requests:
            return []
        try:
            info = self.server.check()
        except MtserveError as exc:
            return [exc for _ in requests]
        results: list[Prediction | MtserveError | None] = [None] * len(requests)
        rendered: dict[tuple[Input, bool], RenderedInput] = {}
        jobs: list[_Job] = []
        for i, req in enumerate(requests):
            try:
                validate_input(req.input)
                check_task_accepts(req.task, req.input)
                key = (req.input, req.truncate)
                if key not in rendered:
                    rendered[key] = self.renderer.render_input(req.input, truncate=req.truncate)
                rin = rendered[key]
                asks: Sequence[Label | None] = req.task.labels if req.task.taxonomy is Taxonomy.MULTILABEL else (None,)
                job = _Job(i, req, rin)
                for ask in asks:
                    seg = self.renderer.render(req.task, req.input, ask=ask, rendered_input=rin)
                    prompt_tokens, calls = self._calls(req.task, seg, info)
                    job.prompt_tokens = max(job.prompt_tokens, prompt_tokens)
                    job.questions.append(calls)
                jobs.append(job)
            except MtserveError as exc:
                results[i] = exc
            except Exception as exc:
                log.error("cannot prepare request %d (task %s)", i, req.task.name, exc_info=exc)
                results[i] = MtserveError(f"task {req.task.name!r}: the request could not be prepared ({type(exc).__name__})")
        self._send_all([call for job in jobs for question in job.questions for call in question])
        for job in jobs:
            results[job.index] = self._answer(job)
        return results  # type: ignore[return-value]

    def _calls(self, task: Task, seg: Segments, info: TgiInfo) -> tuple[int, list[_Call]]:
        """The prompt's length as the server will tokenize it (the local
        engine's, unless untrusted text held special-token strings, which are
        sent defused), and the requests for one question."""
        text = seg.text
        if self.loaded.strip:
            if not text.startswith(self.loaded.strip):
                raise ValidationError("prompt", f"does not start with {self.loaded.strip!r}, which the server's tokenizer adds", text[:40])
            text = text[len(self.loaded.strip):]
        prompt_ids = self._head_ids + tuple(self.renderer.encode_template(text))
        if task.is_generation:
            self._check_length(len(prompt_ids), task.max_new_tokens, info)
            return len(prompt_ids), [_Call("generate", text, {"max_new_tokens": task.max_new_tokens})]
        if self.mode == "grammar":
            plan = self._grammar_plan(task)
            self._check_length(len(prompt_ids), 1, info)
            grammar = TextGenerationInputGrammarType(type="regex", value=plan.regex)
            return len(prompt_ids), [_Call("grammar", text, {"grammar": grammar, "max_new_tokens": 1, "top_n_tokens": plan.top_n}, label_ids=plan.label_ids)]
        calls = []
        for label_text, label_ids in self._labels_as_sent(task):
            self._check_length(len(prompt_ids) + len(label_ids), 1, info)
            calls.append(_Call("prefill", text + label_text, {"decoder_input_details": True, "max_new_tokens": 1},
                               expected=prompt_ids + label_ids, label_tokens=len(label_ids)))
        return len(prompt_ids), calls

    def _check_length(self, prompt_tokens: int, new_tokens: int, info: TgiInfo) -> None:
        """The server's limits, refused here with the numbers (TGI's own 422 says less)."""
        where = self.server.client.where()
        if info.max_input_tokens is not None and prompt_tokens > info.max_input_tokens:
            raise ValidationError(
                "input", f"renders to {prompt_tokens} prompt tokens, {where} takes at most {info.max_input_tokens} (its --max-input-tokens)",
                prompt_tokens, show_value=False)
        if info.max_total_tokens is not None and prompt_tokens + new_tokens > info.max_total_tokens:
            raise ValidationError(
                "input", f"renders to {prompt_tokens} prompt tokens + {new_tokens} new, {where} allows {info.max_total_tokens} in all "
                "(its --max-total-tokens)", prompt_tokens, show_value=False)

    def _send_all(self, calls: list[_Call]) -> None:
        if not calls:
            return
        if len(calls) == 1:
            self._send(calls[0])
        else:
            with ThreadPoolExecutor(max_workers=min(len(calls), self.settings.max_concurrency), thread_name_prefix=f"tgi-{self.name}") as pool:
                list(pool.map(self._send, calls))
        if any(isinstance(c.error, UnavailableError) for c in calls):
            self.server.forget()  # it may come back serving another model: check before the next batch

    def _send(self, call: _Call) -> None:
        try:
            out = self.server.client.generate(call.text, **call.parameters)
            call.result = self._read(call, out)
        except MtserveError as exc:
            call.error = exc
        except Exception as exc:  # a bug: the request gets an error, the batch goes on
            log.error("%s: cannot read the answer to a %s request", self.server.client.where(), call.kind, exc_info=exc)
            call.error = MtserveError(f"{self.server.client.where()}: unreadable answer ({type(exc).__name__})")

    def _read(self, call: _Call, out: TextGenerationOutput) -> Any:
        details = out.details
        assert details is not None  # TgiClient.generate refuses answers without
        where = self.server.client.where()
        if call.kind == "generate":
            return [t.id for t in details.tokens]
        if call.kind == "grammar":
            tops = details.top_tokens
            if not tops or not tops[0]:
                raise PreconditionError(f"{where} answered without top_tokens: it ignores top_n_tokens, so grammar mode cannot score on it")
            # huggingface_hub parses the nested list as plain dicts, not as token objects.
            table = {_get(t, "id"): _get(t, "logprob") for t in tops[0]}
            missing = [i for i in call.label_ids if i not in table]
            if missing:
                raise MtserveError(
                    f"{where} did not list the label token(s) {self.tokenizer.convert_ids_to_tokens(missing)} among the "
                    f"{len(table)} top tokens it returned (top_n_tokens={call.parameters['top_n_tokens']}): its grammar allows "
                    "other tokens than counted here; use prefill mode for this checkpoint"
                )
            return [float(table[i]) for i in call.label_ids]
        prefill = details.prefill or []
        tail = prefill[-call.label_tokens:] if len(prefill) > call.label_tokens else []
        if not tail or any(t.logprob is None or math.isnan(t.logprob) for t in tail):
            raise PreconditionError(
                f"{where} reported no prompt log-probabilities: prefill mode needs the server started with "
                "--enable-prefill-logprobs (TGI 3 turns them off by default), or use grammar mode"
            )
        ids = tuple(t.id for t in prefill)
        if ids != call.expected:
            raise PreconditionError(
                f"{where} tokenized the prompt differently from checkpoint {self.loaded.id!r}'s tokenizer "
                f"({_first_difference(list(ids), list(call.expected))}): the checkpoint folder must ship the served model's tokenizer files"
            )
        return math.fsum(float(t.logprob) for t in tail)

    def _answer(self, job: _Job) -> Prediction | MtserveError:
        for question in job.questions:
            for call in question:
                if call.error is not None:
                    return call.error
        task = job.request.task
        prompt_tokens = job.prompt_tokens
        if task.is_generation:
            end = self.renderer.end_of_answer_id
            ids = list(job.questions[0][0].result)
            if end in ids:  # the server stops at its own EOS; the answer ends at the renderer's end of answer
                ids = ids[: ids.index(end) + 1]
            text = decode_answer(self.tokenizer, ids, end)
            return assemble_prediction(task, prompt_tokens=prompt_tokens, truncated=job.rendered.truncated, text=text)
        if self.mode == "grammar":
            totals = [question[0].result for question in job.questions]
        else:
            totals = [[call.result for call in question] for question in job.questions]
        return assemble_prediction(task, prompt_tokens=prompt_tokens, truncated=job.rendered.truncated, label_logprobs=totals)


# -- token texts, as a byte-level grammar sees them ------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: byte -> the character that stands for it in token strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def token_bytes_index(tokenizer: Any) -> dict[bytes, list[int]]:
    """Every ordinary (not special) token's bytes -> the token ids with them:
    byte-level BPE tokens through GPT-2's alphabet, SentencePiece `▁` as a
    space and `<0xNN>` byte-fallback tokens as their byte."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    index: dict[bytes, list[int]] = {}
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token is None or i in special:
            continue
        if byte_level and all(c in decoder for c in token):
            data = bytes(decoder[c] for c in token)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            data = bytes([int(token[3:5], 16)])
        else:
            data = token.replace("\u2581", " ").encode("utf-8")
        if data:
            index.setdefault(data, []).append(i)
    return index


_REGEX_SPECIALS = frozenset("\\.^$|?*+()[]{}")


def _regex_literal(text: str) -> str:
    """`text` as a regex matching itself: only the metacharacters escaped, so
    that TGI's regex dialect (outlines) reads it as Python's `re` would."""
    return "".join("\\" + c if c in _REGEX_SPECIALS else c for c in text)


def _get(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, dict) else getattr(item, name)


def _first_difference(got: list[int], expected: list[int]) -> str:
    k = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return f"{len(got)} tokens against {len(expected)} here, first difference at token {k}: server {got[k:k + 3]}, here {expected[k:k + 3]}"
