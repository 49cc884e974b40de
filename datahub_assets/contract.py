"""Data contracts: one YAML file per dataset, agreed with the partner.

A contract says what the partner receives (the dataUuid and the columns with their
partner types), where each column comes from in the source, and the rules for nulls
and duplicate ids. Everything downstream (assets, checks, the endpoint's schema) is
derived from it, so adding a dataset means adding a file, not code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONTRACTS_DIR = Path(__file__).parent / "contracts"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a dataset: it names the assets


class PartnerType(str, Enum):
    STRING = "String"
    BIGINT = "Bigint"
    DOUBLE = "Double"


class ContractError(ValueError):
    """A contract file that cannot be used; the message names the file and the field."""


# A column's `expression` is polars SQL over source columns. Only scalar functions on the
# row's own values are allowed: polars SQL also has table functions (read_csv, …) and
# subqueries, which could read any file or URL the process can.
ALLOWED_FUNCTIONS = frozenset(
    """abs cast ceil ceiling coalesce concat concat_ws date ends_with floor greatest initcap least left length
    lower lpad ltrim nullif octet_length replace reverse right round rpad rtrim split_part starts_with strpos
    substr substring trim upper""".split()
)
_SQL_WORDS = frozenset(
    """and as asc between bigint boolean case date desc double else end false float ilike in int integer is like
    not null or real smallint text then true varchar when""".split()
)
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_WORD = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_]*)(\s*\()?')


def expression_columns(expression: str) -> list[str]:
    """The source columns an expression reads; ValueError names what is not allowed."""
    code = _LITERAL.sub("''", expression)
    if ";" in code:
        raise ValueError("one expression only (no ';')")
    for match in _WORD.finditer(code):
        quoted, word, call = match.groups()
        if quoted is not None:
            continue
        if word.lower() in {"select", "from", "join", "with", "union", "values", "table", "into", "over", "exists"}:
            raise ValueError(f"{word.upper()} is not allowed: an expression reads the row's own columns only")
        if call and word.lower() not in ALLOWED_FUNCTIONS | _SQL_WORDS:
            raise ValueError(f"function {word}() is not allowed (allowed: {', '.join(sorted(ALLOWED_FUNCTIONS))})")
    try:
        import polars as pl

        return pl.sql_expr(expression).meta.root_names()
    except Exception as error:  # noqa: BLE001 - polars' message could quote the expression's data
        raise ValueError(f"not a valid expression ({error.__class__.__name__})") from None


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
    upload_runs: int
    max_reject_share: float
    max_row_count_change: float
    max_value_bytes: int
    retention_days: int
    owners: tuple[str, ...]
    path: Path

    @property
    def source_columns(self) -> list[str]:
        """Every source column the contract reads: the only ones an extract keeps."""
        names: list[str] = []
        for c in self.columns:
            names += [c.source] if c.source else expression_columns(c.expression or "")
        if self.dedup_order_by:
            names.append(self.dedup_order_by)
        return list(dict.fromkeys(names))

    def partner_schema(self) -> dict:
        """The schema agreed with the partner (and registered with the local endpoint)."""
        return {
            "dataUuid": self.data_uuid,
            "columns": {c.name: c.type.value for c in self.columns},
            "required": [c.name for c in self.columns if c.required],
        }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _SourceFile(_Strict):
    kind: Literal["table", "files"]
    table: str | None = Field(default=None, min_length=1)
    date_column: str | None = Field(default=None, min_length=1)
    pattern: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> _SourceFile:
        if self.kind == "table" and not (self.table and self.date_column):
            raise ValueError("source kind 'table' needs 'table' and 'date_column'")
        if self.kind == "table" and self.pattern:
            raise ValueError("source kind 'table' takes no 'pattern'")
        if self.kind == "files" and "{date}" not in (self.pattern or ""):
            raise ValueError("source kind 'files' needs a 'pattern' containing {date}")
        if self.kind == "files" and (self.table or self.date_column):
            raise ValueError("source kind 'files' takes no 'table' or 'date_column'")
        return self


class _ColumnFile(_Strict):
    # A partner field name: letters, digits and underscores, not starting with a digit.
    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
    type: PartnerType
    required: bool = False
    source: str | None = Field(default=None, min_length=1)
    expression: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_origin(self) -> _ColumnFile:
        if (self.source is None) == (self.expression is None):
            raise ValueError("give exactly one of 'source' or 'expression'")
        return self

    @model_validator(mode="after")
    def _safe_expression(self) -> _ColumnFile:
        if self.expression is not None:
            try:
                expression_columns(self.expression)
            except ValueError as error:
                raise ValueError(f"column {self.name}: expression refused: {error}") from None
        return self


class _DedupFile(_Strict):
    keep: Literal["last"] = "last"
    order_by: str | None = Field(default=None, min_length=1)


class _ContractFile(_Strict):
    dataset: Annotated[str, Field(pattern=_NAME.pattern)]
    # The partner's id of the data asset: 32 lowercase hex digits.
    data_uuid: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    description: str = ""
    source: _SourceFile
    columns: list[_ColumnFile] = Field(min_length=1)
    nulls: Literal["omit"] = "omit"  # a missing key means null to the partner
    dedup: _DedupFile = _DedupFile()
    start_date: date = date(2026, 1, 1)
    batch_ranges: int = Field(default=32, ge=1, le=1000, strict=True)
    # The fan-out sends a date's ranges in this many runs, each a contiguous block of
    # ranges with one JVM. dagster.yaml's upload pool holds these plus the backfill run.
    upload_runs: int = Field(default=4, ge=1, le=1000, strict=True)
    max_reject_share: float = Field(default=0.05, ge=0, le=1)
    max_row_count_change: float = Field(default=0.5, ge=0)
    max_value_bytes: int = Field(default=65536, gt=0, strict=True)
    # Days of extracts, snapshots and quarantines the lake keeps; 0 keeps them forever.
    retention_days: int = Field(default=30, ge=0, strict=True)
    # Who answers for the dataset, as Dagster shows it: e-mail addresses or team:<name>.
    owners: list[Annotated[str, Field(pattern=r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")]] = []

    @field_validator("start_date", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        if isinstance(value, str):
            return date.fromisoformat(value)  # a ValueError names the bad date
        return value

    @field_validator("columns")
    @classmethod
    def _columns(cls, columns: list[_ColumnFile]) -> list[_ColumnFile]:
        names = [c.name for c in columns]
        if "id" not in names:
            raise ValueError("the partner requires an 'id' column")
        if len(set(names)) != len(names):
            raise ValueError("duplicate column names")
        return columns


def _describe(error: ValidationError) -> str:
    """Each problem as `field: what is wrong` (pydantic's message says what is allowed)."""
    problems = []
    for e in error.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in e["loc"]) or "(top level)"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key (a typo? see docs/contracts.md for the keys a contract takes)"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def load_contract(path: Path) -> Contract:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ContractError(f"{path.name}: not valid YAML ({error.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{path.name}: not a YAML mapping")
    try:
        spec = _ContractFile.model_validate(raw)
    except ValidationError as error:
        raise ContractError(f"{path.name}: {_describe(error)}") from None
    return Contract(
        dataset=spec.dataset,
        data_uuid=spec.data_uuid,
        description=spec.description.strip(),
        source=SourceSpec(
            kind=spec.source.kind, table=spec.source.table, date_column=spec.source.date_column, pattern=spec.source.pattern
        ),
        columns=tuple(
            Column(name=c.name, type=c.type, required=c.required or c.name == "id", source=c.source, expression=c.expression)
            for c in spec.columns
        ),
        nulls=spec.nulls,
        dedup_order_by=spec.dedup.order_by,
        start_date=spec.start_date.isoformat(),
        batch_ranges=spec.batch_ranges,
        upload_runs=spec.upload_runs,
        max_reject_share=spec.max_reject_share,
        max_row_count_change=spec.max_row_count_change,
        max_value_bytes=spec.max_value_bytes,
        retention_days=spec.retention_days,
        owners=tuple(spec.owners),
        path=path,
    )


def load_contracts(directory: Path = DEFAULT_CONTRACTS_DIR) -> list[Contract]:
    contracts = [load_contract(p) for p in sorted(directory.glob("*.yaml"))]
    seen: set[str] = set()
    for c in contracts:
        if c.dataset in seen:
            raise ContractError(f"{c.path.name}: dataset '{c.dataset}' is defined twice")
        seen.add(c.dataset)
    return contracts
