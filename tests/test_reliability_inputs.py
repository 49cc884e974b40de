"""Bad input at the contract level: every kind gets a clear outcome (quarantined with its
reason, or an error that names the problem), nothing crashes, and nothing malformed
reaches the partner.

Plain `conform` for the value rules; a CSV landing file through the real extract,
snapshot and upload (stand-in SDK, endpoint) for bytes, shapes and the round trip.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support import CONTRACT, DAY, Day, write_contract

from datahub_assets.contract import load_contract
from datahub_assets.extract.sources import SourceFormatError, landing_file_to_parquet
from datahub_assets.snapshot.conform import REASON, SourceShapeError, conform
from datahub_emulator.toolkit import read_properties

GOOD = {"user_id": "u-1", "user_name": "Ann", "age": "24", "screen_width": "6.1", "updated_at": "2026-11-26T08:00"}
MAX = CONTRACT.max_value_bytes  # 65,536


def conform_rows(tmp_path: Path, rows: list[dict], contract=CONTRACT) -> tuple[pl.DataFrame, pl.DataFrame]:  # noqa: ANN001
    frame = pl.DataFrame(rows, schema={k: pl.String for k in rows[0]})
    snapshot, quarantine = tmp_path / "snapshot.parquet", tmp_path / "quarantine.parquet"
    conform(contract, frame.lazy(), snapshot, quarantine)
    return pl.read_parquet(snapshot), pl.read_parquet(quarantine)


# (source column, raw value, canonical value sent to the partner) for accepted values;
# None: the value is left out of the row (the contract's null rule).
ACCEPTED = [
    ("age", "+24", "24"),
    ("age", "007", "7"),
    ("age", "-0", "0"),
    ("age", " 42 ", "42"),
    ("age", "9223372036854775807", "9223372036854775807"),
    ("age", "-9223372036854775808", "-9223372036854775808"),
    ("age", "", None),
    ("age", "   ", None),
    ("screen_width", "6.1", "6.1"),
    ("screen_width", " 6.1 ", "6.1"),
    ("screen_width", "1E5", "100000.0"),
    ("screen_width", ".5", "0.5"),
    ("screen_width", "-0.0", "-0.0"),
    ("screen_width", "5e-324", "5e-324"),  # the smallest subnormal
    ("screen_width", "1.7976931348623157e308", "1.7976931348623157e+308"),
    ("screen_width", "1e-400", "0.0"),  # underflows to zero: the nearest double
    ("user_name", "tab\tinside", "tab\tinside"),
    ("user_name", 'q"uote\\back/slash {"json": [1]} </script>', 'q"uote\\back/slash {"json": [1]} </script>'),
    ("user_name", "emoji 😀 and U+2028 \u2028 and é", "emoji 😀 and U+2028 \u2028 and é"),
    ("user_name", " padded ", " padded "),
    ("user_name", "x" * MAX, "x" * MAX),  # at the limit
    ("user_name", "", None),
]

# (source column, raw value, reason the quarantine records)
REJECTED = [
    ("user_id", None, "id: required value missing"),
    ("user_id", "", "id: required value missing"),
    ("user_id", "  ", "id: required value missing"),
    ("age", "24.5", "userAge: not a Bigint"),
    ("age", "24.0", "userAge: not a Bigint"),
    ("age", "1e3", "userAge: not a Bigint"),
    ("age", "9223372036854775808", "userAge: Bigint beyond 64 bits"),
    ("age", "-9223372036854775809", "userAge: Bigint beyond 64 bits"),
    ("age", "99999999999999999999", "userAge: Bigint beyond 64 bits"),
    ("age", "１２", "userAge: not a Bigint"),  # full-width digits
    ("screen_width", "NaN", "screenWidth: Double is not finite"),
    ("screen_width", "nan", "screenWidth: Double is not finite"),
    ("screen_width", "Inf", "screenWidth: Double is not finite"),
    ("screen_width", "-Infinity", "screenWidth: Double is not finite"),
    ("screen_width", "1e400", "screenWidth: Double is not finite"),
    ("screen_width", "-1e400", "screenWidth: Double is not finite"),
    ("screen_width", "wide", "screenWidth: not a Double"),
    ("screen_width", "6,1", "screenWidth: not a Double"),
    ("screen_width", "0x10", "screenWidth: not a Double"),
    ("user_name", "bell\x07", "userName: contains a control character"),
    ("user_name", "nul\x00", "userName: contains a control character"),
    ("user_name", "line\nbreak", "userName: contains a control character"),
    ("user_name", "cr\r", "userName: contains a control character"),
    ("user_name", "del\x7f", "userName: contains a control character"),
    ("user_name", "bad \ufffd byte", "userName: not valid UTF-8"),
    ("user_name", "x" * (MAX + 1), "userName: longer than 65536 bytes"),
    ("user_name", "y" * 1_000_000, "userName: longer than 65536 bytes"),
    ("user_id", "id\x1b", "id: contains a control character"),
]


def short(value: str | None) -> str:
    return repr(value if value is None or len(value) < 30 else value[:12] + f"...({len(value)})")


@pytest.mark.parametrize(("column", "raw", "canonical"), ACCEPTED, ids=[f"{c}={short(r)}" for c, r, _ in ACCEPTED])
def test_accepted_values_leave_in_canonical_form(tmp_path, column, raw, canonical):
    snapshot, quarantine = conform_rows(tmp_path, [{**GOOD, column: raw}])
    assert quarantine.height == 0
    name = {c.source: c.name for c in CONTRACT.columns}[column]
    assert snapshot.row(0, named=True)[name] == canonical


@pytest.mark.parametrize(("column", "raw", "reason"), REJECTED, ids=[f"{c}={short(r)}" for c, r, _ in REJECTED])
def test_rejected_values_are_quarantined_with_their_reason(tmp_path, column, raw, reason):
    snapshot, quarantine = conform_rows(tmp_path, [{**GOOD, column: raw}, {**GOOD, "user_id": "u-2"}])
    assert snapshot["id"].to_list() == ["u-2"]  # the other row goes on
    (row,) = quarantine.rows(named=True)
    assert row[REASON].startswith(reason)
    assert row[column] == raw  # the quarantine keeps the raw value for the data team


def test_duplicate_ids_keep_the_latest_row_whatever_the_source_order(tmp_path):
    rows = [
        {**GOOD, "user_id": "d", "user_name": "old", "updated_at": "2026-11-26T01:00"},
        {**GOOD, "user_id": "d", "user_name": "new", "updated_at": "2026-11-26T09:00"},
        {**GOOD, "user_id": "d", "user_name": "mid", "updated_at": "2026-11-26T05:00"},
        # A tie on updated_at: the canonical text breaks it, the same on every run.
        {**GOOD, "user_id": "t", "user_name": "b", "updated_at": "2026-11-26T09:00"},
        {**GOOD, "user_id": "t", "user_name": "a", "updated_at": "2026-11-26T09:00"},
    ]
    outcomes = []
    for i, order in enumerate([rows, rows[::-1], rows[2:] + rows[:2]]):
        snapshot, quarantine = conform_rows(tmp_path / str(i), order)
        outcomes.append(snapshot)
        assert quarantine.height == 3
        assert set(quarantine[REASON]) == {"id: duplicate, superseded by a later row"}
    assert all(o.equals(outcomes[0]) for o in outcomes)
    assert outcomes[0].select("id", "userName").rows() == [("d", "new"), ("t", "b")]


def test_a_source_column_named_like_a_contract_column_is_no_clash(tmp_path):
    """Bug fixed in conform: `{name: id, source: id}`, or an extra source column called
    `userName`, made polars fail with DuplicateError; raw and canonical values now stay apart."""
    contract = load_contract(
        write_contract(
            tmp_path / "contracts",
            columns=[{**c, "source": "id"} if c["name"] == "id" else c for c in _raw_columns()],
        )
        / "user_profile.yaml"
    )
    rows = [
        {"id": " 7 ", "user_name": "a", "age": "+3", "screen_width": "1E1", "updated_at": "t", "userName": "extra"},
        {"id": "8", "user_name": "b", "age": "x", "screen_width": "2", "updated_at": "t", "userName": "extra"},
    ]
    snapshot, quarantine = conform_rows(tmp_path, rows, contract)
    assert snapshot.rows() == [(" 7 ", "a", "3", "10.0")]
    assert quarantine.select("id", "age").rows() == [("8", "x")]  # raw values kept
    assert "userName" not in quarantine.columns  # a source column the contract does not read is not kept


def _raw_columns() -> list[dict]:
    return yaml.safe_load(CONTRACT.path.read_text())["columns"]


def test_a_source_lacking_a_contract_column_is_an_error_naming_it(tmp_path):
    rows = [{k: v for k, v in GOOD.items() if k != "screen_width"}]
    with pytest.raises(SourceShapeError, match=r"lacks source column\(s\) \['screen_width'\]"):
        conform_rows(tmp_path, rows)


# --- a CSV landing file through the platform -------------------------------------------

FILES_SOURCE = {"kind": "files", "pattern": "user_profile/{date}.csv"}
HEADER = b"user_id,user_name,age,screen_width,updated_at,legacy_flag\n"


def csv_line(*fields: bytes) -> bytes:
    def quote(f: bytes) -> bytes:
        return b'"' + f.replace(b'"', b'""') + b'"' if any(c in f for c in b'",\n\r') else f

    return b",".join(quote(f) for f in fields) + b"\n"


# Good rows whose ids and names carry the characters most likely to break a JSON or CSV
# layer; they must reach the partner byte for byte.
SPECIAL_GOOD = [
    ('q"1', 'say "hi"'),
    ("back\\slash\\", "C:\\path\\n"),
    ("{json}", '{"a": [1, 2], "b": null}'),
    ("comma,id", "a,b;c|d"),
    ("uni-é-中-😀", "Zoë 王 😀 \u2028 \u2029"),
    ("<tag>&amp;", "</script><script>alert(1)</script>"),
    ("tab\tid", "tab\tname"),
    ("'single'", "it's"),
    ("long", "L" * MAX),
    ("spaces", "  two  spaces  "),
]


def _files_day(tmp_path: Path, sdk_jar: Path, keys_file: Path):  # noqa: ANN202
    with dg.instance_for_test() as instance:
        contracts = write_contract(tmp_path / "contracts", source=FILES_SOURCE, batch_ranges=2)
        yield Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)


@pytest.fixture
def files_day(tmp_path, sdk_jar, keys_file):  # noqa: ANN001
    """A landing-file day that uploads to the endpoint."""
    yield from _files_day(tmp_path, sdk_jar, keys_file)


@pytest.fixture
def extract_only_day(tmp_path):  # noqa: ANN001
    """A landing-file day for extract and snapshot only: no endpoint, no SDK."""
    yield from _files_day(tmp_path, tmp_path / "no-sdk.jar", tmp_path / "no-keys.properties")


def landing_file(day: Day) -> Path:
    path = day.landing_dir / "user_profile" / f"{DAY}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def decrypted_rows(endpoint_db: Path, keys_file: Path, data_uuid: str) -> list[dict]:
    """What the partner holds, decrypted with the wallet's own data key (the endpoint
    itself stores only ciphertext)."""
    cipher = AESGCM(base64.b64decode(read_properties(keys_file)["dataKey"]))
    conn = sqlite3.connect(f"file:{endpoint_db}?mode=ro", uri=True)
    try:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT row_ciphertext FROM rows WHERE data_uuid = ?", (data_uuid,))]
    finally:
        conn.close()
    rows = []
    for row in stored:
        plain = {}
        for column, encoded in row.items():
            raw = base64.b64decode(encoded)
            plain[column] = cipher.decrypt(raw[:12], raw[12:], f"{data_uuid}\n{column}".encode()).decode()
        rows.append(plain)
    return rows


def test_a_landing_file_of_bad_bytes_and_values_delivers_exactly_the_good_rows(files_day, datahub_endpoint, keys_file):
    day = files_day
    good = [csv_line(i.encode(), n.encode(), b"31", b"6.5", b"t", b"x") for i, n in SPECIAL_GOOD]
    good += [csv_line(f"plain-{k}".encode(), b"Ann", str(k).encode(), b"1.25", b"t", b"") for k in range(250)]
    bad = {
        b"bad-utf8": csv_line(b"bad-utf8", b"caf\xe9 \xff\xfe", b"1", b"1", b"t", b""),
        b"nul": csv_line(b"nul", b"a\x00b", b"1", b"1", b"t", b""),
        b"newline": csv_line(b"newline", b"two\r\nlines", b"1", b"1", b"t", b""),
        b"bell": csv_line(b"bell", b"ding\x07", b"1", b"1", b"t", b""),
        b"huge": csv_line(b"huge", b"H" * 1_000_000, b"1", b"1", b"t", b""),
        b"decimal-age": csv_line(b"decimal-age", b"a", b"24.5", b"1", b"t", b""),
        b"big-age": csv_line(b"big-age", b"a", b"9223372036854775808", b"1", b"t", b""),
        b"nan": csv_line(b"nan", b"a", b"1", b"NaN", b"t", b""),
        b"inf": csv_line(b"inf", b"a", b"1", b"inf", b"t", b""),
        b"1e400": csv_line(b"1e400", b"a", b"1", b"1e400", b"t", b""),
        b"(missing id)": csv_line(b"", b"a", b"1", b"1", b"t", b""),
        b"(blank id)": csv_line(b"   ", b"a", b"1", b"1", b"t", b""),
        b"superseded": csv_line(b"plain-7", b"older", b"1", b"1", b"s", b""),  # updated_at s < t
    }
    landing_file(day).write_bytes(b"\xef\xbb\xbf" + HEADER + b"".join(good[:120]) + b"".join(bad.values()) + b"".join(good[120:]))

    day.prepare()

    snapshot = day.snapshot_frame()
    quarantine = day.quarantine_frame()
    assert snapshot.height == len(good) and quarantine.height == len(bad)
    assert quarantine[REASON].null_count() == 0
    reasons = dict(zip(quarantine["user_id"].fill_null("(missing id)"), quarantine[REASON]))
    assert reasons["bad-utf8"] == "userName: not valid UTF-8"
    assert reasons["huge"] == "userName: longer than 65536 bytes"
    assert reasons["   "] == "id: required value missing" and reasons["(missing id)"] == "id: required value missing"
    assert reasons["plain-7"] == "id: duplicate, superseded by a later row"
    assert {k for k, v in reasons.items() if "control character" in v} == {"nul", "newline", "bell"}
    assert "legacy_flag" not in snapshot.columns  # an extra source column is ignored
    expected = {i: n for i, n in SPECIAL_GOOD}
    got = dict(snapshot.select("id", "userName").iter_rows())
    assert {i: got[i] for i in expected} == expected  # byte for byte through CSV and conform

    uploads = day.upload_all()

    assert sum(m["rows_sent"] for m in uploads) == len(good)
    stats = datahub_endpoint.stats()
    assert stats["by_code"] == {"SUCCESS": sum(m["batches_sent"] for m in uploads)}  # 0 PARAM_ILLEGAL, 0 DATA_CHECK_FAILED
    reconciliation = datahub_endpoint.reconcile(day.contract.data_uuid, snapshot["id"].to_list())
    assert (reconciliation["missing"], reconciliation["unexpected"]) == (0, 0)
    partner = decrypted_rows(datahub_endpoint.db_path, keys_file, day.contract.data_uuid)
    ours = [{k: v for k, v in r.items() if v is not None} for r in snapshot.iter_rows(named=True)]
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(partner, key=key) == sorted(ours, key=key)  # exact round trip, every field


def test_an_empty_day_snapshots_zero_rows_and_sends_nothing(files_day, datahub_endpoint):
    landing_file(files_day).write_bytes(HEADER)
    files_day.prepare()
    assert files_day.snapshot_frame().height == 0 and files_day.quarantine_frame().height == 0
    uploads = files_day.upload_all()
    assert [(m["batches"], m["batches_sent"], m["batches_failed"]) for m in uploads] == [(0, 0, 0)] * 2
    assert datahub_endpoint.stats()["requests"] == 0


SECRET_VALUE = b"ZX-PII-4471"


def step_failure_cause(result: dg.ExecuteInProcessResult):  # noqa: ANN201
    """The error the asset raised (Dagster wraps it in a step execution error)."""
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    error = failure.step_failure_data.error
    return error.cause or error

# Every file with content carries SECRET_VALUE, which no error may quote.
BROKEN_FILES = [
    ("zero-bytes", b"", "SourceFormatError", "is empty: it has no header row"),
    ("no-width-column", b"user_id,user_name,age,updated_at\n1," + SECRET_VALUE + b",2,t\n", "SourceShapeError",
     "['screen_width']"),
    ("repeated-header", b"user_id,user_name,user_name,age,screen_width,updated_at\n1,a," + SECRET_VALUE + b",2,3,t\n",
     "SourceFormatError", "the header names 1 column(s) more than once: ['user_name']"),
    ("truncated", HEADER + b"1," + SECRET_VALUE + b",2,3.5,t,x\n2,b,2", "SourceFormatError",
     "1 record(s) do not have the header's 6 fields"),
    ("extra-field", HEADER + b"1,a,2,3.5,t,x," + SECRET_VALUE + b"\n", "SourceFormatError",
     "1 record(s) do not have the header's 6 fields"),
    ("unbalanced-quote", HEADER + b'1,"' + SECRET_VALUE + b'"x,2,3.5,t,x\n', "SourceFormatError", "malformed CSV near line 2"),
]  # fmt: skip


@pytest.mark.parametrize(("content", "error", "says"), [b[1:] for b in BROKEN_FILES], ids=[b[0] for b in BROKEN_FILES])
def test_a_broken_landing_file_fails_the_day_with_an_error_that_names_the_problem(extract_only_day, content, error, says):
    landing_file(extract_only_day).write_bytes(content)
    result = extract_only_day.prepare(raise_on_error=False)
    assert not result.success
    cause = step_failure_cause(result)
    assert cause.cls_name == error and says in cause.message
    if error == "SourceFormatError":
        assert f"{DAY}.csv" in cause.message
    # The failure is stored in the event log: no value of the file may be in it.
    assert (SECRET_VALUE in content) == bool(content)
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert SECRET_VALUE.decode() not in failure.step_failure_data.error.to_string()


def test_a_missing_landing_file_is_an_error_naming_the_path(extract_only_day):
    result = extract_only_day.prepare(raise_on_error=False)
    assert not result.success
    cause = step_failure_cause(result)
    assert cause.cls_name == "SourceMissingError" and str(landing_file(extract_only_day)) in cause.message


def test_a_landing_file_polars_cannot_read_is_an_error_naming_it_without_its_content(tmp_path):
    broken = tmp_path / f"{DAY}.parquet"
    broken.write_bytes(b"PAR1" + SECRET_VALUE * 10 + b"PAR1")
    with pytest.raises(SourceFormatError, match=rf"landing file {DAY}.parquet cannot be read as parquet") as raised:
        landing_file_to_parquet(broken, tmp_path / "out")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # polars' message stays out
