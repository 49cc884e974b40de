"""Conform a day's raw extract to its contract, with polars (lazy, streamed to disk).

Every value leaves here in one canonical text form per partner type, so the same
source always gives the same bytes, the same batches and the same content hashes:
- String: the value as is; empty (after trimming) means null.
- Bigint: an optionally signed run of digits that fits in 64 bits, written "24"
  (never "24.0" or "+24").
- Double: a finite float written in the shortest form that parses back to the
  same float ("6.1", "1e+20").
Rows that break the contract go to the quarantine with the first reason found; they
never reach the partner. Ids are de-duplicated (the contract's rule) and the
snapshot is sorted by id, which fixes the batch numbering: batch i = rows
[100 i, 100 i + 100).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from datahub_assets.contract import Column, Contract, PartnerType

REASON = "_reject_reason"
SOURCE_ROW = "_source_row"
# C0 controls except tab, and DEL: they break downstream consumers of the partner's
# JSON and are almost always corruption, so the row is quarantined.
_CONTROL_CHARS = r"[\x00-\x08\x0A-\x1F\x7F]"
# polars' lossy UTF-8 decoding puts U+FFFD where a source file had invalid bytes.
_REPLACEMENT_CHAR = "\ufffd"
_BIGINT_TEXT = r"^[+-]?[0-9]+$"


class SourceShapeError(ValueError):
    """The extract lacks columns the contract reads; the message names them."""


@dataclass(frozen=True)
class ConformStats:
    source_rows: int
    snapshot_rows: int
    rejected_rows: int
    duplicate_rows: int

    @property
    def reject_share(self) -> float:
        return self.rejected_rows / self.source_rows if self.source_rows else 0.0


def _raw(col: Column) -> pl.Expr:
    expr = pl.col(col.source) if col.source else pl.sql_expr(col.expression)
    return expr.cast(pl.String)


def _canonical_and_reason(col: Column, max_value_bytes: int) -> tuple[pl.Expr, pl.Expr]:
    """The canonical text of one column, and the reason it is rejected (null if fine)."""
    raw = _raw(col)
    trimmed = raw.str.strip_chars()
    missing = raw.is_null() | (trimmed.str.len_bytes() == 0)
    name = col.name

    if col.type is PartnerType.STRING:
        value = raw
        reason = (
            pl.when(missing)
            .then(None)
            .when(raw.str.contains(_REPLACEMENT_CHAR, literal=True))
            .then(pl.lit(f"{name}: not valid UTF-8"))
            .when(raw.str.contains(_CONTROL_CHARS))
            .then(pl.lit(f"{name}: contains a control character"))
            .when(raw.str.len_bytes() > max_value_bytes)
            .then(pl.lit(f"{name}: longer than {max_value_bytes} bytes"))
        )
    elif col.type is PartnerType.BIGINT:
        parsed = trimmed.cast(pl.Int64, strict=False)
        value = parsed.cast(pl.String)
        reason = (
            pl.when(missing)
            .then(None)
            .when(~trimmed.str.contains(_BIGINT_TEXT))
            .then(pl.lit(f"{name}: not a Bigint (an integer without decimals)"))
            .when(parsed.is_null())
            .then(pl.lit(f"{name}: Bigint beyond 64 bits"))
        )
    else:  # Double
        parsed = trimmed.cast(pl.Float64, strict=False)
        value = parsed.cast(pl.String)
        reason = (
            pl.when(missing)
            .then(None)
            .when(parsed.is_null())
            .then(pl.lit(f"{name}: not a Double"))
            .when(parsed.is_nan() | parsed.is_infinite())
            .then(pl.lit(f"{name}: Double is not finite (NaN, Inf or out of range)"))
        )

    if col.required:
        reason = pl.when(missing).then(pl.lit(f"{name}: required value missing")).otherwise(reason)
    value = pl.when(missing).then(None).otherwise(value)
    return value.alias(name), reason


def check_source_shape(contract: Contract, available: list[str]) -> None:
    wanted = [c.source for c in contract.columns if c.source]
    if contract.dedup_order_by:
        wanted.append(contract.dedup_order_by)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise SourceShapeError(
            f"{contract.dataset}: the extract lacks source column(s) {missing}; "
            f"it has {available}"
        )


def conform(contract: Contract, extract: pl.LazyFrame, snapshot_path: Path, quarantine_path: Path) -> ConformStats:
    """Write the snapshot and the quarantine for one day; return the counts."""
    check_source_shape(contract, extract.collect_schema().names())
    raw_columns = extract.collect_schema().names()
    names = [c.name for c in contract.columns]
    pairs = [_canonical_and_reason(c, contract.max_value_bytes) for c in contract.columns]

    order = [pl.col(contract.dedup_order_by).cast(pl.String)] if contract.dedup_order_by else []
    staged = (
        extract.with_row_index(SOURCE_ROW)
        .with_columns(*[v for v, _ in pairs], pl.concat_str([r for _, r in pairs], separator="; ", ignore_nulls=True).alias(REASON))
        .with_columns(pl.when(pl.col(REASON) == "").then(None).otherwise(pl.col(REASON)).alias(REASON))
    )
    # Sorting bad rows last and, among good rows, by (id, order_by, canonical text)
    # makes "keep the last row of each id" the same choice on every run.
    good = staged.filter(pl.col(REASON).is_null())
    good = good.sort(["id", *order, *[n for n in names if n != "id"]], nulls_last=False, maintain_order=True)
    superseded = pl.col("id") == pl.col("id").shift(-1)
    good = good.with_columns(
        pl.when(superseded).then(pl.lit("id: duplicate, superseded by a later row")).otherwise(None).alias(REASON)
    )

    snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_good = snapshot_path.with_suffix(".staged.parquet")
    good.select(*names, REASON, *raw_columns, SOURCE_ROW).sink_parquet(tmp_good)

    try:
        pl.scan_parquet(tmp_good).filter(pl.col(REASON).is_null()).select(names).sink_parquet(snapshot_path)
        rejected = staged.filter(pl.col(REASON).is_not_null()).select(SOURCE_ROW, *raw_columns, REASON)
        duplicates = pl.scan_parquet(tmp_good).filter(pl.col(REASON).is_not_null()).select(SOURCE_ROW, *raw_columns, REASON)
        pl.concat([rejected, duplicates]).sort(SOURCE_ROW).sink_parquet(quarantine_path)
    finally:
        tmp_good.unlink(missing_ok=True)

    counts = pl.scan_parquet(quarantine_path).select(
        pl.len().alias("rejected"),
        pl.col(REASON).str.starts_with("id: duplicate").sum().alias("duplicates"),
    ).collect().row(0, named=True)
    snapshot_rows = pl.scan_parquet(snapshot_path).select(pl.len()).collect().item()
    return ConformStats(
        source_rows=snapshot_rows + counts["rejected"],
        snapshot_rows=snapshot_rows,
        rejected_rows=counts["rejected"] - counts["duplicates"],
        duplicate_rows=counts["duplicates"],
    )
