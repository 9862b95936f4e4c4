"""TLS on by default: a local certificate authority in the home folder.

On first start a service makes `<home>/tls/ca.pem` (a CA valid 10 years) and
`<home>/tls/server.pem` (valid 2 years, signed by it, for localhost,
127.0.0.1, ::1, this host's name and `tls.server_names`); the private keys
are owner-only. Clients of the same home trust that CA automatically, the
way they pick up the local admin token. An operator supplies their own
files instead (`tls.ca_file`, `tls.cert_file`, `tls.key_file`), and mutual
TLS by `tls.client_ca_file` on servers and `tls.client_cert_file` /
`tls.client_key_file` on clients.

This module reads and writes PEM files only; the gRPC credentials are built
from them by the servers (services/common/server.py) and the clients
(mtserve_api/client.py).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtserve.auth import write_private
from mtserve.errors import PreconditionError

CA_DAYS = 3650
SERVER_DAYS = 730


def tls_dir(home: Path) -> Path:
    return home / "tls"


@dataclass(frozen=True)
class ServerPems:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None  # mutual TLS: client certificates must chain to it


@dataclass(frozen=True)
class ClientPems:
    root_ca: bytes
    cert_chain: bytes | None = None  # mutual TLS
    private_key: bytes | None = None
    server_name: str | None = None  # verified instead of the target's host (tls.server_name)


def read_pem(path: Path, what: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise PreconditionError(f"cannot read the {what} {path}: {exc.strerror}") from None


def default_names(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What the local server certificate is valid for."""
    return tuple(dict.fromkeys(("localhost", "127.0.0.1", "::1", socket.gethostname(), *extra)))


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _certificate(subject: str, public_key: Any, issuer: str, signer: Any, days: int, *, ca: bool, names: tuple[str, ...] = ()) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def ensure_local_ca(home: Path, server_names: tuple[str, ...] = ()) -> Path:
    """The local CA and a server certificate it signed, made on first use;
    the server certificate is made again when the names it must cover
    change. Returns the tls folder."""
    from cryptography.hazmat.primitives import serialization

    folder = tls_dir(home)
    names = default_names(server_names)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    with open(folder / ".lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # services starting together make one CA
        if not (folder / "ca.pem").exists():
            key = _key()
            cert = _certificate("mtserve local CA", key.public_key(), "mtserve local CA", key, CA_DAYS, ca=True)
            write_private(folder / "ca.key", _pem_key(key))
            (folder / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        made_for = folder / "server.names.json"
        if not (folder / "server.pem").exists() or not made_for.exists() or json.loads(made_for.read_text()) != list(names):
            from cryptography import x509

            ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
            ca_cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
            key = _key()
            issuer = ca_cert.subject.rfc4514_string().removeprefix("CN=")
            cert = _certificate("mtserve server", key.public_key(), issuer, ca_key, SERVER_DAYS, ca=False, names=names)
            write_private(folder / "server.key", _pem_key(key))
            (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            made_for.write_text(json.dumps(list(names)))
    return folder


def make_client_certificate(home: Path, name: str, out: Path) -> tuple[Path, Path]:
    """A client certificate signed by the local CA (for mutual TLS): writes
    `<out>/<name>.pem` and `<name>.key` (owner-only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    folder = tls_dir(home)
    ca_key = serialization.load_pem_private_key(read_pem(folder / "ca.key", "local CA key"), password=None)
    ca_cert = x509.load_pem_x509_certificate(read_pem(folder / "ca.pem", "local CA certificate"))
    key = _key()
    issuer = ca_cert.subject.rfc4514_string().removeprefix("CN=")
    cert = _certificate(name, key.public_key(), issuer, ca_key, SERVER_DAYS, ca=False, names=(name,))
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / f"{name}.key", _pem_key(key))
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / f"{name}.pem", out / f"{name}.key"
