"""Property tests (hypothesis): canonical text round-trips, the same snapshot always gives
the same batches, and batch ranges cover every batch exactly once.

Values go through the real `conform` (polars), and the string round trip continues
through the platform's SDK adapter, the Java stand-in SDK and the endpoint, read back
with the wallet's data key.
"""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import string
import tempfile
from pathlib import Path

import polars as pl
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support import CONTRACT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datahub_assets.snapshot.conform import conform
from datahub_assets.partitions import BATCH_ROWS, batch_count, batch_slice, range_keys
from datahub_assets.upload.batches import read_batches, row_json
from datahub_assets.upload.sdk import open_client, upload_batch
from datahub_emulator import checks
from datahub_emulator.toolkit import read_properties

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Text the contract passes unchanged: no C0 control but tab, no DEL, no U+FFFD, not
# blank, within the length limit. Surrogates cannot occur in a UTF-8 source.
SAFE_TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters=[chr(c) for c in [*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F, 0xFFFD]],
    ),
    min_size=1,
    max_size=60,
).filter(lambda s: s.strip() != "")

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def canonical(column: str, values: list[str]) -> list[str | None]:
    """The snapshot's text for each value of `column` (source name), in input order."""
    n = len(values)
    frame = pl.DataFrame(
        {
            "user_id": [f"{i:06d}" for i in range(n)],
            "user_name": ["n"] * n,
            "age": ["1"] * n,
            "screen_width": ["1"] * n,
            "updated_at": ["t"] * n,
        }
    ).with_columns(pl.Series(column, values, dtype=pl.String))
    with tempfile.TemporaryDirectory() as tmp:
        stats = conform(CONTRACT, frame.lazy(), Path(tmp) / "s.parquet", Path(tmp) / "q.parquet")
        assert stats.rejected_rows == 0, pl.read_parquet(Path(tmp) / "q.parquet").to_dicts()
        snapshot = pl.read_parquet(Path(tmp) / "s.parquet")
    name = {c.source: c.name for c in CONTRACT.columns}[column]
    return snapshot.sort("id")[name].to_list()


@SETTINGS
@given(st.lists(INT64, min_size=1, max_size=40), st.sampled_from(["{}", "+{}", " {} ", "00{}"]))
@example([0, -1, 2**63 - 1, -(2**63)], "{}")
def test_a_bigint_round_trips_exactly(numbers: list[int], spelling: str) -> None:
    texts = [spelling.format(x) if x >= 0 else str(x) for x in numbers]
    out = canonical("age", texts)
    assert out == [str(x) for x in numbers]  # "24", never "24.0" or "+24"
    assert all(checks.TYPE_VALIDATORS["Bigint"](t) for t in out)  # the partner accepts it


@SETTINGS
@given(st.lists(FINITE, min_size=1, max_size=40), st.sampled_from([repr, lambda x: format(x, ".17g")]))
@example([5e-324, -5e-324, 2.2250738585072014e-308, -0.0, 0.0, 1.7976931348623157e308, 0.1, 1e16, 123456789.0], repr)
def test_a_double_round_trips_exactly(numbers: list[float], spelling) -> None:  # noqa: ANN001
    out = canonical("screen_width", [spelling(x) for x in numbers])
    for x, text in zip(numbers, out):
        back = float(text)
        assert back == x and math.copysign(1.0, back) == math.copysign(1.0, x), (x, text)
        assert checks.TYPE_VALIDATORS["Double"](text), text  # the partner accepts it


@SETTINGS
@given(st.lists(SAFE_TEXT, min_size=1, max_size=40))
@example(['"', "\\", "a\tb", "é😀", "a\u2028\u2029", "</script>", " x ", "{}[],:"])
def test_a_string_round_trips_through_conform_and_json_unchanged(texts: list[str]) -> None:
    out = canonical("user_name", texts)
    assert out == texts
    for t in out:
        assert json.loads(row_json({"id": "1", "userName": t})) == {"id": "1", "userName": t}


