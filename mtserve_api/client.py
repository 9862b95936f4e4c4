"""What every mtserve gRPC client shares: a channel whose service config
balances round robin over every replica the target names and retries
UNAVAILABLE on the idempotent methods (and nothing else), explicit message
sizes, keepalive, the bearer token on every call, and the mapping of a
failed call back to a domain error that names the server, the status and
the server's message.

A target is what gRPC takes: `HOST:PORT`, `dns:///NAME:PORT` (every address
the name resolves to, re-resolved when connections fail) or
`ipv4:HOST:PORT,HOST:PORT` (`ipv6:[H]:P,...`), a fixed list of replicas.
Clients always pass a deadline (`timeout=`) on every call.
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

if TYPE_CHECKING:
    from mtserve.config import Settings
    from mtserve.tls import ClientPems

from mtserve.errors import (
    MtserveError,
    NotFoundError,
    OverloadedError,
    PreconditionError,
    UnavailableError,
    ValidationError,
)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
TOKEN_HINT = (
    "send a token: auth.token (MTSERVE_AUTH__TOKEN), auth.token_file, or the local admin token <home>/auth/admin.token; "
    "`mtserve tokens create --role ROLE --name NAME` makes one"
)


class RemoteError(MtserveError):
    """A call that failed on the server (or never reached it). Subclasses also
    derive from the matching domain error, so `except NotFoundError` works the
    same for a local store and a remote registry."""

    def __init__(self, server: str, address: str, code: grpc.StatusCode, details: str):
        self.server, self.address, self.code, self.details = server, address, code, details
        # ValidationError's attributes, for callers that read them.
        self.field, self.rule, self.value = server, details, None
        Exception.__init__(self, f"{server} at {address}: {code.name}: {details}")


class RemoteInvalidArgument(RemoteError, ValidationError):
    pass


class RemoteNotFound(RemoteError, NotFoundError):
    pass


class RemotePrecondition(RemoteError, PreconditionError):
    pass


class RemoteOverloaded(RemoteError, OverloadedError):
    pass


class RemoteUnavailable(RemoteError, UnavailableError):
    pass


class RemoteUnauthenticated(RemoteError):
    """No token, or one the server does not know (revoked, another home's)."""


class RemotePermissionDenied(RemoteError):
    """The token is valid but its role may not make this call."""


_ERROR_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: RemoteInvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: RemoteInvalidArgument,
    grpc.StatusCode.NOT_FOUND: RemoteNotFound,
    grpc.StatusCode.FAILED_PRECONDITION: RemotePrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RemoteOverloaded,
    grpc.StatusCode.UNAVAILABLE: RemoteUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: RemoteUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: RemoteUnauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: RemotePermissionDenied,
}


def raise_remote(exc: grpc.RpcError, server: str, address: str) -> NoReturn:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer within the deadline ({details})"
    elif code is grpc.StatusCode.UNAUTHENTICATED:
        details += f"; {TOKEN_HINT}"
    raise _ERROR_OF.get(code, RemoteError)(server, address, code, details) from None


# gRPC's own retry policy (gRFC A6), the one every mtserve client uses for
# the methods it lists as idempotent: 4 attempts in all, waits drawn from
# U(0, min(0.2 s * 2^n, 2 s)), UNAVAILABLE only (the server never started the
# call, or is draining). Nothing else is retried by the channel: any other
# status is an answer, and a write is never sent twice.
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# gRPC's reconnect backoff grows to 120 s by default: a replica that was down
# for a few minutes would then get no calls for up to two minutes after it is
# back, and a rolling restart that waits only for its SERVING could take the
# next replica down before the clients returned to the first. 10 s bounds
# that; a connection attempt to a dead address every 10 s costs nothing.
MAX_RECONNECT_BACKOFF_MS = 10_000


