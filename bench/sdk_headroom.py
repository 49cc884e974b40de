"""How far above the partner's cap can the SDK stand-in and the local endpoint go?

    .venv/bin/python bench/sdk_headroom.py [--batches 1000] [--threads 12]

Starts the endpoint with the cap lifted and no injected latency, creates keys with the
toolkit, and sends the same batches of 100 rows through the Java stand-in SDK (JPype)
twice: sequentially from one thread (the baseline), then from a thread pool. Prints
batches/s, their ratio to the 20/s cap and to the 200/s target, what the endpoint
stored, and whether its database holds any plaintext.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jpype
import jpype.imports  # noqa: F401 - enables Java imports

from benchlib import CONTRACT_PATH as CONTRACT, REPO_ROOT
from datahub_assets.contract import load_contract
from datahub_dev.stack import register_keys
from datahub_emulator.client import EmulatorProcess

CAP = 20.0
TARGET = 200.0
ROWS_PER_BATCH = 100


@dataclass
class PhaseResult:
    name: str
    batches: int
    seconds: float
    codes: dict[str, int]
    rows_stored: int
    max_sliding: int
    endpoint_cpu_s: float
    client_cpu_s: float

    @property
    def rate(self) -> float:
        return self.batches / self.seconds


def make_batches(count: int, token: str) -> list[list[str]]:
    """Distinct rows whose every value carries `token`, so a leak is easy to find."""
    batches = []
    for b in range(count):
        rows = []
        for r in range(ROWS_PER_BATCH):
            n = b * ROWS_PER_BATCH + r
            row = {
                "id": f"{token}-{n:08d}",
                "userName": f"user {token} {n}",
                "userAge": str(18 + n % 80),
                "screenWidth": f"{360 + n % 1200}.5",
            }
            rows.append(json.dumps(row))
        batches.append(rows)
    return batches


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_phase(
    name: str,
    endpoint: EmulatorProcess,
    send: Callable[[list[str]], str],
    batches: list[list[str]],
    threads: int,
) -> PhaseResult:
    endpoint.reset()
    endpoint_cpu, client_cpu = process_cpu_s(endpoint.pid), own_cpu_s()
    started = time.perf_counter()
    if threads == 1:
        codes = [send(batch) for batch in batches]
    else:
        with ThreadPoolExecutor(threads) as pool:
            codes = list(pool.map(send, batches))
    seconds = time.perf_counter() - started
    stats = endpoint.stats()
    return PhaseResult(
        name=name,
        batches=len(batches),
        seconds=seconds,
        codes={code: codes.count(code) for code in sorted(set(codes))},
        rows_stored=sum(stats["rows_stored"].values()),
        max_sliding=stats["max_admitted_per_sliding_second"],
        endpoint_cpu_s=process_cpu_s(endpoint.pid) - endpoint_cpu,
        client_cpu_s=own_cpu_s() - client_cpu,
    )


def leaked(db_path: Path, token: str) -> list[str]:
    """Files of the endpoint's database that contain the token in clear."""
    paths = [db_path, Path(f"{db_path}-wal")]
    return [p.name for p in paths if p.exists() and token.encode() in p.read_bytes()]


def report(result: PhaseResult) -> None:
    print(
        f"{result.name:<22} {result.batches} batches in {result.seconds:6.2f} s = "
        f"{result.rate:7.1f} batches/s ({result.rate / CAP:5.1f}x the 20/s cap, "
        f"{result.rate / TARGET:4.2f}x the 200/s target)"
    )
    print(
        f"{'':<22} codes {result.codes}; rows stored {result.rows_stored}; "
        f"max admitted per sliding second {result.max_sliding}"
    )
    print(
        f"{'':<22} CPU: endpoint {result.endpoint_cpu_s:5.1f} s "
        f"({1000 * result.endpoint_cpu_s / result.batches:4.2f} ms/batch), "
        f"JVM + Python {result.client_cpu_s:5.1f} s "
        f"({1000 * result.client_cpu_s / result.batches:4.2f} ms/batch)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None, help="keep files here")
    args = parser.parse_args()

    if args.workdir is None:
        # Holds keys.properties (secrets): removed afterwards unless --workdir is given.
        with tempfile.TemporaryDirectory(prefix="sdk-headroom-") as tmp:
            run(args, Path(tmp))
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    jar = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_sdk.sh")],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    data_uuid = load_contract(CONTRACT).data_uuid
    token = secrets.token_hex(8)
    batches = make_batches(args.batches, token)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workdir {workdir}")

    endpoint = EmulatorProcess(
        db_path=workdir / "datahub.db", cap=100_000, log_path=workdir / "datahub.log"
    )
    with endpoint:
        keys = workdir / "keys.properties"
        register_keys(endpoint.url, keys, [CONTRACT])
        jpype.startJVM(classpath=[jar], convertStrings=False)
        from com.alipay.idatahub.client import DataUploadClient
        from java.util import ArrayList

        client = DataUploadClient(str(keys))

        def send(rows: list[str]) -> str:
            java_rows: Any = ArrayList(len(rows))
            for row in rows:
                java_rows.add(row)
            result = client.uploadData(data_uuid, java_rows)
            return f"{result.getResultStatus()}/{result.getResultCode()}"

        # Warm the JIT, the connection pool and the endpoint's caches before measuring.
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(send, make_batches(50, secrets.token_hex(8))))

        baseline = run_phase("baseline (1 thread)", endpoint, send, batches, threads=1)
        report(baseline)
        concurrent = run_phase(
            f"pool ({args.threads} threads)", endpoint, send, batches, threads=args.threads
        )
        report(concurrent)
        print(f"speed-up of the pool over the baseline: {concurrent.rate / baseline.rate:.2f}x")
        client.close()
        running_leaks = leaked(endpoint.db_path, token)
    stopped_leaks = leaked(endpoint.db_path, token)
    verdict = "none" if not (running_leaks or stopped_leaks) else running_leaks + stopped_leaks
    print(f"plaintext of sent values in the endpoint's database (db and WAL): {verdict}")


if __name__ == "__main__":
    main()
