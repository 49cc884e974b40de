"""Validation of the admin API's payloads (docs/protocol.md, "Admin API")."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from datahub_emulator.checks import TYPE_VALIDATORS, Schema
from datahub_emulator.store import Registration

ID_COLUMN = "id"
DATA_KEY_BYTES = 32
MIN_RSA_BITS = 2048


class AdminError(ValueError):
    """A bad admin payload; its message is safe to return (it never quotes a secret)."""


def parse_registration(payload: Any) -> Registration:
    body = _object(payload, "body")
    public_key_der = _b64(body, "publicKey")
    _check_rsa_public_key(public_key_der)
    data_key = _b64(body, "dataKey")
    if len(data_key) != DATA_KEY_BYTES:
        raise AdminError(f"dataKey must be {DATA_KEY_BYTES} bytes")
    grants = body.get("grants", [])
    if not isinstance(grants, list) or not all(_is_text(g) for g in grants):
        raise AdminError("grants must be a list of dataUuids")
    schemas = _object(body.get("schemas", {}), "schemas")
    return Registration(
        client_id=_text(body, "clientId"),
        public_key_der=public_key_der,
        institution_id=_text(body, "institutionId"),
        ant_institution_id=_text(body, "antInstitutionId"),
        data_key_id=_text(body, "dataKeyId"),
        data_key=data_key,
        grants=tuple(grants),
        schemas={_key(uuid): parse_schema(uuid, spec) for uuid, spec in schemas.items()},
    )


def parse_schema(data_uuid: str, spec: Any) -> Schema:
    body = _object(spec, f"schemas.{data_uuid}")
    columns = _object(body.get("columns"), f"schemas.{data_uuid}.columns")
    for name, column_type in columns.items():
        if column_type not in TYPE_VALIDATORS:
            raise AdminError(
                f"schemas.{data_uuid}: column {name} has unknown type {column_type!r}; "
                f"known: {sorted(TYPE_VALIDATORS)}"
            )
    required = body.get("required", [])
    if not isinstance(required, list) or not set(required) <= set(columns):
        raise AdminError(f"schemas.{data_uuid}.required must list declared columns")
    # Rows upsert by id, so every dataset has a required id column (the partner's rule).
    if ID_COLUMN not in required:
        raise AdminError(f"schemas.{data_uuid}: column {ID_COLUMN!r} must be required")
    return Schema(columns=dict(columns), required=tuple(sorted(set(required))))


def parse_revoke(payload: Any) -> tuple[str, str]:
    body = _object(payload, "body")
    return _text(body, "institutionId"), _text(body, "dataUuid")


def parse_reconcile(payload: Any) -> tuple[str, list[str]]:
    body = _object(payload, "body")
    ids = body.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise AdminError("ids must be a list of strings")
    return _text(body, "dataUuid"), ids


def parse_receipts(payload: Any) -> tuple[str, list[list[str]]]:
    body = _object(payload, "body")
    batches = body.get("batches")
    if not isinstance(batches, list) or not all(
        isinstance(b, list) and all(isinstance(i, str) for i in b) for b in batches
    ):
        raise AdminError("batches must be a list of lists of ids (strings)")
    return _text(body, "dataUuid"), batches


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise AdminError(f"{name} must be a JSON object")
    return value


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _key(value: str) -> str:
    if not _is_text(value):
        raise AdminError("dataUuid keys must be non-empty strings")
    return value


def _text(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise AdminError(f"{name} must be a non-empty string")
    return value


def _b64(body: Mapping[str, Any], name: str) -> bytes:
    text = _text(body, name)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AdminError(f"{name} must be standard base64") from None


def _check_rsa_public_key(der: bytes) -> None:
    try:
        key = load_der_public_key(der)
    except ValueError:
        raise AdminError("publicKey must be an X.509 DER public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise AdminError(f"publicKey must be an RSA key of at least {MIN_RSA_BITS} bits")
