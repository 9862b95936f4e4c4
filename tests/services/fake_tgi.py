"""A text-generation-inference server for tests, over real HTTP on loopback.

A real TGI cannot run here (it needs its Rust router, its Python shards and
usually a GPU), so this is the one stand-in the TGI backend's tests use:
mtserve/tgi.py is tested against TGI's protocol, not against a running TGI.
It implements what the backend relies on from TGI 3's documentation and
source, from a transformers model's raw logits and its tokenizer (never from
mtserve's engine or renderer):

* POST / (a list, as TGI's compat route) and POST /generate (an object), with
  {inputs, parameters}. The input is tokenized as TGI does: special-token
  strings are special tokens, and the tokenizer's own special tokens are added.
  Greedy decoding, stopping at the tokenizer's EOS or max_new_tokens.
* `grammar: {type: regex}`: at each step only tokens whose text keeps the
  regex (partially) matchable are allowed, character-level like TGI's
  outlines mask ("y" and "ye" of "yes" too); EOS only once it fully matches.
  Generated-token log-probabilities and `top_tokens` are computed after the
  mask, renormalized over the allowed tokens.
* `top_n_tokens` capped at `max_top_n_tokens` (422 beyond, TGI's message);
  input over `max_input_tokens` or input + new over `max_total_tokens`: 422.
* `decoder_input_details`: `details.prefill` lists the prompt tokens, with
  log-probabilities only when started with enable_prefill_logprobs (TGI 3
  turns them off by default; here they are then null).
* GET /info, GET /health (200, or 503 when `healthy` is false), POST /tokenize.
* A bearer check (401) when given an api_key, and injected faults: the next
  POSTs can answer 429, 503, 500, ... with TGI's {error, error_type} body, or
  drop the connection without answering.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import torch
from transformers import DynamicCache

try:
    import regex as _regex
except ImportError:  # pragma: no cover - the `regex` package comes with transformers
    _regex = None

ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation", 503: "unhealthy"}


class FakeTgi:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str = "acme/tiny",
        model_sha: str | None = "0123456789abcdef0123456789abcdef01234567",
        max_top_n_tokens: int = 5,
        enable_prefill_logprobs: bool = False,
        api_key: str | None = None,
        max_input_tokens: int = 4096,
        max_total_tokens: int = 4608,
        tls: ssl.SSLContext | None = None,
        tokenize_route: bool = True,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id, self.model_sha = model_id, model_sha
        self.max_top_n_tokens = max_top_n_tokens
        self.enable_prefill_logprobs = enable_prefill_logprobs
        self.api_key = api_key
        self.max_input_tokens, self.max_total_tokens = max_input_tokens, max_total_tokens
        self.tokenize_route = tokenize_route
        self.healthy = True
        self.faults: deque[int] = deque()  # status codes for the next POSTs; 0: drop the connection, -1: answer slowly
        self.slow_seconds = 1.0
        self.requests: list[dict[str, Any]] = []  # {path, headers, body, input_ids} of every request
        self._lock = threading.Lock()
        self._texts = _token_texts(tokenizer)
        self._special = set(tokenizer.all_special_ids)
        self._allowed: dict[tuple[str, str], list[int]] = {}
        self._connections: list[Any] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                fake._connections.append(self.connection)

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # dropped connections
        scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        host = "localhost" if tls is not None else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fake-tgi", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Gone for real: kept-alive connections are cut too, not only the listening socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for conn in self._connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def fail_next(self, *statuses: int) -> None:
        """The next POSTs answer these statuses (0: the connection is dropped, -1: the answer comes after slow_seconds)."""
        self.faults.extend(statuses)

    @property
    def generate_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] in ("/", "/generate")]

    # -- HTTP ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        record: dict[str, Any] = {"path": h.path, "method": method, "headers": dict(h.headers.items())}
        self.requests.append(record)
        if self.api_key is not None and h.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._send(h, 401, {"error": "Unauthorized", "error_type": "authentication"})
        if method == "GET" and h.path == "/health":
            return self._send(h, 200, None) if self.healthy else self._send(h, 503, {"error": "unhealthy", "error_type": "healthcheck"})
        if method == "GET" and h.path == "/info":
            return self._send(h, 200, {
                "model_id": self.model_id, "model_sha": self.model_sha, "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
                "max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens,
                "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router", "version": "3.3.7",
            })
        if method != "POST" or h.path not in ("/", "/generate", "/tokenize"):
            return self._send(h, 404, {"error": "not found", "error_type": "not_found"})
        if h.path == "/tokenize" and not self.tokenize_route:
            return self._send(h, 404, None)
        body = json.loads(raw or b"{}")
        record["body"] = body
        status = self.faults.popleft() if self.faults and h.path != "/tokenize" else 200
        if status == -1:  # slow: the answer comes, after slow_seconds
            time.sleep(self.slow_seconds)
        elif status == 0:  # no answer at all: a connection error for the client
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return None
        elif status == 400:  # what a plain transformers endpoint says to TGI's parameters
            return self._send(h, 400, {"error": "The following `model_kwargs` are not used by the model: ['details', 'grammar', "
                                                "'top_n_tokens'] (note: typos in the generate arguments will also show up in this list)"})
        elif status != 200:
            return self._send(h, status, {"error": f"injected {status}", "error_type": ERROR_TYPES.get(status, "unknown")})
        ids = list(self.tokenizer(body.get("inputs", ""), add_special_tokens=True)["input_ids"])
        record["input_ids"] = ids
        if h.path == "/tokenize":
            return self._send(h, 200, [{"id": i, "text": self._texts[i], "start": 0, "stop": 0} for i in ids])
        status, answer = self._generate(ids, body.get("parameters") or {})
        if status == 200 and h.path == "/":
            answer = [answer]
        return self._send(h, status, answer)

    def _send(self, h: BaseHTTPRequestHandler, status: int, data: Any) -> None:
        payload = b"" if data is None else json.dumps(data).encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    # -- generation ----------------------------------------------------------------------
    def _generate(self, ids: list[int], p: dict[str, Any]) -> tuple[int, Any]:
        top_n = int(p.get("top_n_tokens") or 0)
        if top_n > self.max_top_n_tokens:
            return 422, {"error": f"Input validation error: `top_n_tokens` must be >= 0 and <= {self.max_top_n_tokens}. Given: {top_n}",
                         "error_type": "validation"}
        max_new = int(p.get("max_new_tokens") or 100)
        if len(ids) > self.max_input_tokens:
            return 422, {"error": f"Input validation error: `inputs` must have less than {self.max_input_tokens} tokens. Given: {len(ids)}",
                         "error_type": "validation"}
        if len(ids) + max_new > self.max_total_tokens:
            return 422, {"error": f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                                  f"Given: {len(ids)} `inputs` tokens and {max_new} `max_new_tokens`", "error_type": "validation"}
        grammar = p.get("grammar")
        pattern = grammar["value"] if grammar and grammar.get("type") == "regex" else None
        with self._lock, torch.inference_mode():
            # `cache=`: transformers 5.24's name for the KV cache argument (as mtserve/engine.py).
            need_prefill = bool(p.get("decoder_input_details")) and self.enable_prefill_logprobs
            out = self.model(input_ids=torch.tensor([ids]), cache=DynamicCache(config=self.model.config), use_cache=True,
                             logits_to_keep=0 if need_prefill else 1)  # 0: every position
            logits = out.logits[0].float()
            prefill = [{"id": ids[0], "text": self._texts[ids[0]], "logprob": None}]
            prompt_logprobs: list[float | None] = [None] * (len(ids) - 1)
            if need_prefill:
                # log p(token k | tokens before it) = its logit at k-1 minus that row's logsumexp
                rows = logits[:-1]
                chosen = rows.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
                prompt_logprobs = (chosen - torch.logsumexp(rows, dim=-1)).tolist()
            for k in range(1, len(ids)):
                prefill.append({"id": ids[k], "text": self._texts[ids[k]], "logprob": prompt_logprobs[k - 1]})
            tokens: list[dict[str, Any]] = []
            tops: list[list[dict[str, Any]]] = []
            generated_ids: list[int] = []
            text = ""
            finish = "length"
            scores = logits[-1]
            for step in range(max_new):
                if pattern is not None:
                    mask = torch.full_like(scores, -math.inf)
                    mask[self._allowed_tokens(pattern, text)] = 0.0
                    scores = scores + mask
                logprobs = torch.log_softmax(scores, dim=-1)
                token = int(torch.argmax(logprobs))
                tokens.append(self._token(token, float(logprobs[token])))
                if top_n:
                    values, indices = torch.topk(logprobs, k=min(top_n, logprobs.numel()))
                    tops.append([self._token(int(i), float(v)) for v, i in zip(values, indices) if math.isfinite(float(v))])
                generated_ids.append(token)
                if token == self.tokenizer.eos_token_id:
                    finish = "eos_token"
                    break
                text += self._texts[token]
                if step + 1 < max_new:
                    out = self.model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
                    scores = out.logits[0, -1].float()
        details: dict[str, Any] = {"finish_reason": finish, "generated_tokens": len(tokens), "seed": None, "tokens": tokens,
                                   "prefill": prefill if p.get("decoder_input_details") else []}
        if top_n:
            details["top_tokens"] = tops
        answer: dict[str, Any] = {"generated_text": self.tokenizer.decode(generated_ids, skip_special_tokens=True)}
        if p.get("details"):
            answer["details"] = details
        return 200, answer

    def _token(self, token: int, logprob: float) -> dict[str, Any]:
        return {"id": token, "text": self._texts[token], "logprob": logprob, "special": token in self._special}

    def _allowed_tokens(self, pattern: str, text: str) -> list[int]:
        """Tokens after which the text can still become a match (EOS: once it is one)."""
        key = (pattern, text)
        if key not in self._allowed:
            allowed = [i for i, piece in enumerate(self._texts) if piece and i not in self._special and _partial(pattern, text + piece)]
            if _full(pattern, text) and self.tokenizer.eos_token_id is not None:
                allowed.append(self.tokenizer.eos_token_id)
            self._allowed[key] = allowed
        return self._allowed[key]


_TEXTS: dict[int, list[str]] = {}


def _token_texts(tokenizer: Any) -> list[str]:
    """Each token's text, decoded once per tokenizer (150k decodes for Qwen2's vocabulary)."""
    if id(tokenizer) not in _TEXTS:
        _TEXTS[id(tokenizer)] = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return _TEXTS[id(tokenizer)]


def _partial(pattern: str, text: str) -> bool:
    if _regex is not None:
        return _regex.fullmatch(pattern, text, partial=True) is not None
    return any(alt.startswith(text) for alt in _alternatives(pattern))  # pragma: no cover


def _full(pattern: str, text: str) -> bool:
    if _regex is not None:
        return _regex.fullmatch(pattern, text) is not None
    return text in _alternatives(pattern)  # pragma: no cover


def _alternatives(pattern: str) -> list[str]:  # pragma: no cover - only without the regex package
    import re

    inner = pattern[1:-1] if pattern.startswith("(") and pattern.endswith(")") else pattern
    return [re.sub(r"\\(.)", r"\1", alt) for alt in re.split(r"(?<!\\)\|", inner)]
