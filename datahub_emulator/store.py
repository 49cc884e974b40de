"""SQLite storage of the endpoint: registrations, ciphertext rows and receipts.

Only ciphertext is stored. A row's id is kept as a keyed hash (HMAC with a secret that
never leaves this file's meta table), so rows upsert by (dataUuid, id) without the id
in clear. One connection in WAL mode, used from the event loop only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from datahub_emulator.checks import Schema

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    institution_id TEXT NOT NULL,
    ant_institution_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grants (
    institution_id TEXT NOT NULL,
    data_uuid TEXT NOT NULL,
    PRIMARY KEY (institution_id, data_uuid)
);
CREATE TABLE IF NOT EXISTS schemas (
    data_uuid TEXT PRIMARY KEY,
    columns_json TEXT NOT NULL,
    required_json TEXT NOT NULL
);
-- Data keys live in their own table, apart from the client registrations: the trusted
-- side needs them to check values, and they are the one secret here worth guarding.
CREATE TABLE IF NOT EXISTS data_keys (
    data_key_id TEXT PRIMARY KEY,
    data_key BLOB NOT NULL
);
-- Every data key a client has registered: after a rotation, requests a run encrypted
-- under the previous key are still accepted (clients.data_key_id is the newest).
CREATE TABLE IF NOT EXISTS client_data_keys (
    client_id TEXT NOT NULL,
    data_key_id TEXT NOT NULL,
    PRIMARY KEY (client_id, data_key_id)
);
-- A rowid table on purpose: ciphertext is appended in arrival order and only the small
-- primary-key index takes the random inserts of the keyed hashes. Clustering the table
-- on the hash (WITHOUT ROWID) made each commit write about twice as many pages.
CREATE TABLE IF NOT EXISTS rows (
    data_uuid TEXT NOT NULL,
    id_key TEXT NOT NULL,
    row_ciphertext TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (data_uuid, id_key)
);
CREATE TABLE IF NOT EXISTS receipts (
    trace_id TEXT PRIMARY KEY,
    data_uuid TEXT,
    client_id TEXT,
    rows INTEGER,
    content_hash TEXT NOT NULL,
    arrived_at REAL NOT NULL,
    admitted INTEGER NOT NULL,
    status TEXT NOT NULL,
    code TEXT NOT NULL,
    -- Which batch a stored request carried: a keyed hash of its ids in order (no id in
    -- clear), so that receipts can be counted per batch.
    batch_key TEXT
);
CREATE INDEX IF NOT EXISTS receipts_arrived ON receipts (arrived_at);
"""

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    # No fsync: a crash of this process loses nothing (the OS holds the writes); only a
    # crash of the machine could, which a local stand-in can afford. Commits (about 100
    # random index pages per batch) dominated the endpoint's CPU time before this and
    # the two settings below.
    "PRAGMA synchronous=OFF",
    "PRAGMA wal_autocheckpoint=10000",  # pages: checkpoint every ~40 MB of WAL
    "PRAGMA cache_size=-65536",  # KiB: keep the hot index pages in memory
)

_UPSERT_ROW = """
INSERT INTO rows (data_uuid, id_key, row_ciphertext, trace_id, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (data_uuid, id_key) DO UPDATE SET
    row_ciphertext = excluded.row_ciphertext,
    trace_id = excluded.trace_id,
    updated_at = excluded.updated_at
"""

_INSERT_RECEIPT = """
INSERT INTO receipts
    (trace_id, data_uuid, client_id, rows, content_hash, arrived_at, admitted, status, code, batch_key)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_RECONCILE_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    public_key: rsa.RSAPublicKey
    institution_id: str
    ant_institution_id: str
    data_key_ids: frozenset[str]  # every data key it registered, the newest included


@dataclass(frozen=True, slots=True)
class Registration:
    """One admin/register call, already validated."""

    client_id: str
    public_key_der: bytes
    institution_id: str
    ant_institution_id: str
    data_key_id: str
    data_key: bytes
    grants: tuple[str, ...]
    schemas: dict[str, Schema]


class RegistrationConflict(ValueError):
    """A registration that would replace another client's keys; the message names no secret."""


@dataclass(slots=True)
class Receipt:
    """The record every request leaves, whatever its outcome. No values, no ids."""

    trace_id: str
    content_hash: str
    arrived_at: float
    data_uuid: str | None = None
    client_id: str | None = None
    rows: int | None = None
    admitted: bool = False
    status: str = ""
    code: str = ""
    batch_key: str | None = None  # set when the batch's rows were stored


@dataclass(frozen=True, slots=True)
class Reconciliation:
    expected: int
    stored: int
    missing: int
    unexpected: int
    missing_indexes: list[int]


