"""API keys in SQLite, stored hashed; and the URL-signing secret kept beside them.

A key reads `apk_{id}_{secret}`: `id` (12 hex characters) finds the row, `secret` (256 random bits) is
checked against its SHA-256 with a constant-time comparison. A fast hash is enough for a random 256-bit
secret (nothing to brute-force); it keeps each request's check in microseconds. The plain key is shown
once, at creation, and stored nowhere.

The server keeps the table in memory and reloads it when the database file changes, so `api-keys
revoke` takes effect on the next request of a running server.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aperiodic_pipelines.domain.errors import AperiodicError

DEMO_KEY = "DEMO-KEY"
KEY_PREFIX = "apk"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_KEY = re.compile(r"^apk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class ApiKeyError(AperiodicError, ValueError):
    """A bad key name, a duplicate, or an unknown key to revoke."""


@dataclass(frozen=True)
class ApiKeyInfo:
    name: str
    key_id: str
    created_at: str
    revoked_at: str | None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiKeyStore:
    """The key database at `path` (created on first use, readable by its owner only)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._active: dict[str, tuple[str, str]] = {}  # key_id -> (name, secret sha256)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)  # never world-readable, not even briefly
            os.close(fd)
        connection = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            connection.executescript(_SCHEMA)
            yield connection
        finally:
            connection.close()  # an open BEGIN is rolled back

    def create(self, name: str) -> str:
        """A new key for `name`; returns the plain key (shown once). A revoked name may be reused."""
        if not isinstance(name, str) or not _NAME.match(name) or name == DEMO_KEY:
            raise ApiKeyError(
                f"invalid key name {name!r}: 1-64 letters, digits, '_', '.', '@', '-', starting with a letter or digit"
            )
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT revoked_at FROM api_keys WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is None:
                db.execute("ROLLBACK")
                raise ApiKeyError(f"a key named {name!r} exists; revoke it first (api-keys revoke {name})")
            db.execute(
                "INSERT OR REPLACE INTO api_keys (name, key_id, secret_sha256, created_at, revoked_at) "
                "VALUES (?, ?, ?, ?, NULL)",
                (name, key_id, _sha256(secret), _now()),
            )
            db.execute("COMMIT")
        return f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke(self, name: str) -> None:
        with self._connect() as db:
            updated = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (_now(), name)
            ).rowcount
        if not updated:
            raise ApiKeyError(f"no active key named {name!r} (see api-keys list)")

    def list(self) -> list[ApiKeyInfo]:
        with self._connect() as db:
            rows = db.execute("SELECT name, key_id, created_at, revoked_at FROM api_keys ORDER BY name").fetchall()
        return [ApiKeyInfo(*row) for row in rows]

    def authenticate(self, presented: str) -> str | None:
        """The key's name, or None for an unknown, malformed or revoked key."""
        match = _KEY.match(presented)
        if match is None:
            return None
        self._reload_if_changed()
        entry = self._active.get(match[1])
        expected = entry[1] if entry else "0" * 64  # compare anyway: same work for a known or unknown id
        ok = hmac.compare_digest(_sha256(match[2]), expected)
        return entry[0] if ok and entry else None

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._active, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        with self._lock:
            with self._connect() as db:
                rows = db.execute(
                    "SELECT key_id, name, secret_sha256 FROM api_keys WHERE revoked_at IS NULL"
                ).fetchall()
            self._active = {key_id: (name, digest) for key_id, name, digest in rows}
            self._stamp = stamp

    def signing_secret(self) -> bytes:
        """The URL-signing secret, generated on first use and kept in this database."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM secrets WHERE name = 'url_signing_key'").fetchone()
            if row is None:
                value = secrets.token_bytes(32)
                db.execute("INSERT INTO secrets (name, value) VALUES ('url_signing_key', ?)", (value,))
                row = (value,)
            db.execute("COMMIT")
        return bytes(row[0])
