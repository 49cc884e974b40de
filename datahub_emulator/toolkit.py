"""Stand-in for the partner's toolkit (genrsa.sh, auth.sh, gendk.sh) in one command.

    python -m datahub_emulator.toolkit init --endpoint http://127.0.0.1:8765 \\
        --out keys.properties --institution-id WALLET_01 --ant-institution-id ANT_01 \\
        --schema user_profile.schema.json

It creates the client's RSA key pair, a client id and a data key, writes them to
keys.properties (mode 0600, atomically) and registers the client, its grants and the
datasets' schemas with the endpoint. Run again, it reuses the keys and only
re-registers, unless --rotate (every key new: a new client).

    python -m datahub_emulator.toolkit rotate-data-key --keys keys.properties

gives the client a new data key (gendk.sh): a new dataKeyId and dataKey, registered,
then written to keys.properties. Runs started before keep sending under the previous
key, which the client keeps registered. Registering takes the endpoint's admin token: give
--admin-token-file (the endpoint writes DB.admin-token next to its database) or set
$DATAHUB_EMULATOR_ADMIN_TOKEN.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from datahub_emulator.client import AdminClient

RSA_BITS = 2048
DATA_KEY_BYTES = 32

# Key order of the written file; these names are the protocol (docs/protocol.md).
_FIELDS = (
    "institutionId",
    "antInstitutionId",
    "clientId",
    "clientPrivateKey",
    "dataKeyId",
    "dataKey",
    "endpoint",
)


# What _new_keys creates; a reused file must hold all of them.
_SECRET_FIELDS = ("clientId", "clientPrivateKey", "dataKeyId", "dataKey")


@dataclass(frozen=True, slots=True)
class KeysInfo:
    """What init_keys did, without any secret."""

    path: Path
    client_id: str
    data_key_id: str
    data_uuids: tuple[str, ...]
    created: bool


@dataclass(frozen=True, slots=True)
class ContractSchema:
    data_uuid: str
    columns: dict[str, str]
    required: tuple[str, ...]

    def as_registration(self) -> dict[str, Any]:
        return {"columns": self.columns, "required": list(self.required)}


    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ContractSchema:
        """{"dataUuid": ..., "columns": {name: type}, "required": [name, ...]}, as agreed with
        the partner (`datahub-schema CONTRACT.yaml` prints it for a data contract)."""
        return cls(str(raw["dataUuid"]), dict(raw["columns"]), tuple(sorted(raw["required"])))


def init_keys(
    *,
    endpoint: str,
    out: Path,
    institution_id: str,
    ant_institution_id: str,
    schemas: Sequence[ContractSchema],
    rotate: bool = False,
    admin_token: str | None = None,
) -> KeysInfo:
    """Create (or reuse) the keys in `out` and register them with the endpoint.

    `admin_token` defaults to the token of the endpoint if this process started it
    (client.EmulatorProcess), else $DATAHUB_EMULATOR_ADMIN_TOKEN.
    """
    out = Path(out)
    created = rotate or not out.exists()
    keys = _new_keys() if created else _existing_keys(out)
    wanted = {
        **keys,
        "institutionId": institution_id,
        "antInstitutionId": ant_institution_id,
        "endpoint": endpoint.rstrip("/"),
    }
    if created or wanted != keys:
        write_properties(out, wanted)
    register(wanted, schemas, admin_token)
    return KeysInfo(
        path=out,
        client_id=wanted["clientId"],
        data_key_id=wanted["dataKeyId"],
        data_uuids=tuple(schema.data_uuid for schema in schemas),
        created=created,
    )


def rotate_data_key(keys_path: Path, admin_token: str | None = None) -> str:
    """A new data key for the client of `keys_path`, registered, then written; returns the
    new dataKeyId. Registered first: a run that reads the file from then on finds a key
    the endpoint already accepts."""
    keys = _existing_keys(Path(keys_path))
    rotated = {**keys, "dataKeyId": secrets.token_hex(16), "dataKey": _b64(secrets.token_bytes(DATA_KEY_BYTES))}
    register(rotated, (), admin_token)
    write_properties(Path(keys_path), rotated)
    return rotated["dataKeyId"]


def _existing_keys(path: Path) -> dict[str, str]:
    keys = read_properties(path)
    missing = [name for name in _SECRET_FIELDS if not keys.get(name)]
    if missing:
        # Names only: the values are secrets.
        raise ValueError(f"{path} lacks {', '.join(missing)}; run again with --rotate")
    return keys


def _new_keys() -> dict[str, str]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    pkcs8 = private_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "clientId": secrets.token_hex(16),
        "clientPrivateKey": _b64(pkcs8),
        "dataKeyId": secrets.token_hex(16),
        "dataKey": _b64(secrets.token_bytes(DATA_KEY_BYTES)),
    }


def public_key_b64(keys: Mapping[str, str]) -> str:
    """The X.509 DER public key that matches the file's private key, base64."""
    private_key = serialization.load_der_private_key(
        base64.b64decode(keys["clientPrivateKey"]), password=None
    )
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64(der)


