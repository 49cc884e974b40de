"""Batch numbering and batch ranges: pure functions over a sorted snapshot.

The snapshot is sorted by id, so batch i is rows [100 i, 100 i + 100) on every run.
Each day's batches are cut into a fixed number of contiguous ranges; a range key is
the zero-padded range number ("00".."31"), and its slice depends only on the day's
batch count. Never one partition per batch: 250k partitions a day would sink the UI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

BATCH_ROWS = 100  # the partner's batch size


@dataclass(frozen=True)
class Batch:
    number: int
    rows: list[str]  # each row a JSON object of string values, in contract column order
    content_hash: str


def range_keys(range_count: int) -> list[str]:
    width = len(str(range_count - 1))
    return [str(k).zfill(width) for k in range(range_count)]


def batch_count(row_count: int) -> int:
    return -(-row_count // BATCH_ROWS)


def batch_slice(range_index: int, range_count: int, total_batches: int) -> range:
    """The batch numbers of one range: contiguous, disjoint, and covering every batch."""
    if not 0 <= range_index < range_count:
        raise ValueError(f"range {range_index} outside 0..{range_count - 1}")
    return range(range_index * total_batches // range_count, (range_index + 1) * total_batches // range_count)


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
