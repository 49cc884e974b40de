"""Limits on one landing file: its size (local and over a real SFTP server), one field,
and the header. Each is refused with a message that names the setting and no value.
The timings and memory of the large cases (a 3 MB header, a 1 GB field) are in
bench/landing_limits.py."""

from __future__ import annotations

import pytest

from datahub_assets.extract.sources import LandingFiles, SourceFormatError, landing_file_to_parquet

DAY = "2026-11-26"
SECRET = "Alice-Customer-4711"  # a value that must never appear in a message


def write_csv(path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def test_a_local_landing_file_over_the_size_limit_is_refused_before_it_is_copied(tmp_path):
    write_csv(tmp_path / "landing" / f"{DAY}.csv", "user_id,name", [f"u{i},{SECRET}" for i in range(100)])
    landing = LandingFiles(url=str(tmp_path / "landing"), max_file_bytes=1_000)

    with pytest.raises(SourceFormatError, match=r"over the limit of 1,000 bytes \(LandingFiles.max_file_bytes\)"):
        landing.fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in")
    assert list((tmp_path / "in").iterdir()) == []  # nothing copied

    fits = LandingFiles(url=str(tmp_path / "landing"), max_file_bytes=100_000)
    assert fits.fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in").stat().st_size < 100_000


def test_an_sftp_download_over_the_size_limit_is_refused(sftp_server, tmp_path):
    write_csv(sftp_server.root / f"{DAY}.csv", "user_id,name", [f"u{i},{SECRET}" for i in range(1_000)])

    with pytest.raises(SourceFormatError, match="LandingFiles.max_file_bytes") as refused:
        sftp_server.landing(max_file_bytes=10_000).fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "in")
    assert SECRET not in str(refused.value)
    assert list((tmp_path / "in").iterdir()) == []

    local = sftp_server.landing().fetch(relative_path=f"{DAY}.csv", dest_dir=tmp_path / "ok")
    assert local.read_text().count(SECRET) == 1_000


def test_a_field_over_the_limit_fails_the_day_without_quoting_it(tmp_path):
    path = tmp_path / f"{DAY}.csv"
    write_csv(path, "user_id,name", ["u1,short", f"u2,{SECRET * 1_000}", "u3,short"])

    with pytest.raises(SourceFormatError, match=r"a field near line 3 is longer than 10,000 characters") as refused:
        landing_file_to_parquet(path, tmp_path / "out", max_field_bytes=10_000)
    assert SECRET not in str(refused.value)

    assert landing_file_to_parquet(path, tmp_path / "out", max_field_bytes=100_000) == 3


def test_a_header_over_the_limit_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / f"{DAY}.csv"
    write_csv(path, ",".join(f"c{i}" for i in range(5_000)), ["x" * 10])

    with pytest.raises(SourceFormatError, match=r"header row is longer than 10,000 bytes"):
        landing_file_to_parquet(path, tmp_path / "out", max_field_bytes=10_000)


def test_repeated_header_names_are_quoted_only_when_they_look_like_identifiers(tmp_path):
    named = tmp_path / "named.csv"
    write_csv(named, "user_id,os_version,os_version", ["u1,a,b"])
    with pytest.raises(SourceFormatError, match=r"names 1 column\(s\) more than once: \['os_version'\]"):
        landing_file_to_parquet(named, tmp_path / "out")

    # No header row: the first customer record stands where the names should be.
    headerless = tmp_path / "headerless.csv"
    write_csv(headerless, f"u1,{SECRET},{SECRET},1990-01-01", [f"u2,{SECRET},x,1990-01-02"])
    with pytest.raises(SourceFormatError, match=r"without its header row") as refused:
        landing_file_to_parquet(headerless, tmp_path / "out")
    assert SECRET not in str(refused.value)
