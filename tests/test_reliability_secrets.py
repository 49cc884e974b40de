"""Secrets and PII: after a whole day delivered by a run worker in its own process, with
Dagster's storage (event log, runs) and the ledger in one PostgreSQL database as in
production, no raw value of the day and no secret of keys.properties is anywhere it
should not be: the database (every table), the files under DAGSTER_HOME (compute logs),
the run's stdout and stderr, and the partner's database (ciphertext only).

A keys.properties that group or others may read makes the SDK resource refuse to start.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
import polars as pl
import sqlalchemy as sa
from support import DAY, Day, write_contract

from datahub_dev.synthetic import write_table
from datahub_assets.upload.sdk import DataHubSdkResource
from datahub_emulator.toolkit import read_properties

WORKER = Path(__file__).with_name("worker.py")
GOOD_ROWS = 300
SECRET_KEYS = ("clientPrivateKey", "dataKey", "clientId", "dataKeyId")


def distinctive_source(token: str) -> tuple[pl.DataFrame, list[str]]:
    """Rows whose every value is unique to this test, and the strings to search for:
    each raw value and each canonical form the snapshot gives it."""
    rng = random.Random(token)
    rows, needles = [], []
    for i in range(GOOD_ROWS):
        age = str(7 * 10**14 + rng.randrange(10**14))
        width = f"{rng.randrange(100_000, 999_999)}.{rng.randrange(10**7, 10**8)}{rng.randrange(1, 10)}"
        row = {"user_id": f"ID{token}{i:04d}", "user_name": f"NM{token}{i:04d}", "age": age, "screen_width": width}
        rows.append(row)
        needles += [*row.values(), repr(float(width))]
    # Rows the snapshot quarantines: their values must not leak either.
    bad = [
        {"user_id": f"BADID{token}1", "user_name": f"BADNM{token}1", "age": f"{token[:6]}.5", "screen_width": "1"},
        {"user_id": f"BADID{token}2", "user_name": f"BADNM{token}2\x07", "age": "1", "screen_width": "1"},
        {"user_id": None, "user_name": f"BADNM{token}3", "age": "1", "screen_width": "1"},
    ]
    needles += [f"BADID{token}1", f"BADID{token}2", f"BADNM{token}1", f"BADNM{token}2", f"BADNM{token}3"]
    frame = pl.DataFrame(rows + bad, schema={k: pl.String for k in rows[0]}).with_columns(
        snapshot_date=pl.lit(DAY), updated_at=pl.lit(f"{DAY}T08:00:00")
    )
    return frame, needles


def secret_needles(keys_file: Path) -> dict[str, str]:
    keys = read_properties(keys_file)
    found = {name: keys[name] for name in SECRET_KEYS}
    # A fragment too, in case a value is logged wrapped or cut.
    found["clientPrivateKey[200:240]"] = keys["clientPrivateKey"][200:240]
    return found


def database_text(url: str) -> dict[str, str]:
    """Every row of every table of the database, as Postgres renders it in text."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        tables = sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            return {
                t: conn.execute(sa.text(f'SELECT coalesce(string_agg(x::text, E\'\\n\'), \'\') FROM "{t}" x')).scalar_one()
                for t in tables
            }
    finally:
        engine.dispose()


