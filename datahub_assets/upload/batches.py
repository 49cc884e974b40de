"""A day's batches as the partner receives them, read from the sorted snapshot: each row
a JSON object of strings, each batch with the hash of its content (the ledger's key to
"already delivered")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from datahub_assets.partitions import BATCH_ROWS


@dataclass(frozen=True)
class Batch:
    number: int
    rows: list[str]  # each row a JSON object of string values, in contract column order
    content_hash: str


def row_json(record: dict[str, str | None]) -> str:
    """One row as the partner wants it: a JSON object of strings; nulls are omitted."""
    return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False, separators=(",", ":"))


def content_hash(rows: list[str]) -> str:
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def snapshot_row_count(snapshot_path: Path) -> int:
    return pl.scan_parquet(snapshot_path).select(pl.len()).collect().item()


def read_batches(snapshot_path: Path, batches: range) -> list[Batch]:
    """The rows of the given batch numbers, read from the snapshot without loading the rest."""
    if not batches:
        return []
    frame = pl.scan_parquet(snapshot_path).slice(batches.start * BATCH_ROWS, len(batches) * BATCH_ROWS).collect()
    rows = [row_json(r) for r in frame.iter_rows(named=True)]
    out = []
    for i, number in enumerate(batches):
        chunk = rows[i * BATCH_ROWS : (i + 1) * BATCH_ROWS]
        out.append(Batch(number=number, rows=chunk, content_hash=content_hash(chunk)))
    return out
