"""Request shape checks (PARAM_ILLEGAL) and per-row data checks (DATA_CHECK_FAILED).

Every value is decrypted in memory only to be checked; messages name the row index,
the column and the reason, never the value.
"""

from __future__ import annotations

import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datahub_emulator import codes

MAX_ROWS = 100
NONCE_BYTES = 12
TAG_BYTES = 16

_BIGINT_RE = re.compile(r"-?(0|[1-9][0-9]*)")
# JSON number grammar: what Python's repr, Java's Double.toString and polars all emit,
# and nothing float() would also accept by accident ("1_0", " 1", "infinity").
_DOUBLE_RE = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_bigint(text: str) -> bool:
    return bool(_BIGINT_RE.fullmatch(text)) and _INT64_MIN <= int(text) <= _INT64_MAX


def _is_double(text: str) -> bool:
    return bool(_DOUBLE_RE.fullmatch(text)) and math.isfinite(float(text))


def _is_string(text: str) -> bool:
    return True


# The one place that knows the partner's column types; add a type here and nowhere else.
TYPE_VALIDATORS: dict[str, Callable[[str], bool]] = {
    "String": _is_string,
    "Bigint": _is_bigint,
    "Double": _is_double,
}


@dataclass(frozen=True, slots=True)
class Schema:
    """A dataset's registered columns (name -> partner type) and required column names."""

    columns: Mapping[str, str]
    required: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a body the auth stage may look at before its shape is validated."""

    body: Any

    def text_field(self, name: str) -> str | None:
        value = self.body.get(name) if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class UploadRequest:
    data_uuid: str
    institution_id: str
    ant_institution_id: str
    data_key_id: str
    rows: list[dict[str, str]]


def parse_envelope(body: bytes) -> Envelope:
    """Parse the body as JSON; a body that is not JSON becomes an envelope of None."""
    try:
        return Envelope(json.loads(body))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: RecursionError
        return Envelope(None)


def parse_upload(envelope: Envelope) -> UploadRequest:
    """Validate the request's shape, raising F/PARAM_ILLEGAL for anything malformed."""
    if not isinstance(envelope.body, dict):
        raise codes.failed(codes.PARAM_ILLEGAL, "body is not a JSON object")
    fields = {}
    for name in ("dataUuid", "institutionId", "antInstitutionId", "dataKeyId"):
        value = envelope.text_field(name)
        if not value:
            raise codes.failed(codes.PARAM_ILLEGAL, f"{name} is missing or empty")
        fields[name] = value
    rows = envelope.body.get("data")
    if not isinstance(rows, list):
        raise codes.failed(codes.PARAM_ILLEGAL, "data is missing or not a list")
    if not rows:
        raise codes.failed(codes.PARAM_ILLEGAL, "data is empty")
    if len(rows) > MAX_ROWS:
        raise codes.failed(codes.PARAM_ILLEGAL, f"data has {len(rows)} rows, more than {MAX_ROWS}")
    for index, row in enumerate(rows):
        if not _is_flat_text_object(row):
            raise codes.failed(
                codes.PARAM_ILLEGAL, f"row {index} is not a JSON object of string values"
            )
    return UploadRequest(
        data_uuid=fields["dataUuid"],
        institution_id=fields["institutionId"],
        ant_institution_id=fields["antInstitutionId"],
        data_key_id=fields["dataKeyId"],
        rows=rows,
    )


def _is_flat_text_object(row: object) -> bool:
    return isinstance(row, dict) and all(isinstance(value, str) for value in row.values())


class RowDecryptor:
    """Decrypts one dataset's field values; the AAD binds each value to dataset and column."""

    def __init__(self, cipher: AESGCM, data_uuid: str) -> None:
        self._cipher = cipher
        self._prefix = data_uuid + "\n"
        self._aad: dict[str, bytes] = {}

    def decrypt(self, column: str, encoded: str) -> str | None:
        """The plaintext, or None when the value is not a valid ciphertext for this column."""
        aad = self._aad.get(column)
        if aad is None:
            aad = self._aad[column] = (self._prefix + column).encode()
        try:
            # strict_mode: same rules as b64decode(validate=True), without its regex pass.
            raw = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            return None
        try:
            return self._cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad).decode()
        except (InvalidTag, UnicodeDecodeError):
            return None


def check_rows(rows: list[dict[str, str]], schema: Schema, decryptor: RowDecryptor) -> list[str]:
    """Check every row against the schema; return the plaintext ids, for keyed hashing only.

    Raises F/DATA_CHECK_FAILED at the first row that breaks the schema. This loop runs for
    every value the endpoint receives, so the lookups it repeats are hoisted out of it.
    """
    validators = {name: TYPE_VALIDATORS[kind] for name, kind in schema.columns.items()}
    decrypt = decryptor.decrypt
    ids = []
    for index, row in enumerate(rows):
        plain = {}
        for column, encoded in row.items():
            validate = validators.get(column)
            if validate is None:
                raise _data_check(index, column, "is not a column of this dataset")
            value = decrypt(column, encoded)
            if value is None:
                raise _data_check(index, column, "ciphertext failed authentication")
            # No null marker: the contract leaves a null out of the row, so an empty Bigint
            # or Double is a bad value, while an empty String is a string.
            if not validate(value):
                raise _data_check(index, column, f"is not a valid {schema.columns[column]}")
            plain[column] = value
        for column in schema.required:
            if not plain.get(column):
                raise _data_check(index, column, "is required but missing or empty")
        ids.append(plain["id"])
    return ids


def _data_check(index: int, column: str, reason: str) -> codes.Rejection:
    return codes.failed(codes.DATA_CHECK_FAILED, f"row {index} column {column} {reason}")
