"""Source extracts: PostgreSQL through COPY, SQLite, and landing files local and over SFTP."""

from __future__ import annotations

import polars as pl
import pytest
import sqlalchemy as sa

from datahub_assets.extract.sources import (
    LandingConfigError,
    LandingFiles,
    SourceDatabase,
    SourceMissingError,
    landing_file_to_parquet,
)
from datahub_dev.synthetic import generate, write_landing_file, write_table

DAY = "2026-11-26"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_table_extract_keeps_every_value_as_text(backend, tmp_path, request):
    url = (
        f"sqlite:///{tmp_path / 'src.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    source = generate(2_500, DAY, bad_share=0.05)
    write_table(source, url)
    write_table(generate(700, "2026-11-25"), url)  # another day in the same table

    out = tmp_path / "extract"
    rows = SourceDatabase(url=url).extract_day(
        table="user_profile", date_column="snapshot_date", day=DAY, out_dir=out
    )

    extracted = pl.read_parquet(out / "*.parquet")
    assert rows == extracted.height == 2_500
    assert all(t == pl.String for t in extracted.dtypes)
    key = ["user_id", "user_name", "age", "screen_width", "updated_at"]
    assert (
        extracted.select(key)
        .sort(key, nulls_last=True)
        .equals(source.select(key).sort(key, nulls_last=True))
    )


def test_postgres_copy_extract_cut_into_several_parts_keeps_every_row(pg_url, tmp_path):
    source = generate(60_000, DAY, bad_share=0.05)  # about 4 MiB of CSV
    write_table(source, pg_url)
    out = tmp_path / "extract"
    # The stream is cut at record boundaries once a part's bytes are reached (checked
    # per 1 MiB read from the pipe), so 64 KiB parts give one part per read.
    rows = SourceDatabase(url=pg_url, copy_part_bytes=64 << 10).extract_day(
        table="user_profile", date_column="snapshot_date", day=DAY, out_dir=out
    )
    parts = sorted(out.glob("*.parquet"))
    assert len(parts) > 1
    extracted = pl.read_parquet(parts)
    assert rows == extracted.height == 60_000
    key = ["user_id", "user_name", "age", "screen_width", "updated_at"]
    assert extracted.select(key).sort(key, nulls_last=True).equals(source.select(key).sort(key, nulls_last=True))


def test_a_postgres_copy_that_fails_midway_leaves_no_parts(pg_url, tmp_path):
    # The view fails on its last row (a division by zero), after megabytes of rows have
    # streamed: with 64 KiB parts, several parts were written before the COPY fails.
    write_table(generate(60_000, DAY), pg_url)
    engine = sa.create_engine(pg_url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO user_profile (user_id, snapshot_date) VALUES ('boom', :d)"
        ), {"d": DAY})  # fmt: skip
        conn.execute(sa.text(
            "CREATE VIEW failing AS SELECT *, (1 / (CASE WHEN user_id = 'boom' THEN 0 ELSE 1 END))::text AS checked "
            "FROM user_profile"
        ))  # fmt: skip
    engine.dispose()
    out = tmp_path / "extract"
    source = SourceDatabase(url=pg_url, copy_part_bytes=64 << 10)

    with pytest.raises(Exception, match="division by zero"):
        source.extract_day(table="failing", date_column="snapshot_date", day=DAY, out_dir=out)
    assert list(out.glob("*")) == []

    # The same stream without the failing row is cut into several parts.
    assert source.extract_day(table="user_profile", date_column="snapshot_date", day=DAY, out_dir=out) == 60_001
    assert len(list(out.glob("part-*.parquet"))) > 1


def test_a_file_url_landing_folder_is_read_like_a_path(tmp_path):
    source = generate(200, DAY)
    write_landing_file(source, tmp_path / "landing dir" / "user_profile" / f"{DAY}.csv")
    landing = LandingFiles(url=(tmp_path / "landing dir").as_uri())  # file:///.../landing%20dir
    assert landing.url.startswith("file:///")

    local = landing.fetch(relative_path=f"user_profile/{DAY}.csv", dest_dir=tmp_path / "in")

    assert local == tmp_path / "in" / f"{DAY}.csv"
    assert landing_file_to_parquet(local, tmp_path / "extract") == 200
    with pytest.raises(SourceMissingError, match="does not exist"):
        landing.fetch(relative_path=f"user_profile/{DAY}-missing.csv", dest_dir=tmp_path / "in")