def service_config(service: str, *, retry: Sequence[str] = (), health_check: bool = False) -> dict[str, Any]:
    """The channel's service config: round robin over every address the
    target resolves to (a DNS name of several replicas, or
    `ipv4:HOST:P1,HOST:P2`), RETRY_POLICY on the methods in `retry` (the
    idempotent ones; every other method gets no policy and is never
    retried), and with `health_check` gRPC's client-side health checking
    (gRFC A17): the channel watches `grpc.health.v1` for `service` on every
    replica and sends calls only to those that are SERVING, so a replica that
    is still loading its models or already draining gets none. A retry goes
    to the next replica, so a draining or killed one costs no call."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry:
        config["methodConfig"] = [{"name": [{"service": service, "method": m} for m in retry], "retryPolicy": RETRY_POLICY}]
    if health_check:
        config["healthCheckConfig"] = {"serviceName": service}
    return config


def replica_hosts(target: str) -> list[str] | None:
    """The hosts of an `ipv4:`/`ipv6:` target (`ipv4:10.0.0.5:50052,10.0.0.6:50052`,
    `ipv6:[::1]:50052,[::1]:50053`), or None for any other target (HOST:PORT,
    `dns:///NAME:PORT`), whose host gRPC verifies by itself."""
    scheme, colon, rest = target.partition(":")
    if not colon or scheme not in ("ipv4", "ipv6"):
        return None
    hosts = []
    for address in rest.lstrip("/").split(","):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValidationError("target", f"every address of an {scheme}: target is HOST:PORT (got {address!r})", target)
        hosts.append(host.strip("[]"))
    return hosts


def tls_server_name(target: str, configured: str | None) -> str | None:
    """The name to verify in the servers' certificates. A target of several
    addresses carries no single host, and gRPC would then check the whole
    address list against the certificate and fail every handshake; when
    all the addresses share one host (replicas on one machine) that host is
    the name, otherwise the configuration must give one (`tls.server_name`)
    that every replica's certificate covers (`tls.server_names` on servers
    using the local CA)."""
    if configured:
        return configured
    hosts = replica_hosts(target)
    if not hosts:
        return None  # HOST:PORT or dns:///NAME:PORT: gRPC verifies that host
    if len(set(hosts)) == 1:
        return hosts[0]
    raise ValidationError(
        "tls.server_name",
        f"target {target} lists replicas on {len(set(hosts))} hosts ({', '.join(sorted(set(hosts)))}): "
        "set tls.server_name to a name every replica's certificate covers",
        show_value=False,
    )


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method, details.timeout, [*(details.metadata or ()), self._header], details.credentials,
            details.wait_for_ready, details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class Credentials:
    """What a client sends and trusts: a bearer token (None: none) and TLS
    material (None: plaintext, only where the settings turned TLS off)."""

    token: str | None
    tls: ClientPems | None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Credentials:
        """This process's (`load_settings()` when not given): auth.* and tls.*."""
        from mtserve.config import load_settings

        settings = settings or load_settings()
        return cls(settings.client_token(), settings.client_tls())


def open_channel(address: str, options: Sequence[tuple[str, Any]], credentials: Credentials) -> grpc.Channel:
    """A channel with exactly these credentials (TLS unless `tls` is None; the token unless None)."""
    if credentials.tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        t = credentials.tls
        server_name = tls_server_name(address, t.server_name)
        if server_name:
            options = [*options, ("grpc.ssl_target_name_override", server_name)]
        channel = grpc.secure_channel(
            address, grpc.ssl_channel_credentials(root_certificates=t.root_ca, private_key=t.private_key, certificate_chain=t.cert_chain),
            options=options,
        )
    return grpc.intercept_channel(channel, BearerToken(credentials.token)) if credentials.token else channel


def make_channel(
    address: str,
    service: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    retry: Sequence[str] = (),
    health_check: bool = False,
    keepalive: bool = False,
    credentials: Credentials = Credentials(None, None),
) -> grpc.Channel:
    """A channel to `address` (HOST:PORT, `dns:///NAME:PORT`, `ipv4:H:P,H:P`)
    over TLS (unless `credentials.tls` is None) that sends
    `credentials.token` on every call; `retry` and `health_check` as in
    `service_config`."""
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", json.dumps(service_config(service, retry=retry, health_check=health_check))),
        ("grpc.enable_retries", 1),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if keepalive:
        # A long-lived stream (Watch) notices a vanished peer within ~30 s
        # instead of waiting on a dead TCP connection forever.
        options += [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return open_channel(address, options, credentials)


def connect(address: str, *, token: str | None = None, settings: Settings | None = None) -> grpc.Channel:
    """A channel to an mtserve service for hand-written stubs, with this
    process's credentials (`Credentials.from_settings`); `token` overrides
    the token."""
    found = Credentials.from_settings(settings)
    return open_channel(address, (), Credentials(token or found.token, found.tls))


class ServiceClient:
    """What every client of the project shares: one channel (round robin
    over the target's addresses, retries of UNAVAILABLE for the idempotent
    methods in its service config), a deadline on every call, and gRPC
    errors raised as domain errors naming the server."""

    SERVICE = ""  # e.g. "mtserve.v1.Registry"
    NAME = ""  # "registry", "inference", "trainer": for error messages
    RETRY: Sequence[str] = ()  # the idempotent methods (reads, scoring): the only ones retried
    HEALTH_CHECK = False  # send calls only to replicas whose grpc.health.v1 says SERVING
    KEEPALIVE = False  # long-lived streams

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        keepalive: bool | None = None,
        token: str | None = None,
        settings: Settings | None = None,
    ):
        """`address` is a gRPC target (see the module docstring). Credentials
        come from `settings` (default: this process's, `load_settings()`):
        the token of auth.*, else the local admin token, and the CA of
        tls.*, else the local CA. `token` overrides the token."""
        self.address = address
        self.timeout = timeout
        found = Credentials.from_settings(settings)
        self.channel = make_channel(
            address, self.SERVICE, max_message_bytes=max_message_bytes, retry=self.RETRY, health_check=self.HEALTH_CHECK,
            keepalive=self.KEEPALIVE if keepalive is None else keepalive, credentials=Credentials(token or found.token, found.tls),
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise_remote(exc, self.NAME, self.address)
