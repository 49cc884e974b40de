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
# Canonical values are staged under private names, apart from the raw columns: a source
# column may share a contract column's name (`{name: id, source: id}`), and the
# quarantine keeps the raw values.
_VALUE = "_value:"
_ORDER = "_dedup_order"  # the contract's dedup order_by, as text
_POSITION = "_position"  # a row's place in the id-sorted snapshot
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
        # The names the source has are not quoted: a file without a header row turns its
        # first record's values into "column names".
        raise SourceShapeError(
            f"{contract.dataset}: the extract lacks source column(s) {missing} that the contract reads; "
            f"it has {len(available)} other column(s) (a landing file without its header row?)"
        )


def conform(contract: Contract, extract: pl.LazyFrame, snapshot_path: Path, quarantine_path: Path) -> ConformStats:
    """Write the snapshot and the quarantine for one day; return the counts.

    Three passes over the day, each streamed or sorted once, so that the sort carries
    only what the snapshot needs (the canonical values and the source row number):
    1. validate every row once, writing the good rows' canonical values and the
       rejected rows (raw values and reason) side by side;
    2. sort the good rows by id, writing the snapshot and the positions of ids that
       occur more than once;
    3. only if some ids repeat: settle each group by the contract's rule (keep the row
       with the greatest (order_by, canonical text), the later source row on a full tie,
       as one sort over (id, order_by, canonical text) would), drop the superseded rows
       from the snapshot and quarantine them.
    """
    check_source_shape(contract, extract.collect_schema().names())
    # The quarantine keeps the rejected rows' raw values of the columns the contract
    # reads, nothing more.
    raw_columns = [c for c in contract.source_columns if c in extract.collect_schema().names()]
    names = [c.name for c in contract.columns]
    pairs = [_canonical_and_reason(c, contract.max_value_bytes) for c in contract.columns]
    values = [_VALUE + n for n in names]
    vid = _VALUE + "id"

    order = [pl.col(contract.dedup_order_by).cast(pl.String).alias(_ORDER)] if contract.dedup_order_by else []
    staged = (
        extract.with_row_index(SOURCE_ROW)
        .with_columns(*[v.alias(_VALUE + n) for n, (v, _) in zip(names, pairs)], pl.concat_str([r for _, r in pairs], separator="; ", ignore_nulls=True).alias(REASON))
        .with_columns(pl.when(pl.col(REASON) == "").then(None).otherwise(pl.col(REASON)).alias(REASON))
    )

    snapshot_path.parent.mkdir(parents=True, exist_ok=True)
    quarantine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_good = snapshot_path.with_suffix(".staged.parquet")
    tmp_rejected = quarantine_path.with_suffix(".rejected.parquet")
    tmp_repeats = snapshot_path.with_suffix(".repeats.parquet")
    tmp_sorted = snapshot_path.with_suffix(".sorted.parquet")
    try:
        # 1. One validation pass, two outputs (polars shares the common plan).
        pl.collect_all([
            staged.filter(pl.col(REASON).is_null()).select(SOURCE_ROW, *values, *order).sink_parquet(tmp_good, lazy=True),
            staged.filter(pl.col(REASON).is_not_null()).select(SOURCE_ROW, *raw_columns, REASON).sink_parquet(tmp_rejected, lazy=True),
        ])

        # 2. The sort: the snapshot, and where equal ids sit next to each other.
        # Not a stable sort: rows of a repeated id are told apart by their source row
        # in step 3, so their order here does not matter, and only one of them stays.
        ordered = pl.scan_parquet(tmp_good).select(SOURCE_ROW, *values).sort(vid)
        repeated = (pl.col(vid) == pl.col(vid).shift(1)) | (pl.col(vid) == pl.col(vid).shift(-1))
        pl.collect_all([
            ordered.select(pl.col(v).alias(n) for v, n in zip(values, names)).sink_parquet(tmp_sorted, lazy=True),
            ordered.with_row_index(_POSITION).filter(repeated).select(_POSITION, SOURCE_ROW).sink_parquet(tmp_repeats, lazy=True),
        ])

        # 3. Duplicate ids (usually none): the contract's rule decides which row stays.
        repeats = pl.read_parquet(tmp_repeats)
        superseded = pl.DataFrame(schema={_POSITION: repeats.schema[_POSITION], SOURCE_ROW: repeats.schema[SOURCE_ROW]})
        if repeats.height:
            rows = (
                pl.scan_parquet(tmp_good)
                .filter(pl.col(SOURCE_ROW).is_in(repeats[SOURCE_ROW].implode()))
                .join(repeats.lazy(), on=SOURCE_ROW, how="left", maintain_order="left")
                .sort([vid, *([_ORDER] if order else []), *[v for v in values if v != vid]], nulls_last=False, maintain_order=True)
                .collect()
            )
            superseded = rows.filter(pl.col(vid) == pl.col(vid).shift(-1)).select(_POSITION, SOURCE_ROW)
        if superseded.height:
            pl.scan_parquet(tmp_sorted).with_row_index(_POSITION).filter(
                ~pl.col(_POSITION).is_in(superseded[_POSITION].implode())
            ).drop(_POSITION).sink_parquet(snapshot_path)
        else:
            tmp_sorted.replace(snapshot_path)
        duplicates = (
            extract.with_row_index(SOURCE_ROW)
            .filter(pl.col(SOURCE_ROW).is_in(superseded[SOURCE_ROW].implode()))
            .select(SOURCE_ROW, *raw_columns, pl.lit("id: duplicate, superseded by a later row").alias(REASON))
        )
        pl.concat([pl.scan_parquet(tmp_rejected), duplicates]).sort(SOURCE_ROW).sink_parquet(quarantine_path)
    finally:
        for tmp in (tmp_good, tmp_rejected, tmp_repeats, tmp_sorted):
            tmp.unlink(missing_ok=True)

    rejected_rows = pl.scan_parquet(quarantine_path).select(pl.len()).collect().item() - superseded.height
    snapshot_rows = pl.scan_parquet(snapshot_path).select(pl.len()).collect().item()
    return ConformStats(
        source_rows=snapshot_rows + rejected_rows + superseded.height,
        snapshot_rows=snapshot_rows,
        rejected_rows=rejected_rows,
        duplicate_rows=superseded.height,
    )