class Store:
    """The endpoint's database, with registrations cached in memory for the hot path."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in _PRAGMAS:
            self._db.execute(pragma)
        self._db.executescript(_SCHEMA_SQL)
        self._add_batch_key_column()
        self._id_mac = hmac.new(self._load_or_create_secret(), digestmod=hashlib.sha256)
        self.clients: dict[str, Client] = {}
        self.grants: set[tuple[str, str]] = set()
        self.schemas: dict[str, Schema] = {}
        self.data_keys: dict[str, bytes] = {}
        self._load_registrations()

    def _add_batch_key_column(self) -> None:
        """Databases created before receipts had a batch key get the column (empty)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(receipts)")}
        if "batch_key" not in columns:
            self._db.execute("ALTER TABLE receipts ADD COLUMN batch_key TEXT")
        self._db.execute("CREATE INDEX IF NOT EXISTS receipts_batch ON receipts (data_uuid, batch_key)")

    def close(self) -> None:
        # A clean close checkpoints the WAL into the main file and removes it.
        self._db.close()

    # --- registrations -------------------------------------------------------------

    def register(self, registration: Registration) -> None:
        """Add or update a client. A client id keeps its public key and a data key id its
        key: whoever registers first owns them, so no caller can take over another
        client's identity or swap the key its data is checked with. Re-registering with
        the same keys is idempotent."""
        with self._transaction():
            self._refuse_replacement(registration)
            self._db.execute(
                "INSERT OR REPLACE INTO clients VALUES (?, ?, ?, ?, ?)",
                (
                    registration.client_id,
                    registration.public_key_der,
                    registration.institution_id,
                    registration.ant_institution_id,
                    registration.data_key_id,
                ),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO data_keys VALUES (?, ?)",
                (registration.data_key_id, registration.data_key),
            )
            self._db.execute(
                "INSERT OR IGNORE INTO client_data_keys VALUES (?, ?)",
                (registration.client_id, registration.data_key_id),
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO grants VALUES (?, ?)",
                [(registration.institution_id, uuid) for uuid in registration.grants],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO schemas VALUES (?, ?, ?)",
                [
                    (uuid, json.dumps(dict(schema.columns)), json.dumps(list(schema.required)))
                    for uuid, schema in registration.schemas.items()
                ],
            )
        self._load_registrations()

    def _refuse_replacement(self, registration: Registration) -> None:
        known_key = self._db.execute(
            "SELECT public_key FROM clients WHERE client_id = ?", (registration.client_id,)
        ).fetchone()
        if known_key is not None and bytes(known_key[0]) != registration.public_key_der:
            raise RegistrationConflict("clientId is registered with another publicKey")
        known_data_key = self._db.execute(
            "SELECT data_key FROM data_keys WHERE data_key_id = ?", (registration.data_key_id,)
        ).fetchone()
        if known_data_key is not None and bytes(known_data_key[0]) != registration.data_key:
            raise RegistrationConflict("dataKeyId is registered with another dataKey")

    def revoke(self, institution_id: str, data_uuid: str) -> bool:
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM grants WHERE institution_id = ? AND data_uuid = ?",
                (institution_id, data_uuid),
            )
        self.grants.discard((institution_id, data_uuid))
        return cursor.rowcount > 0

    def _load_registrations(self) -> None:
        key_ids: dict[str, set[str]] = {}
        for client_id, data_key_id in self._db.execute("SELECT client_id, data_key_id FROM client_data_keys"):
            key_ids.setdefault(client_id, set()).add(data_key_id)
        self.clients = {
            row[0]: Client(row[0], _public_key(row[1]), row[2], row[3], frozenset({row[4], *key_ids.get(row[0], ())}))
            for row in self._db.execute("SELECT * FROM clients")
        }
        self.grants = {(row[0], row[1]) for row in self._db.execute("SELECT * FROM grants")}
        self.schemas = {
            row[0]: Schema(columns=json.loads(row[1]), required=tuple(json.loads(row[2])))
            for row in self._db.execute("SELECT * FROM schemas")
        }
        self.data_keys = dict(self._db.execute("SELECT data_key_id, data_key FROM data_keys"))

    # --- uploads ---------------------------------------------------------------------

    def id_key(self, data_uuid: str, row_id: str) -> str:
        # Copying a keyed HMAC reuses its precomputed pads: 2-3x faster than hmac.digest,
        # and this runs once per row received.
        mac = self._id_mac.copy()
        mac.update(f"{data_uuid}\n{row_id}".encode())
        return mac.hexdigest()

    def batch_key(self, data_uuid: str, ids: list[str]) -> str:
        """A batch's identity without its ids in clear: a keyed hash of its ids in order."""
        mac = self._id_mac.copy()
        mac.update("\n".join([data_uuid, *ids]).encode())
        return mac.hexdigest()

    def save_rows(
        self, receipt: Receipt, ids: list[str], encrypted_rows: list[dict[str, str]]
    ) -> None:
        """Upsert a checked batch and its receipt in one transaction."""
        assert receipt.data_uuid is not None
        uuid, trace_id, now = receipt.data_uuid, receipt.trace_id, receipt.arrived_at
        receipt.batch_key = self.batch_key(uuid, ids)
        params = [
            (uuid, self.id_key(uuid, row_id), _compact_json(row), trace_id, now)
            for row_id, row in zip(ids, encrypted_rows, strict=True)
        ]
        with self._transaction():
            self._db.executemany(_UPSERT_ROW, params)
            self._insert_receipt(receipt)

    def save_receipt(self, receipt: Receipt) -> None:
        with self._transaction():
            self._insert_receipt(receipt)

    def _insert_receipt(self, r: Receipt) -> None:
        self._db.execute(
            _INSERT_RECEIPT,
            (
                r.trace_id,
                r.data_uuid,
                r.client_id,
                r.rows,
                r.content_hash,
                r.arrived_at,
                int(r.admitted),
                r.status,
                r.code,
                r.batch_key,
            ),
        )

    # --- admin reads -----------------------------------------------------------------

    def rows_stored(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT data_uuid, COUNT(*) FROM rows GROUP BY data_uuid"))

    def counts(self, column: str) -> dict[str, int]:
        assert column in {"status", "code"}
        query = f"SELECT {column}, COUNT(*) FROM receipts GROUP BY {column}"
        return dict(self._db.execute(query))

    def per_second(self) -> dict[str, dict[str, int]]:
        query = (
            "SELECT CAST(arrived_at AS INTEGER) AS second, COUNT(*), SUM(admitted)"
            " FROM receipts GROUP BY second ORDER BY second"
        )
        return {
            str(second): {"arrived": arrived, "admitted": admitted}
            for second, arrived, admitted in self._db.execute(query)
        }

    def admitted_times(self) -> Iterator[float]:
        query = "SELECT arrived_at FROM receipts WHERE admitted = 1 ORDER BY arrived_at"
        return (row[0] for row in self._db.execute(query))

    def arrival_times(self) -> Iterator[float]:
        """Every upload's arrival, admitted or not (THROTTLED, refused)."""
        query = "SELECT arrived_at FROM receipts ORDER BY arrived_at"
        return (row[0] for row in self._db.execute(query))

    def rows_accepted(self) -> int:
        query = "SELECT COALESCE(SUM(rows), 0) FROM receipts WHERE status = 'S'"
        return int(self._db.execute(query).fetchone()[0])

    def reconcile(self, data_uuid: str, ids: Iterable[str]) -> Reconciliation:
        """Compare expected ids with what is stored, by keyed hash only."""
        first_index: dict[str, int] = {}
        for index, row_id in enumerate(ids):
            first_index.setdefault(self.id_key(data_uuid, row_id), index)
        keys = list(first_index)
        found: set[str] = set()
        for start in range(0, len(keys), _RECONCILE_CHUNK):
            chunk = keys[start : start + _RECONCILE_CHUNK]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id_key FROM rows WHERE data_uuid = ? AND id_key IN ({marks})"
            found.update(row[0] for row in self._db.execute(query, (data_uuid, *chunk)))
        total = self._db.execute(
            "SELECT COUNT(*) FROM rows WHERE data_uuid = ?", (data_uuid,)
        ).fetchone()[0]
        missing = sorted(first_index[key] for key in keys if key not in found)
        return Reconciliation(
            expected=len(keys),
            stored=len(found),
            missing=len(missing),
            unexpected=total - len(found),
            missing_indexes=missing[:100],
        )

    def receipts_by_batch(self, data_uuid: str, batches: list[list[str]]) -> list[list[dict]]:
        """For each expected batch (its ids in order), the receipts of the requests whose
        rows were stored, oldest first: how often, when, and with what answer the batch
        arrived. No values and no ids; the caller already holds the ids."""
        query = (
            "SELECT trace_id, arrived_at, status, code FROM receipts"
            " WHERE data_uuid = ? AND batch_key = ? ORDER BY arrived_at"
        )
        return [
            [
                {"trace_id": trace_id, "arrived_at": arrived_at, "status": status, "code": code}
                for trace_id, arrived_at, status, code in self._db.execute(query, (data_uuid, self.batch_key(data_uuid, ids)))
            ]
            for ids in batches
        ]

    def reset(self) -> None:
        """Drop rows and receipts; registrations and the id secret stay."""
        with self._transaction():
            self._db.execute("DELETE FROM rows")
            self._db.execute("DELETE FROM receipts")

    # --- internals -------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _load_or_create_secret(self) -> bytes:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'id_secret'").fetchone()
        if row is not None:
            return bytes(row[0])
        secret = secrets.token_bytes(32)
        with self._transaction():
            self._db.execute("INSERT INTO meta VALUES ('id_secret', ?)", (secret,))
        return secret


class _Transaction:
    """BEGIN/COMMIT around a block (the connection runs in autocommit mode otherwise)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _public_key(der: bytes) -> rsa.RSAPublicKey:
    key = load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("publicKey is not an RSA key")
    return key


# One encoder for all rows: json.dumps would build a new one per call (100 per batch).
_ROW_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _compact_json(row: dict[str, str]) -> str:
    return _ROW_ENCODER.encode(row)