def test_table_extract_of_an_empty_day_has_the_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'src.db'}"
    write_table(generate(10, "2026-11-25"), url)
    out = tmp_path / "extract"
    assert (
        SourceDatabase(url=url).extract_day(
            table="user_profile", date_column="snapshot_date", day=DAY, out_dir=out
        )
        == 0
    )
    assert "user_id" in pl.read_parquet(out / "*.parquet").columns


def test_postgres_extract_binds_the_date_safely(pg_url, tmp_path):
    write_table(generate(5, DAY), pg_url)
    out = tmp_path / "extract"
    hostile = "2026-11-26' OR '1'='1"
    rows = SourceDatabase(url=pg_url).extract_day(
        table="user_profile", date_column="snapshot_date", day=hostile, out_dir=out
    )
    assert rows == 0
    with sa.create_engine(
        pg_url.replace("postgresql://", "postgresql+psycopg2://")
    ).connect() as conn:
        assert conn.execute(sa.text("select count(*) from user_profile")).scalar() == 5


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_landing_file_over_sftp(sftp_server, tmp_path, suffix):
    source = generate(1_000, DAY, bad_share=0.02)
    write_landing_file(source, sftp_server.root / "user_profile" / f"{DAY}{suffix}")
    landing = sftp_server.landing()

    local = landing.fetch(relative_path=f"user_profile/{DAY}{suffix}", dest_dir=tmp_path / "in")
    rows = landing_file_to_parquet(local, tmp_path / "extract")

    assert rows == 1_000
    extracted = pl.read_parquet(tmp_path / "extract" / "*.parquet")
    assert sorted(extracted["user_id"].drop_nulls()) == sorted(source["user_id"].drop_nulls())


def test_missing_landing_file_names_the_path(sftp_server, tmp_path):
    with pytest.raises(SourceMissingError, match="user_profile/2026-11-26.csv"):
        sftp_server.landing().fetch(relative_path=f"user_profile/{DAY}.csv", dest_dir=tmp_path)
    with pytest.raises(SourceMissingError, match="does not exist"):
        LandingFiles(url=str(tmp_path / "nowhere")).fetch(
            relative_path=f"{DAY}.csv", dest_dir=tmp_path
        )


def test_wrong_sftp_password_is_refused_naming_the_setting_not_the_password(sftp_server, tmp_path):
    write_landing_file(generate(3, DAY), sftp_server.root / f"{DAY}.csv")
    with pytest.raises(LandingConfigError, match="refused the credentials") as refused:
        sftp_server.landing(sftp_password="wrong-pass").fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path)
    assert "DATAHUB_SFTP_PASSWORD" in str(refused.value) and "wrong-pass" not in str(refused.value)


def test_an_sftp_server_with_an_unknown_host_key_is_refused(sftp_server, tmp_path):
    import asyncssh

    write_landing_file(generate(3, DAY), sftp_server.root / f"{DAY}.csv")
    other = tmp_path / "other_known_hosts"  # another server's key under this address
    other.write_text(f"[127.0.0.1]:{sftp_server.port} {asyncssh.generate_private_key('ssh-ed25519').export_public_key().decode()}")
    with pytest.raises(LandingConfigError, match="not in .*DATAHUB_SFTP_KNOWN_HOSTS"):
        sftp_server.landing(known_hosts=str(other)).fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in")
    with pytest.raises(LandingConfigError, match="DATAHUB_SFTP_KNOWN_HOSTS.*it is not set"):
        sftp_server.landing(known_hosts="").fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in")
    assert not (tmp_path / "in" / f"{DAY}.csv").exists()


def test_a_password_in_the_sftp_url_is_refused(sftp_server, tmp_path):
    url = f"sftp://landing:{sftp_server.password}@127.0.0.1:{sftp_server.port}/"
    with pytest.raises(LandingConfigError, match="DATAHUB_SFTP_PASSWORD") as refused:
        sftp_server.landing(url=url).fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path)
    assert sftp_server.password not in str(refused.value)


def test_file_url_landing_folder(tmp_path):
    source = generate(20, DAY)
    write_landing_file(source, tmp_path / "landing" / f"{DAY}.csv")
    local = LandingFiles(url=(tmp_path / "landing").as_uri()).fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in")
    assert landing_file_to_parquet(local, tmp_path / "extract") == 20
