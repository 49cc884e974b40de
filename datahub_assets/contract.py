"""Data contracts: one YAML file per dataset, agreed with the partner.

A contract says what the partner receives (the dataUuid and the columns with their
partner types), where each column comes from in the source, and the rules for nulls
and duplicate ids. Everything downstream (assets, checks, the endpoint's schema) is
derived from it, so adding a dataset means adding a file, not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import yaml

DEFAULT_CONTRACTS_DIR = Path(__file__).parent / "contracts"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class PartnerType(str, Enum):
    STRING = "String"
    BIGINT = "Bigint"
    DOUBLE = "Double"


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Column:
    name: str
    type: PartnerType
    required: bool
    source: str | None = None
    expression: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "table" or "files"
    table: str | None = None
    date_column: str | None = None
    pattern: str | None = None  # files: relative path with {date}, e.g. "user_profile/{date}.csv"


@dataclass(frozen=True)
class Contract:
    dataset: str
    data_uuid: str
    description: str
    source: SourceSpec
    columns: tuple[Column, ...]
    nulls: str
    dedup_order_by: str | None
    start_date: str
    batch_ranges: int
    max_reject_share: float
    max_row_count_change: float
    max_value_bytes: int
    path: Path

    def partner_schema(self) -> dict:
        """The schema agreed with the partner (and registered with the local endpoint)."""
        return {
            "dataUuid": self.data_uuid,
            "columns": {c.name: c.type.value for c in self.columns},
            "required": [c.name for c in self.columns if c.required],
        }


def _fail(path: Path, msg: str) -> ContractError:
    return ContractError(f"{path.name}: {msg}")


def load_contract(path: Path) -> Contract:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise _fail(path, "not a YAML mapping")
    for key in ("dataset", "data_uuid", "source", "columns"):
        if key not in raw:
            raise _fail(path, f"missing '{key}'")
    dataset = str(raw["dataset"])
    if not _NAME.match(dataset):
        raise _fail(path, "dataset must be lower snake case (it names the assets)")

    src = raw["source"]
    kind = src.get("kind")
    if kind == "table":
        if not src.get("table") or not src.get("date_column"):
            raise _fail(path, "source kind 'table' needs 'table' and 'date_column'")
    elif kind == "files":
        if "{date}" not in str(src.get("pattern", "")):
            raise _fail(path, "source kind 'files' needs a 'pattern' containing {date}")
    else:
        raise _fail(path, "source.kind must be 'table' or 'files'")
    source = SourceSpec(
        kind=kind, table=src.get("table"), date_column=src.get("date_column"), pattern=src.get("pattern")
    )

    columns = []
    for i, c in enumerate(raw["columns"]):
        try:
            ptype = PartnerType(c["type"])
        except (KeyError, ValueError):
            raise _fail(path, f"column {i}: type must be one of {[t.value for t in PartnerType]}") from None
        if bool(c.get("source")) == bool(c.get("expression")):
            raise _fail(path, f"column {c.get('name')}: give exactly one of 'source' or 'expression'")
        columns.append(
            Column(
                name=str(c["name"]),
                type=ptype,
                required=bool(c.get("required", False)) or c["name"] == "id",
                source=c.get("source"),
                expression=c.get("expression"),
            )
        )
    names = [c.name for c in columns]
    if "id" not in names:
        raise _fail(path, "the partner requires an 'id' column")
    if len(set(names)) != len(names):
        raise _fail(path, "duplicate column names")

    nulls = raw.get("nulls", "omit")
    if nulls != "omit":
        raise _fail(path, "nulls: only 'omit' is supported (a missing key means null to the partner)")
    dedup = raw.get("dedup") or {}
    if dedup and dedup.get("keep", "last") != "last":
        raise _fail(path, "dedup.keep: only 'last' is supported")

    batch_ranges = int(raw.get("batch_ranges", 32))
    if not 1 <= batch_ranges <= 1000:
        raise _fail(path, "batch_ranges must be between 1 and 1000")

    return Contract(
        dataset=dataset,
        data_uuid=str(raw["data_uuid"]),
        description=str(raw.get("description", "")).strip(),
        source=source,
        columns=tuple(columns),
        nulls=nulls,
        dedup_order_by=dedup.get("order_by"),
        start_date=str(raw.get("start_date", "2026-01-01")),
        batch_ranges=batch_ranges,
        max_reject_share=float(raw.get("max_reject_share", 0.05)),
        max_row_count_change=float(raw.get("max_row_count_change", 0.5)),
        max_value_bytes=int(raw.get("max_value_bytes", 65536)),
        path=path,
    )


def load_contracts(directory: Path = DEFAULT_CONTRACTS_DIR) -> list[Contract]:
    contracts = [load_contract(p) for p in sorted(directory.glob("*.yaml"))]
    seen: set[str] = set()
    for c in contracts:
        if c.dataset in seen:
            raise _fail(c.path, f"dataset '{c.dataset}' is defined twice")
        seen.add(c.dataset)
    return contracts
