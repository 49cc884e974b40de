"""MariaDB/MySQL as a source, against the real server (scripts/ensure_mariadb.sh): each
type as the text Postgres prints for the same value, hostile identifiers, a refused
login that shows no password, and a day delivered end to end from MariaDB."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import sqlite3
import struct
import traceback
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support import CONTRACT, DAY, Day, write_contract

from datahub_assets.extract.sources import SourceConnectionError, SourceDatabase
from datahub_assets.snapshot.conform import REASON
from datahub_assets.sql import create_engine
from datahub_dev.scratch_db import mariadb_admin_execute
from datahub_dev.synthetic import generate, write_table
from datahub_emulator import checks
from datahub_emulator.toolkit import read_properties


def extract(url: str, table: str, tmp_path: Path, date_column: str = "snapshot_date", day: str = DAY, **kw) -> pl.DataFrame:
    out = tmp_path / "extract"
    rows = SourceDatabase(url=url).extract_day(table=table, date_column=date_column, day=day, out_dir=out, **kw)
    frame = pl.read_parquet(out / "*.parquet")
    assert frame.height == rows and all(t == pl.String for t in frame.dtypes)
    return frame


def execute(url: str, *statements: str, params: list | dict | None = None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for sql in statements:
                conn.execute(sa.text(sql), params or {})
    finally:
        engine.dispose()


# One row per case: (MariaDB value, Postgres value, the text both extracts must give).
# Inserted as SQL literals so that each server parses its own, as a source would hold it.
TYPED_COLUMNS = {
    # name: (MariaDB type, Postgres type)
    "amount": ("DECIMAL(65,30)", "NUMERIC(65,30)"),
    "ubig": ("BIGINT UNSIGNED", "NUMERIC(20,0)"),
    "big": ("BIGINT", "BIGINT"),
    "dbl": ("DOUBLE", "DOUBLE PRECISION"),
    "ts6": ("DATETIME(6)", "TIMESTAMP(6)"),
    "flag": ("TINYINT(1)", "SMALLINT"),
    "born": ("DATE", "DATE"),
    "txt": ("VARCHAR(100)", "TEXT"),
}
TYPED_ROWS = [
    {
        "amount": ("12345678901234567890123456789012345.123456789012345678901234567890",) * 2,
        "ubig": ("18446744073709551615",) * 2,  # 2**64 - 1: beyond a signed 64-bit Bigint
        "big": ("-9223372036854775808",) * 2,
        "dbl": ("0.1",) * 2,
        "ts6": ("'2026-11-26 12:34:56.123456'",) * 2,
        "flag": ("1",) * 2,
        "born": ("'1990-02-28'",) * 2,
        "txt": ("'😀 陈伟 Ünïcödé'",) * 2,
    },
    {
        "amount": ("-0.000000000000000000000000000001",) * 2,
        "ubig": ("9223372036854775808",) * 2,  # 2**63
        "big": ("9223372036854775807",) * 2,
        "dbl": ("1e15",) * 2,
        "ts6": ("'2026-11-26 00:00:00.100000'",) * 2,
        "flag": ("0",) * 2,
        "born": ("'0000-00-00'", "NULL"),  # MariaDB's zero date: null, as Postgres has no such date
        "txt": ("''",) * 2,
    },
    {
        "amount": ("1.5",) * 2,
        "ubig": ("0",) * 2,
        "big": ("0",) * 2,
        "dbl": ("1.7976931348623157e308",) * 2,
        "ts6": ("'0000-00-00 00:00:00'", "NULL"),
        "flag": ("NULL",) * 2,
        "born": ("NULL",) * 2,
        "txt": ("'a \"quoted\", comma\nnew line\\\\ backslash'", "E'a \"quoted\", comma\\nnew line\\\\ backslash'"),
    },
]
TYPED_EXPECTED = [
    ["12345678901234567890123456789012345.123456789012345678901234567890", "18446744073709551615",
     "-9223372036854775808", "0.1", "2026-11-26 12:34:56.123456", "1", "1990-02-28", "😀 陈伟 Ünïcödé"],
    ["-0.000000000000000000000000000001", "9223372036854775808", "9223372036854775807", "1e+15",
     "2026-11-26 00:00:00.1", "0", None, ""],
    ["1.500000000000000000000000000000", "0", "0", "1.7976931348623157e+308", None, None, None,
     'a "quoted", comma\nnew line\\ backslash'],
]


def create_typed(url: str, side: int) -> None:
    names = list(TYPED_COLUMNS)
    cols = ", ".join(f"{n} {TYPED_COLUMNS[n][side]}" for n in names)
    rows = ", ".join("(" + ", ".join(["'2026-11-26'", *(row[n][side] for n in names)]) + ")" for row in TYPED_ROWS)
    statements = [
        f"CREATE TABLE typed (snapshot_date DATE, {cols})",
        f"INSERT INTO typed (snapshot_date, {', '.join(names)}) VALUES {rows}",
        "INSERT INTO typed (snapshot_date, txt) VALUES ('2026-11-25', 'another day')",
    ]
    if side == 0:  # a legacy source that still holds zero dates
        statements.insert(0, "SET SESSION sql_mode = ''")
    execute(url, *statements)


def test_each_mariadb_type_comes_through_as_the_text_postgres_gives(mariadb_url, pg_url, tmp_path):
    create_typed(mariadb_url, 0)
    create_typed(pg_url, 1)
    from_mariadb = extract(mariadb_url, "typed", tmp_path / "m")
    from_postgres = extract(pg_url, "typed", tmp_path / "p")

    assert from_mariadb.columns == ["snapshot_date", *TYPED_COLUMNS]
    got = from_mariadb.sort("amount").drop("snapshot_date").rows()
    assert got == sorted(map(tuple, TYPED_EXPECTED), key=lambda r: r[0])
    assert from_mariadb.sort("amount").equals(from_postgres.sort("amount"))


def test_mariadb_types_postgres_lacks_have_a_fixed_text(mariadb_url, tmp_path):
    execute(
        mariadb_url,
        "SET SESSION sql_mode = ''",
        "SET SESSION time_zone = '+08:00'",  # the writer's zone; the extract reads TIMESTAMP as UTC
        "CREATE TABLE t (i INT, ts TIMESTAMP(3) NULL, tm TIME(6), bin VARBINARY(8), bits BIT(5), f FLOAT,"
        " y YEAR, d DATE, dt DATETIME, snapshot_date DATE)",
        f"INSERT INTO t VALUES (1, '2026-11-26 12:00:00.500', '-838:59:59.5', x'00ff10', b'10101', 1.5, 2026,"
        f" '2026-02-00', '2026-11-26 08:00:00', '{DAY}'),"
        f" (2, '0000-00-00 00:00:00', '00:00:00', '', b'0', 123456789, 1999, '0000-00-00', '0000-00-00 00:00:00', '{DAY}')",
    )
    got = extract(mariadb_url, "t", tmp_path).sort("i").drop("snapshot_date").rows()
    assert got == [
        ("1", "2026-11-26 04:00:00.5", "-838:59:59.5", "\\x00ff10", "\\x15", "1.5", "2026", "2026-02-00", "2026-11-26 08:00:00"),
        ("2", None, "00:00:00", "\\x",  # empty bytes, as bytea prints them
         "\\x00", "123457000", "1999", None, None),
    ]


def random_doubles(n: int, seed: int) -> list[float]:
    """Finite doubles from random bit patterns (every exponent, subnormals included) and
    from ordinary ranges, plus the edge cases."""
    rnd = random.Random(seed)
    out = [5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1 / 3,
           1e15, 1e15 + 0.125, 9999999999999998.0, 1e16, 1e-4, 9.999999999999999e-05, 123456789.0, 6.1, 0.0]
    while len(out) < n:
        x = struct.unpack("<d", rnd.getrandbits(64).to_bytes(8, "little"))[0] if rnd.random() < 0.5 else rnd.uniform(-1e6, 1e6)
        if x == x and abs(x) != float("inf") and x != 0.0:
            out.append(x)
    return out


def test_a_double_reads_back_exactly_in_postgres_text(mariadb_url, pg_url, tmp_path):
    values = random_doubles(3_000, seed=15)
    for url, column_type in ((mariadb_url, "DOUBLE"), (pg_url, "DOUBLE PRECISION")):
        execute(url, f"CREATE TABLE doubles (i INTEGER, x {column_type}, snapshot_date VARCHAR(10))")
        execute(url, "INSERT INTO doubles VALUES (:i, :x, :d)", params=[{"i": i, "x": x, "d": DAY} for i, x in enumerate(values)])
    m = extract(mariadb_url, "doubles", tmp_path / "m").sort(pl.col("i").cast(pl.Int64))
    p = extract(pg_url, "doubles", tmp_path / "p").sort(pl.col("i").cast(pl.Int64))

    texts = m["x"].to_list()
    assert [float(t) for t in texts] == values  # exact: the same double back
    assert texts == p["x"].to_list()  # and the same text as Postgres prints
    assert all(checks.TYPE_VALIDATORS["Double"](t) for t in texts)


HOSTILE_TABLE = 'we"ird `tab;le --'
HOSTILE_COLUMN = 'co"l `na;me'
HOSTILE_DATE = "snap date; DROP TABLE x"


@pytest.mark.parametrize("backend", ["mariadb", "postgresql", "sqlite"])
def test_hostile_table_and_column_names_are_quoted_by_each_dialect(backend, tmp_path, request):
    url = {
        "mariadb": lambda: request.getfixturevalue("mariadb_url"),
        "postgresql": lambda: request.getfixturevalue("pg_url"),
        "sqlite": lambda: f"sqlite:///{tmp_path / 'src.db'}",
    }[backend]()
    table = sa.Table(
        HOSTILE_TABLE, sa.MetaData(), sa.Column("id", sa.String(10)), sa.Column(HOSTILE_COLUMN, sa.String(20)),
        sa.Column(HOSTILE_DATE, sa.String(10)),
    )
    engine = create_engine(url)
    try:
        table.create(engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), [
                {"id": "1", HOSTILE_COLUMN: "😀 one", HOSTILE_DATE: DAY},
                {"id": "2", HOSTILE_COLUMN: "二", HOSTILE_DATE: DAY},
                {"id": "3", HOSTILE_COLUMN: "other day", HOSTILE_DATE: "2026-11-25"},
            ])
    finally:
        engine.dispose()

    whole = extract(url, HOSTILE_TABLE, tmp_path / "all", date_column=HOSTILE_DATE)
    assert whole.columns == ["id", HOSTILE_COLUMN, HOSTILE_DATE]
    assert sorted(whole.rows()) == [("1", "😀 one", DAY), ("2", "二", DAY)]

    chosen = extract(url, HOSTILE_TABLE, tmp_path / "some", date_column=HOSTILE_DATE, columns=[HOSTILE_COLUMN, "id"])
    assert sorted(chosen.rows()) == [("二", "2"), ("😀 one", "1")]

    # The date is bound, never spliced in.
    assert extract(url, HOSTILE_TABLE, tmp_path / "x", date_column=HOSTILE_DATE, day=f"{DAY}' OR '1'='1").height == 0


def test_a_synthetic_day_written_to_mariadb_comes_back_unchanged(mariadb_url, tmp_path):
    source = generate(2_500, DAY, bad_share=0.05)
    awkward = ["a\tb", "x\ny", "back\\slash", "\\N", "NULL", "", " ", '"', "😀陈"]
    source = source.with_columns(
        pl.when(pl.int_range(pl.len()) < len(awkward))
        .then(pl.lit(pl.Series(awkward + [None] * (source.height - len(awkward)))))
        .otherwise(pl.col("user_name"))
        .alias("user_name")
    )
    write_table(source, mariadb_url)
    write_table(generate(700, "2026-11-25"), mariadb_url)  # another day in the same table
    write_table(source, mariadb_url)  # written again: the day is replaced, not doubled

    extracted = extract(mariadb_url, "user_profile", tmp_path)
    key = source.columns
    assert extracted.height == 2_500
    assert extracted.select(key).sort(key, nulls_last=True).equals(source.sort(key, nulls_last=True))
    assert set(awkward) <= set(extracted["user_name"].to_list())


def test_an_empty_mariadb_day_still_has_the_columns(mariadb_url, tmp_path):
    execute(mariadb_url, "CREATE TABLE t (id VARCHAR(9), amount DECIMAL(9,2), snapshot_date DATE)",
            "INSERT INTO t VALUES ('a', 1.50, '2026-11-25')")
    empty = extract(mariadb_url, "t", tmp_path)
    assert empty.height == 0 and empty.columns == ["id", "amount", "snapshot_date"]
    assert extract(mariadb_url, "t", tmp_path, day="2026-11-25").rows() == [("a", "1.50", "2026-11-25")]
    # A URL without a driver is read with pymysql too.
    bare = mariadb_url.replace("mysql+pymysql://", "mysql://")
    assert extract(bare, "t", tmp_path, day="2026-11-25").rows() == [("a", "1.50", "2026-11-25")]


def test_a_wrong_password_is_a_clear_error_that_shows_no_password(mariadb_url, tmp_path):
    user, password = f"reader_{tmp_path.name[-8:]}".replace("-", "_"), "Rig#ht-Pa55:word"
    database = sa.make_url(mariadb_url).database
    execute(mariadb_url, "CREATE TABLE t (id VARCHAR(9), snapshot_date DATE)", f"INSERT INTO t VALUES ('a', '{DAY}')")
    mariadb_admin_execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY :p", {"p": password})
    try:
        mariadb_admin_execute(f"GRANT SELECT ON `{database}`.* TO '{user}'@'127.0.0.1'")
        url = sa.make_url(mariadb_url).set(username=user)

        right = url.set(password=password).render_as_string(hide_password=False)
        assert extract(right, "t", tmp_path / "ok").rows() == [("a", DAY)]

        wrong_password = "Wr0ng#Secret-Pa55"
        wrong = url.set(password=wrong_password).render_as_string(hide_password=False)
        with pytest.raises(SourceConnectionError) as caught:
            SourceDatabase(url=wrong).extract_day(table="t", date_column="snapshot_date", day=DAY, out_dir=tmp_path / "no")
    finally:
        mariadb_admin_execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    message = str(caught.value)
    assert "Access denied" in message and user in message and "127.0.0.1:3306" in message and "***" in message
    everything = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    assert wrong_password not in everything and password not in everything
    assert "Wr0ng" not in everything  # not even a part of it


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://root:Se%23cret-Pa55@127.0.0.1:3306/no_such_database",
        "postgresql://postgres:Se%23cret-Pa55@127.0.0.1:5432/no_such_database",
    ],
    ids=["mariadb", "postgresql"],
)
def test_a_database_that_is_not_there_is_a_connection_error_with_the_password_masked(url, tmp_path):
    with pytest.raises(SourceConnectionError, match=r"no_such_database") as caught:
        SourceDatabase(url=url).extract_day(table="t", date_column="snapshot_date", day=DAY, out_dir=tmp_path / "x")
    assert ":***@127.0.0.1" in str(caught.value)
    everything = "".join(traceback.format_exception(caught.value))
    assert "Se#cret" not in everything and "Se%23cret" not in everything


# --- a day delivered end to end from MariaDB ---------------------------------------------

ROWS = 5_000
TOO_BIG = {7: 2**63, 77: 2**64 - 1, 777: 12345678901234567890}  # row -> BIGINT UNSIGNED beyond a Bigint
NAMES = ["alice tan", "陈伟", "李小龙 😀", "émile zola", "José 🇵🇭", "山田 太郎", "o'brien \"ob\"", "🙂🙃"]


def mariadb_day(seed: int = 15) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(ROWS):
        rows.append({
            "user_id": f"2188{i:09d}",
            "user_name": None if i % 97 == 0 else f"{rnd.choice(NAMES)} {i}",
            "age": TOO_BIG.get(i, rnd.randrange(16, 90)),
            "screen_width": rnd.choice([5.4, 6.1, 6.7, 12.9, 1e-7, 1e300, rnd.uniform(4, 13)]),
            "snapshot_date": DAY,
            "updated_at": dt.datetime(2026, 11, 26, rnd.randrange(24), rnd.randrange(60), 0, rnd.randrange(1_000_000)),
        })
    rnd.shuffle(rows)
    return rows


@pytest.fixture
def day(tmp_path, sdk_jar, keys_file, mariadb_url) -> Day:  # noqa: ANN001
    with dg.instance_for_test() as instance:
        # The demo contract in 2 ranges: 2 upload runs instead of 32 for the same batches.
        contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
        d = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        d.resources["source_db"] = SourceDatabase(url=mariadb_url)
        d.source_url = mariadb_url
        yield d


def test_a_day_from_mariadb_reaches_the_partner_with_the_source_text(day, datahub_endpoint, keys_file):
    execute(
        day.source_url,
        "CREATE TABLE user_profile (user_id VARCHAR(20) PRIMARY KEY, user_name VARCHAR(100), age BIGINT UNSIGNED,"
        " screen_width DOUBLE, snapshot_date DATE, updated_at DATETIME(6)) CHARACTER SET utf8mb4",
    )
    source = mariadb_day()
    execute(day.source_url, "INSERT INTO user_profile VALUES (:user_id, :user_name, :age, :screen_width, :snapshot_date, :updated_at)",
            params=source)
    execute(day.source_url, "INSERT INTO user_profile VALUES ('other', 'x', 1, 1.0, '2026-11-25', '2026-11-25 00:00:00')")

    day.prepare()
    uploads = day.upload_all()

    good = [r for r in source if r["age"] < 2**63]
    assert len(good) == ROWS - len(TOO_BIG)
    assert sum(m["rows_sent"] for m in uploads) == len(good) and sum(m["batches_failed"] for m in uploads) == 0
    reconciliation = datahub_endpoint.reconcile(CONTRACT.data_uuid, [r["user_id"] for r in good])
    assert (reconciliation["missing"], reconciliation["unexpected"]) == (0, 0)

    quarantine = day.quarantine_frame()
    assert sorted(quarantine.select("user_id", "age", REASON).rows()) == sorted(
        (f"2188{i:09d}", str(v), "userAge: Bigint beyond 64 bits") for i, v in TOO_BIG.items()
    )

    delivered = decrypted_rows(datahub_endpoint.db_path, keys_file)
    expected = {}
    for r in good:
        row = {"id": r["user_id"], "userAge": str(r["age"]), "screenWidth": canonical_double(r["screen_width"])}
        if r["user_name"] is not None:
            row["userName"] = r["user_name"]
        expected[r["user_id"]] = row
    assert delivered == expected
    assert all(float(row["screenWidth"]) == r["screen_width"] for r, row in ((r, delivered[r["user_id"]]) for r in good))


def canonical_double(x: float) -> str:
    """The snapshot's canonical Double text of a float, computed from the source value."""
    return pl.Series([x], dtype=pl.Float64).cast(pl.String).item()


def decrypted_rows(db_path: Path, keys_file: Path) -> dict[str, dict[str, str]]:
    """Every row the endpoint stored, decrypted with the wallet's data key: {id: {column: text}}."""
    cipher = AESGCM(base64.b64decode(read_properties(keys_file)["dataKey"]))
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        stored = [json.loads(r[0]) for r in conn.execute("SELECT row_ciphertext FROM rows WHERE data_uuid = ?", (CONTRACT.data_uuid,))]
    finally:
        conn.close()

    def plain(column: str, encoded: str) -> str:
        raw = base64.b64decode(encoded)
        return cipher.decrypt(raw[:12], raw[12:], f"{CONTRACT.data_uuid}\n{column}".encode()).decode()

    rows = [{c: plain(c, v) for c, v in r.items()} for r in stored]
    return {r["id"]: r for r in rows}
