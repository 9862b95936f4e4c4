"""Who may call what: bearer tokens with a role, stored hashed.

Roles are ordered: `client` < `operator` < `admin`; a token of a role may do
everything a lower role may. Each RPC needs one role (the table is in
mtserve_api/roles.py); the servers' interceptor checks it.

Tokens live in one file, `<home>/auth/tokens.json` (owner-only), that every
service on the machine reads: a token is `mts_` + 43 url-safe characters (32
random bytes), and only its sha256 is stored. A plain hash is enough: the
secret is random, not a password, so there is nothing to guess word by word.
The file is re-read when it changes, so `mtserve tokens revoke` takes effect
on running services at their next call, without a restart.

On first start a service (or `mtserve tokens ...`) creates the local admin
token `<home>/auth/admin.token` (owner-only), the way a local database hands
its owner access: the CLI, the demo and the tests pick it up from there.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path

from mtserve.errors import NotFoundError, PreconditionError, ValidationError
from mtserve.tasks import NAME_RE

TOKEN_PREFIX = "mts_"
LOCAL_ADMIN = "local-admin"


class Role(IntEnum):
    CLIENT = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str, field: str = "role") -> Role:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValidationError(field, f"must be one of {[r.label for r in cls]}", value) from None


@dataclass(frozen=True)
class Token:
    """One token as stored: its name (who, in audit records), role and the
    sha256 of the secret."""

    name: str
    role: Role
    sha256: str
    created_at: str

    def to_dict(self) -> dict[str, str]:
        return {**asdict(self), "role": self.role.label}


def auth_dir(home: Path) -> Path:
    return home / "auth"


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (no moment at which it
    exists with wider permissions or half written)."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class TokenStore:
    """The token file of one home folder. Safe across processes (an fcntl
    lock around every change) and threads; `authenticate` re-reads the file
    when its modification time or size changed."""

    def __init__(self, home: Path, path: Path | None = None):
        """The store of `home` (<home>/auth/tokens.json), or the file at `path` (auth.tokens_file)."""
        self.dir = path.parent if path is not None else auth_dir(home)
        self.path = path if path is not None else self.dir / "tokens.json"
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._tokens: dict[str, Token] = {}

    # -- reading -----------------------------------------------------------------
    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, Token]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PreconditionError(f"cannot read the token file {self.path}: {exc}") from None
        return {t["name"]: Token(t["name"], Role.parse(t["role"]), t["sha256"], t["created_at"]) for t in raw.get("tokens", [])}

    def tokens(self) -> list[Token]:
        with self._lock:
            self._refresh()
            return sorted(self._tokens.values(), key=lambda t: t.name)

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp != self._seen:
            self._tokens, self._seen = self._read(), stamp

    def authenticate(self, secret: str) -> Token | None:
        """The token whose hash matches, or None. Every stored hash is compared
        (in constant time each), so the time taken says nothing about which
        one came close."""
        digest = hash_token(secret)
        with self._lock:
            self._refresh()
            found = None
            for token in self._tokens.values():
                if hmac.compare_digest(token.sha256, digest):
                    found = token
            return found

    # -- changing ----------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[dict[str, Token]]:
        _private_dir(self.dir)
        with open(self.dir / ".lock", "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tokens = self._read()
            yield tokens
            body = {"tokens": [t.to_dict() for t in sorted(tokens.values(), key=lambda t: t.name)]}
            write_private(self.path, json.dumps(body, indent=2) + "\n")

    def create(self, name: str, role: Role) -> str:
        """A new token; returns its secret, which is stored nowhere (only its hash)."""
        if not NAME_RE.match(name):
            raise ValidationError("name", f"must match {NAME_RE.pattern}", name)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as tokens:
            if name in tokens:
                raise ValidationError("name", "a token of this name exists (revoke it first)", name)
            tokens[name] = Token(name, role, hash_token(secret), datetime.now(UTC).isoformat(timespec="seconds"))
        return secret

    def revoke(self, name: str) -> Token:
        with self._locked() as tokens:
            if name not in tokens:
                raise NotFoundError(f"no token named {name!r}")
            return tokens.pop(name)


def admin_token_path(home: Path) -> Path:
    return auth_dir(home) / "admin.token"


def ensure_local_admin(home: Path) -> Path:
    """The local admin token file, created (with its hash in the store) on
    first use. A revoked local admin is not silently re-created while its
    file exists: delete the file to get a new one."""
    path = admin_token_path(home)
    if path.exists():
        return path
    store = TokenStore(home)
    with open(_private_dir(auth_dir(home)) / ".admin.lock", "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two services starting at once make one token
        if path.exists():
            return path
        names = {t.name for t in store.tokens()}
        if LOCAL_ADMIN in names:
            store.revoke(LOCAL_ADMIN)  # its secret is lost with the file: replace it
        write_private(path, store.create(LOCAL_ADMIN, Role.ADMIN) + "\n")
    return path


def read_token_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise PreconditionError(f"cannot read the token file {path}: {exc.strerror}") from None