def register(
    keys: Mapping[str, str], schemas: Sequence[ContractSchema], admin_token: str | None = None
) -> None:
    payload = {
        "clientId": keys["clientId"],
        "publicKey": public_key_b64(keys),
        "institutionId": keys["institutionId"],
        "antInstitutionId": keys["antInstitutionId"],
        "dataKeyId": keys["dataKeyId"],
        "dataKey": keys["dataKey"],
        "grants": [schema.data_uuid for schema in schemas],
        "schemas": {schema.data_uuid: schema.as_registration() for schema in schemas},
    }
    # Raises urllib's HTTPError on a 4xx; the endpoint's message names no secret.
    AdminClient(keys["endpoint"], admin_token).register(payload)


def read_properties(path: Path) -> dict[str, str]:
    """Read the simple key=value subset of Java properties that keys.properties uses."""
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def write_properties(path: Path, values: Mapping[str, str]) -> None:
    """Write atomically with mode 0600: the file is never visible half-written or readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = [key for key in _FIELDS if key in values] + sorted(set(values) - set(_FIELDS))
    text = "".join(f"{key}={values[key]}\n" for key in ordered)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m datahub_emulator.toolkit")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create keys.properties and register it")
    init.add_argument("--endpoint", required=True)
    init.add_argument("--out", type=Path, required=True)
    init.add_argument("--institution-id", required=True)
    init.add_argument("--ant-institution-id", required=True)
    init.add_argument("--schema", type=Path, action="append", required=True, help="a dataset's schema, JSON")
    init.add_argument("--rotate", action="store_true", help="new keys even if the file exists")
    rotate = commands.add_parser("rotate-data-key", help="give the client of a keys.properties a new data key")
    rotate.add_argument("--keys", type=Path, required=True, help="keys.properties")
    for command in (init, rotate):
        command.add_argument(
            "--admin-token-file",
            type=Path,
            help="the endpoint's admin token (default: $DATAHUB_EMULATOR_ADMIN_TOKEN)",
        )
    args = parser.parse_args(argv)
    admin_token = args.admin_token_file.read_text().strip() if args.admin_token_file else None
    if args.command == "rotate-data-key":
        rotate_data_key(args.keys, admin_token)
        print(f"a new data key is registered and written to {args.keys}")
        return
    info = init_keys(
        endpoint=args.endpoint,
        out=args.out,
        institution_id=args.institution_id,
        ant_institution_id=args.ant_institution_id,
        schemas=[ContractSchema.from_json(json.loads(path.read_text())) for path in args.schema],
        rotate=args.rotate,
        admin_token=admin_token,
    )
    # Nothing secret: the path, the client id and the dataset ids only.
    print(f"{'created' if info.created else 'reused'} keys in {info.path}")
    print(f"clientId={info.client_id}")
    print(f"registered {len(info.data_uuids)} dataset(s) with {args.endpoint}")


if __name__ == "__main__":
    main()
