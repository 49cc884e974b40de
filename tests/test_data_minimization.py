"""Only the contract's columns leave the source, contract expressions cannot read files,
and no row value reaches a log or an error: through the real extract and snapshot."""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
import yaml
from support import CONTRACT, DAY, Day, write_contract

from datahub_assets.contract import ContractError, load_contract
from datahub_assets.extract.sources import SourceDatabase
from datahub_dev.synthetic import generate, write_table

FILES_SOURCE = {"kind": "files", "pattern": "user_profile/{date}.csv"}
INTERNAL = {"_source_row", "_reject_reason"}


@pytest.fixture
def day(tmp_path):  # noqa: ANN001
    """A day for extract and snapshot only: no endpoint, no SDK."""
    with dg.instance_for_test() as instance:
        yield Day(tmp_path, tmp_path / "no-sdk.jar", tmp_path / "no-keys.properties", f"sqlite:///{tmp_path / 'd.db'}", instance)


def lake_columns(day: Day) -> dict[str, set[str]]:
    root = day.lake.extract_dir("user_profile", DAY).parents[1]
    return {
        str(path.relative_to(root)): set(pl.read_parquet_schema(path))
        for path in root.rglob("*.parquet")
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_lake_holds_no_source_column_outside_the_contract(day, backend, request):
    source = generate(2_000, DAY, bad_share=0.05).with_columns(
        pl.lit("someone@example.com").alias("email"), pl.lit("+62 811 0000").alias("phone")
    )
    if backend == "postgresql":
        day.resources["source_db"] = SourceDatabase(url=request.getfixturevalue("pg_url"))
    write_table(source, day.resources["source_db"].url)
    day.prepare()

    read = set(CONTRACT.source_columns) | {CONTRACT.source.date_column}
    partner = {c.name for c in CONTRACT.columns}
    files = lake_columns(day)
    assert {f.split("/")[0] for f in files} == {"extract", "snapshot", "quarantine"}
    for path, columns in files.items():
        allowed = {"extract": read, "snapshot": partner, "quarantine": read | INTERNAL}[path.split("/")[0]]
        assert columns <= allowed, (path, columns - allowed)
        assert not columns & {"email", "phone"}


def test_a_headerless_landing_file_fails_without_quoting_its_first_record(tmp_path):
    contracts = write_contract(tmp_path / "contracts", source=FILES_SOURCE, batch_ranges=1)
    with dg.instance_for_test() as instance:
        day = Day(tmp_path, tmp_path / "no.jar", tmp_path / "no.properties", f"sqlite:///{tmp_path / 'd.db'}", instance, contracts)
        source = generate(50, DAY)
        path = day.landing_dir / "user_profile" / f"{DAY}.csv"
        path.parent.mkdir(parents=True)
        source.write_csv(path, include_header=False)
        result = day.prepare(raise_on_error=False)
        logged = " ".join(
            (str(e.dagster_event.event_specific_data) if e.dagster_event else "") + (e.user_message or "")
            for e in instance.all_logs(result.run_id)
        )
    assert not result.success
    assert "lacks source column(s)" in logged and "without its header row" in logged
    first = source.row(0, named=True)
    for value in (first["user_id"], first["user_name"], first["updated_at"]):
        assert value not in logged


BASE = yaml.safe_load(CONTRACT.path.read_text())


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("user_name IN (SELECT column_1 FROM read_csv('keys.properties'))", "SELECT is not allowed"),
        ("read_parquet('https://example.com/x.parquet')", "function read_parquet() is not allowed"),
        ("upper(user_name); DROP TABLE x", "no ';'"),
        ("pg_read_file('/etc/passwd')", "function pg_read_file() is not allowed"),
    ],
)
def test_a_contract_expression_that_could_read_files_is_refused_at_load(tmp_path, expression, says):
    columns = [*BASE["columns"], {"name": "shout", "type": "String", "expression": expression}]
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump({**BASE, "columns": columns}))
    with pytest.raises(ContractError) as refused:
        load_contract(path)
    message = str(refused.value)
    assert message.startswith("evil.yaml: ") and "column shout" in message and says in message


def test_an_allowed_expression_reads_only_source_columns_and_is_extracted(tmp_path):
    columns = [*BASE["columns"], {"name": "shout", "type": "String", "expression": "upper(concat(user_name, '!'))"}]
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({**BASE, "columns": columns}))
    contract = load_contract(path)
    assert contract.source_columns == ["user_id", "user_name", "age", "screen_width", "updated_at"]