def event_log_rows(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM event_logs")).scalar_one()
    finally:
        engine.dispose()


def files_text(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def hits(needles: dict[str, str] | list[str], haystacks: dict[str, str | bytes]) -> list[tuple[str, str]]:
    items = needles.items() if isinstance(needles, dict) else [(n, n) for n in needles]
    found = []
    for where, text in haystacks.items():
        data = text if isinstance(text, bytes) else text.encode()
        found += [(label, where) for label, needle in items if needle.encode() in data]
    return found


def postgres_dagster_home(tmp_path: Path, pg_url: str) -> Path:
    """A DAGSTER_HOME whose instance keeps runs, events and logs' records in Postgres."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    db = pg_url.rsplit("/", 1)[1]
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_db:\n"
        f"      hostname: 127.0.0.1\n      port: 5432\n      username: postgres\n      db_name: {db}\n"
        "      scheme: postgresql+psycopg2\n"
        "telemetry:\n  enabled: false\n"
    )
    return home


def test_a_delivered_day_leaves_no_raw_value_and_no_secret_behind(
    tmp_path, sdk_jar, keys_file, datahub_endpoint, pg_url
):  # noqa: ANN001
    token = secrets.token_hex(4).upper()
    source, values = distinctive_source(token)
    home = postgres_dagster_home(tmp_path, pg_url)
    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    with dg.instance_for_test() as scratch:  # only to build the settings; the run uses DAGSTER_HOME
        day = Day(tmp_path, sdk_jar, keys_file, pg_url, scratch, contracts)  # ledger in the same database
    write_table(source, day.source_url)

    run = subprocess.run(
        [sys.executable, str(WORKER), str(contracts), DAY, "--prepare", "--ranges", "all",
         "--config", json.dumps({"progress_every_s": 0.5})],
        env={**os.environ, **day.env(), "DAGSTER_HOME": str(home)},
        capture_output=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]

    # The day really went through: the partner holds the good rows, Dagster recorded it.
    ids = [f"ID{token}{i:04d}" for i in range(GOOD_ROWS)]
    reconciliation = datahub_endpoint.reconcile(day.contract.data_uuid, ids)
    assert (reconciliation["stored"], reconciliation["missing"], reconciliation["unexpected"]) == (GOOD_ROWS, 0, 0)
    database = database_text(pg_url)
    assert {"event_logs", "runs", "upload_ledger", "rate_limiter"} <= set(database)
    assert database["event_logs"].count("ASSET_MATERIALIZATION") >= 4 and "user_profile_uploaded" in database["event_logs"]
    assert database["upload_ledger"].count(day.contract.data_uuid) == 3  # 300 rows = 3 batches
    home_files = files_text(home)
    compute_logs = [p for p in home_files if p.startswith("storage/") and p.endswith((".err", ".out"))]
    assert compute_logs, sorted(home_files)
    assert b"extracted" in run.stderr  # the run's log lines are in its stderr

    # The search finds what is there: the source database holds the values in clear.
    source_db = Path(day.source_url.removeprefix("sqlite:///")).read_bytes()
    assert len(hits(values, {"source": source_db})) == len(values)
    outputs = {"stdout": run.stdout, "stderr": run.stderr}
    places = {**{f"postgres:{t}": v for t, v in database.items()}, **{f"DAGSTER_HOME/{p}": v for p, v in home_files.items()}, **outputs}
    assert hits(values, places) == []
    # The ledger records the data key each batch went under, by its id (which every request
    # carries in the clear): that table alone holds it. The keys themselves are nowhere.
    needles = secret_needles(keys_file)
    key_id = needles.pop("dataKeyId")
    assert database["upload_ledger"].count(key_id) == 3
    assert hits({"dataKeyId": key_id}, {k: v for k, v in places.items() if k != "postgres:upload_ledger"}) == []
    assert hits(needles, places) == []

    # The partner's database (and its write-ahead log) holds ciphertext only.
    endpoint_files = {p.name: p.read_bytes() for p in datahub_endpoint.db_path.parent.glob(f"{datahub_endpoint.db_path.name}*")}
    assert f"{datahub_endpoint.db_path.name}-wal" in endpoint_files
    assert hits(values, endpoint_files) == []
    print(
        "RELIABILITY secrets",
        json.dumps(
            {
                "values_searched": len(values), "secrets_searched": len(secret_needles(keys_file)),
                "event_log_rows": event_log_rows(pg_url), "tables": len(database),
                "dagster_home_files": len(home_files), "compute_log_files": len(compute_logs),
                "stdout_bytes": len(run.stdout), "stderr_bytes": len(run.stderr),
                "endpoint_files": sorted(endpoint_files), "hits": 0,
            }
        ),
    )  # fmt: skip


def run_error(result: dg.ExecuteInProcessResult, cls_name: str):  # noqa: ANN201
    """The first error a run recorded (a resource that fails to start is no step failure),
    and the exception of class `cls_name` in its chain."""
    (error,) = [
        e.event_specific_data.error
        for e in result.all_events
        if getattr(e.event_specific_data, "error", None) is not None
    ][:1]
    chain = [error]
    while chain[-1].cause is not None:
        chain.append(chain[-1].cause)
    (cause,) = [c for c in chain if c.cls_name == cls_name]
    return error, cause


def test_a_keys_file_others_can_read_or_a_missing_one_stops_the_upload_before_anything_is_sent(
    tmp_path, sdk_jar, keys_file, datahub_endpoint
):  # noqa: ANN001
    contracts = write_contract(tmp_path / "contracts", batch_ranges=1)
    missing = tmp_path / "nowhere" / "keys.properties"
    with dg.instance_for_test() as instance:
        day = Day(tmp_path, sdk_jar, keys_file, f"sqlite:///{tmp_path / 'delivery.db'}", instance, contracts)
        write_table(distinctive_source("MODE")[0], day.source_url)
        day.prepare()
        for mode in (0o640, 0o604, 0o644, 0o660):
            keys_file.chmod(mode)
            result = day.upload_range("0", raise_on_error=False)
            assert not result.success
            error, cause = run_error(result, "KeysFileError")
            assert str(keys_file) in cause.message and f"mode {mode:o}" in cause.message and "chmod 600" in cause.message
            assert hits(secret_needles(keys_file), {"error": error.to_string()}) == []

        day.resources["sdk"] = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(missing))
        result = day.upload_range("0", raise_on_error=False)
        assert not result.success
        assert f"not found at {missing}" in run_error(result, "KeysFileError")[1].message

    assert datahub_endpoint.stats()["requests"] == 0 and day.ledger() == {}


def test_a_nasty_day_leaves_no_raw_value_and_no_secret_behind(tmp_path, sdk_jar, keys_file, datahub_endpoint, pg_url):
    """Two failures whose messages used to quote data, on a Postgres-backed instance: a
    landing file without its header row (its first record would become "column names"),
    and a contract whose expression tries to read the keys file."""
    token = secrets.token_hex(4).upper()
    source, values = distinctive_source(token)
    home = postgres_dagster_home(tmp_path, pg_url)
    files = write_contract(
        tmp_path / "files", source={"kind": "files", "pattern": "user_profile/{date}.csv"}, batch_ranges=2
    )
    with dg.instance_for_test() as scratch:
        day = Day(tmp_path, sdk_jar, keys_file, pg_url, scratch, files)
    headerless = day.landing_dir / "user_profile" / f"{DAY}.csv"
    headerless.parent.mkdir(parents=True)
    source.drop_nulls("user_id").write_csv(headerless, include_header=False)
    raw = yaml.safe_load((files / "user_profile.yaml").read_text())
    raw["columns"][1] = {
        "name": "userName", "type": "String",
        "expression": f"user_name IN (SELECT column_1 FROM read_csv('{keys_file}'))",
    }
    reads_keys = tmp_path / "reads_keys"
    reads_keys.mkdir()
    (reads_keys / "user_profile.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    env = {**os.environ, **day.env(), "DAGSTER_HOME": str(home)}
    runs = {
        name: subprocess.run(
            [sys.executable, str(WORKER), str(contracts), DAY, "--prepare", "--ranges", "all"],
            env=env, capture_output=True, timeout=300,
        )
        for name, contracts in (("headerless", files), ("reads_keys", reads_keys))
    }  # fmt: skip

    assert runs["headerless"].returncode == 1 and b"SourceShapeError" in runs["headerless"].stderr
    assert runs["reads_keys"].returncode != 0 and b"SELECT is not allowed" in runs["reads_keys"].stderr
    assert datahub_endpoint.stats()["requests"] == 0
    database = database_text(pg_url)
    assert "STEP_FAILURE" in database["event_logs"]  # the failure was recorded, then searched
    home_files = files_text(home)
    assert len(hits(values, {"landing": headerless.read_bytes()})) > 0  # the search finds what is there
    places = {
        **{f"postgres:{t}": v for t, v in database.items()},
        **{f"DAGSTER_HOME/{p}": v for p, v in home_files.items()},
        **{f"{name}:{stream}": getattr(run, stream) for name, run in runs.items() for stream in ("stdout", "stderr")},
    }
    assert hits(values, places) == []
    assert hits(secret_needles(keys_file), places) == []