@pytest.fixture
def java_client(sdk_client_factory, keys_file):  # noqa: ANN001, ANN201
    """The platform's adapter (open_client) on a JVM with the stand-in SDK."""
    sdk_client_factory(keys_file)  # starts the JVM and closes the clients at the end
    client = open_client(str(keys_file))
    yield client
    client.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(SAFE_TEXT, min_size=1, max_size=BATCH_ROWS))
@example(['"\\"', "😀" * 30, "\u2028", "\t\t", "a\\u0000b", "\U0010ffff"])
def test_a_string_reaches_the_partner_byte_for_byte(java_client, keys_file, datahub_endpoint, user_profile_uuid, texts):  # noqa: ANN001
    datahub_endpoint.reset()
    rows = [row_json({"id": f"p{i}", "userName": t}) for i, t in enumerate(texts)]
    outcome = upload_batch(java_client, user_profile_uuid, rows)
    assert (outcome.status, outcome.code) == ("S", "SUCCESS")
    cipher = AESGCM(base64.b64decode(read_properties(keys_file)["dataKey"]))
    conn = sqlite3.connect(f"file:{datahub_endpoint.db_path}?mode=ro", uri=True)
    try:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT row_ciphertext FROM rows")]
    finally:
        conn.close()

    def plain(column: str, encoded: str) -> str:
        raw = base64.b64decode(encoded)
        return cipher.decrypt(raw[:12], raw[12:], f"{user_profile_uuid}\n{column}".encode()).decode()

    got = {plain("id", r["id"]): plain("userName", r["userName"]) for r in stored}
    assert got == {f"p{i}": t for i, t in enumerate(texts)}


ROW = st.fixed_dictionaries(
    {
        "user_id": st.text(alphabet=string.ascii_lowercase[:4], min_size=1, max_size=2),  # many duplicates
        "user_name": st.sampled_from(["a", "b", "c", " a", "a "]),
        "age": st.sampled_from(["1", "+1", "01", "2", "x", ""]),
        "screen_width": st.sampled_from(["1.5", "1.50", "1.5e0", "2", "NaN", ""]),
        "updated_at": st.sampled_from(["t1", "t2", "t2", None]),
    }
)


@SETTINGS
@given(st.lists(ROW, min_size=0, max_size=300), st.randoms(use_true_random=False))
def test_the_same_source_rows_in_any_order_give_the_same_batches(rows: list[dict], rnd) -> None:  # noqa: ANN001
    shuffled = rows[:]
    rnd.shuffle(shuffled)
    hashes = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, source in enumerate([rows, shuffled, rows]):
            frame = pl.DataFrame(source, schema={k: pl.String for k in ROW_KEYS})
            snapshot = Path(tmp) / f"s{i}.parquet"
            conform(CONTRACT, frame.lazy(), snapshot, Path(tmp) / f"q{i}.parquet")
            total = batch_count(pl.read_parquet(snapshot).height)
            hashes.append([b.content_hash for b in read_batches(snapshot, range(total))])
    assert hashes[0] == hashes[1] == hashes[2]


ROW_KEYS = ["user_id", "user_name", "age", "screen_width", "updated_at"]


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2_000_000), st.integers(min_value=1, max_value=1000))
@example(0, 1)
@example(250_000, 32)
@example(31, 32)
def test_the_batch_ranges_cover_every_batch_exactly_once(total: int, range_count: int) -> None:
    keys = range_keys(range_count)
    assert len(set(keys)) == range_count and sorted(keys) == keys  # zero-padded: text order = number order
    slices = [batch_slice(i, range_count, total) for i in range(len(keys))]
    # Contiguous, disjoint, complete and in order: each range starts where the last ended.
    assert slices[0].start == 0 and slices[-1].stop == total
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:])) and {s.step for s in slices} == {1}
    assert max(map(len, slices)) - min(map(len, slices)) <= 1  # balanced
    with pytest.raises(ValueError):
        batch_slice(range_count, range_count, total)
