"""The HTTP endpoint that serves Prometheus metrics, for the gRPC services
(services/common/metrics.py) and the batch workers (batch/metrics.py): plain
HTTP or HTTPS, behind a bearer token of role operator or above.

With `registry` given (a batch worker's parent process collecting its pool
processes' metrics, prometheus_client's multiprocess mode) that registry is
served; otherwise the process's default one.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from mtserve.auth import Role, TokenStore
from mtserve.config import is_loopback
from mtserve.errors import PreconditionError, UnavailableError


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where and how a service serves /metrics: None token store = no token
    required; None cert = plain HTTP."""

    address: str
    tokens: TokenStore | None
    cert_files: tuple[Path, Path] | None


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per scrape on stderr is noise; failures are answered with their status


def _guarded(app: Any, tokens: TokenStore | None) -> Any:
    """The metrics app behind a bearer-token check (operator or above)."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Any:
        if tokens is not None:
            header = environ.get("HTTP_AUTHORIZATION", "")
            token = tokens.authenticate(header[len("Bearer "):].strip()) if header.startswith("Bearer ") else None
            if token is None or token.role < Role.OPERATOR:
                status = "401 Unauthorized" if token is None else "403 Forbidden"
                body = b"missing or unknown bearer token\n" if token is None else b"metrics need the operator role\n"
                start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
                return [body]
        return app(environ, start_response)

    return guarded


class MetricsServer:
    """The /metrics HTTP endpoint of one service, in a daemon thread."""

    def __init__(self, endpoint: MetricsEndpoint, registry: Any = None):
        host, _, port = endpoint.address.rpartition(":")
        app = make_wsgi_app(registry) if registry is not None else make_wsgi_app()
        try:
            self.httpd = make_server(host.strip("[]"), int(port), _guarded(app, endpoint.tokens),
                                     _ThreadingServer, handler_class=_QuietHandler)
        except OSError as exc:
            raise UnavailableError(f"cannot serve metrics on {endpoint.address}: {exc.strerror or exc}") from None
        if endpoint.cert_files is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(endpoint.cert_files[0]), str(endpoint.cert_files[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_port
        self.scheme = "https" if endpoint.cert_files else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def metrics_endpoint(settings: Any, component: str, address: str) -> MetricsEndpoint | None:
    """Where a component serves metrics ("": nowhere), with its gRPC port's
    protection: TLS when tls.enabled, an operator token when auth is on. A
    non-loopback address needs both."""
    if not address:
        return None
    if not is_loopback(address) and not (settings.tls.enabled and settings.auth.enabled):
        raise PreconditionError(f"{component}.metrics_address {address} is not a loopback address: it needs tls.enabled and auth.enabled")
    tokens = settings.server_token_store() if settings.auth.enabled else None
    return MetricsEndpoint(address, tokens, settings.server_tls_files())


__all__ = ["MetricsEndpoint", "MetricsServer", "metrics_endpoint"]
