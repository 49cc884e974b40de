"""The demo as a user runs it (`python -m datahub_dev.demo`, what scripts/demo.sh runs after
the set-up): a process on the real endpoint, JVM and Dagster, judged by what it prints
and by the processes it leaves behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from support import write_contract

REPO_ROOT = Path(__file__).resolve().parents[1]
# A second dataset whose source is another table, with columns of every partner type
# (one computed by an expression).
DEVICE_CONTRACT = """
dataset: device_profile
data_uuid: 0f6d3a0c5b7e4a1e9c2d8b6a4f1e3c5d
source: {kind: table, table: device_profile, date_column: seen_on}
columns:
  - {name: id, type: String, required: true, source: device_id}
  - {name: screenWidth, type: Double, source: screen_width}
  - {name: appBuild, type: Bigint, source: app_build}
  - {name: model, type: String, expression: "upper(model_name)"}
batch_ranges: 2
"""
SUMMARY_LINE = re.compile(r"^  (\w+): (\d+) batches sent, (\d+) already delivered, (\d+) ranges failed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(var: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "datahub_dev.demo", "--var", str(var), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )


def summary(stdout: str) -> dict[str, tuple[int, int, int]]:
    """{dataset: (batches sent, already delivered, ranges failed)} from the summary lines."""
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for line in stdout.splitlines() if (m := SUMMARY_LINE.match(line))}


def test_the_demo_delivers_every_contract_quietly_and_a_rerun_counts_what_is_already_delivered(tmp_path):
    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    (contracts / "device_profile.yaml").write_text(DEVICE_CONTRACT)
    var = tmp_path / "var"
    args = ["--contracts", str(contracts), "--days", "2", "--rows", "700", "--endpoint-port", str(free_port())]

    first = demo(var, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) <= 40 and lines[-1].startswith("done in "), first.stdout
    assert first.stderr == ""
    delivered = summary(first.stdout)
    assert set(delivered) == {"user_profile", "device_profile"}
    for sent, already, failed in delivered.values():
        assert sent >= 2 * 6 and already == 0 and failed == 0  # 2 dates of 7 batches, less the broken rows
    log = (var / "demo.log").read_text()
    assert "DEBUG" in log and "BetaWarning" not in first.stdout  # Dagster's own lines went to the log

    again = demo(var, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    # Every batch of both dates is acknowledged already: nothing is sent again.
    assert summary(again.stdout) == {dataset: (0, sent, 0) for dataset, (sent, _, _) in delivered.items()}, again.stdout
    assert again.stdout.count("batches already delivered (not sent again after ") == 2  # the older date of each


def test_a_busy_port_gets_a_one_line_hint(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = demo(tmp_path / "var", "--endpoint-port", str(port))
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"port {port} is in use" in result.stderr and "--endpoint-port" in result.stderr
    assert not (tmp_path / "var").exists()  # stopped before starting anything


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_ui_its_daemon_and_the_endpoint(tmp_path):
    ui_port, endpoint_port = free_port(), free_port()
    contracts = write_contract(tmp_path / "contracts", batch_ranges=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "datahub_dev.demo", "--ui", "--var", str(tmp_path / "var"), "--contracts", str(contracts),
         "--days", "1", "--rows", "100", "--ui-port", str(ui_port), "--endpoint-port", str(endpoint_port)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started: set[int] = set()
    try:
        shown = []
        for line in process.stdout:
            shown.append(line)
            if " is up" in line or "did not start" in line:
                break
        assert any(" is up" in line for line in shown), "".join(shown) + (tmp_path / "var" / "dagster-dev.log").read_text()[-3000:]
        # The UI answers, and what the demo started: the endpoint, dagster dev, its
        # webserver, daemon and code server.
        deadline = time.monotonic() + 60
        while len(started := descendants(process.pid)) < 4 and time.monotonic() < deadline:
            time.sleep(1)
        assert len(started) >= 4, started

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
    left = [pid for pid in started if alive(pid)]
    assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in left]
    for port in (ui_port, endpoint_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    assert os.path.exists(tmp_path / "var" / "demo.env")
