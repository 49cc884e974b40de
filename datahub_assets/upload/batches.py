"""A day's batches as the partner receives them, read from the sorted snapshot: each row
a JSON object of strings, each batch with the hash of its content (the ledger's key to
"already delivered")."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from datahub_assets.contract import Contract, PartnerType
from datahub_assets.partitions import BATCH_ROWS

_CANONICAL_BIGINT = re.compile(r"-?(0|[1-9][0-9]*)")


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


def batch_problems(contract: Contract, batch: Batch) -> Counter[str]:
    """What in a batch the partner's schema would refuse, counted by kind and column (no
    value): rows over the batch size, rows that are not a JSON object of strings, columns
    the contract lacks, a missing id, and Bigint or Double text that is not canonical."""
    problems: Counter[str] = Counter()
    if len(batch.rows) > BATCH_ROWS:
        problems["rows_over_batch_size"] += len(batch.rows) - BATCH_ROWS
    types = {c.name: c.type for c in contract.columns}
    for text in batch.rows:
        try:
            row = json.loads(text)
        except ValueError:
            problems["not_json"] += 1
            continue
        if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
            problems["not_an_object_of_strings"] += 1
            continue
        if "id" not in row:
            problems["missing_id"] += 1
        for name, value in row.items():
            kind = types.get(name)
            if kind is None:
                problems[f"unknown_column:{name}"] += 1
            elif kind is PartnerType.BIGINT and not _CANONICAL_BIGINT.fullmatch(value):
                problems[f"bad_bigint:{name}"] += 1
            elif kind is PartnerType.DOUBLE and not _is_finite_double(value):
                problems[f"bad_double:{name}"] += 1
    return problems


def _is_finite_double(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
