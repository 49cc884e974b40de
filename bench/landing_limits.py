"""Landing-file limits: a hostile file is refused fast, in flat memory.

    .venv/bin/python bench/landing_limits.py           # a 3 MB header, a 1 GB field
    .venv/bin/python bench/landing_limits.py --small   # a 3 MB header, a 64 MB field (CI smoke run)

Each case runs `landing_file_to_parquet` with the default limits (LandingFiles:
max_field_bytes 1 MiB) in a fresh process, which reports its seconds and peak RSS.
The baseline is the same call on a well-formed 100,000-row file in the same run: a
refusal should cost no more memory than an ordinary day's conversion.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from benchlib import Result  # noqa: E402

from datahub_assets.extract.sources import SourceFormatError, landing_file_to_parquet  # noqa: E402

MB = 2**20


def write_ordinary(path: Path) -> None:
    with path.open("w") as f:
        f.write("user_id,name,age\n")
        f.writelines(f"u{i:08d},name-{i},{20 + i % 60}\n" for i in range(100_000))


def write_long_header(path: Path, header_bytes: int) -> None:
    columns, size = [], 0
    while size < header_bytes:
        columns.append(f"column_{len(columns):07d}")
        size += len(columns[-1]) + 1
    path.write_text(",".join(columns) + "\n" + ",".join("x" for _ in columns) + "\n")


def write_long_field(path: Path, field_bytes: int) -> None:
    block = b"a" * MB
    with path.open("wb") as f:
        f.write(b"user_id,name\nu1,")
        for _ in range(field_bytes // MB):
            f.write(block)
        f.write(b"\n")


def convert(path: str, out_dir: str) -> dict:
    started = time.perf_counter()
    try:
        rows = landing_file_to_parquet(Path(path), Path(out_dir))
        outcome = f"{rows} rows"
    except SourceFormatError as error:
        outcome = f"refused: {error}"
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": benchlib.peak_rss_mb(), "outcome": outcome}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 64 MB field instead of 1 GB: a CI smoke run")
    parser.add_argument("--md", type=Path, default=None, help="append the markdown rows to this file")
    args = parser.parse_args()
    field_bytes = (64 if args.small else 1024) * MB

    with tempfile.TemporaryDirectory(prefix="landing-limits-") as tmp:
        work = Path(tmp)
        write_ordinary(work / "ordinary.csv")
        write_long_header(work / "header.csv", 3 * MB)
        write_long_field(work / "field.csv", field_bytes)
        runs = {}
        for name in ("ordinary", "header", "field"):
            runs[name] = benchlib.in_child(convert, str(work / f"{name}.csv"), str(work / f"out-{name}"))
            print(f"  {name}: {runs[name]}", flush=True)

    base = runs["ordinary"]
    results = []
    for name, what in (("header", "a 3 MB header"), ("field", f"a {field_bytes // MB:,} MB field")):
        run = runs[name]
        results += [
            Result(f"{what}: seconds to refuse", run["seconds"], base["seconds"], "s", "<= 5",
                   baseline_name="converting 100,000 ordinary rows", note=run["outcome"][:90]),
            Result(f"{what}: peak RSS", run["peak_rss_mb"], base["peak_rss_mb"], "MB",
                   "<= 1.5", checked=run["peak_rss_mb"] / base["peak_rss_mb"], baseline_name="the same conversion"),
        ]  # fmt: skip
    benchlib.report("landing-file limits", results, args.md)


if __name__ == "__main__":
    main()
