"""Fixtures for the browser test: the local stack with three dates delivered and one
prepared, the real Dagster webserver and daemon on it, and headless Debian Chromium
driven by Playwright.

Nothing is faked: the endpoint, the stand-in SDK (in the run workers' JVMs), the
webserver, the daemon, their code servers and run workers are the same processes
`scripts/demo.sh --ui` starts, on a code location over a copy of the demo contract, as
the demo's. The differences: the copy cuts a date into RANGES batch ranges instead of 32,
so that a whole date is a handful of runs, and the run coordinator (see DAGSTER_YAML).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from datahub_assets.automation.daily import prepare_job_name
from datahub_assets.cli import deliver_date
from datahub_assets.contract import Contract, load_contract
from datahub_assets.definitions import build_definitions
from datahub_assets.partitions import batch_count, batch_slice, business_date, previous_date, range_keys
from datahub_dev.stack import LocalStack, copy_contracts, start_local_stack, write_code_location
from datahub_dev.synthetic import generate, write_table

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "datahub_assets" / "contracts"
RANGES = 3  # batch ranges of a date in the UI's contract copy: a whole date is 5 runs
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# As the machine's own probe starts Chromium: without the background-networking flags
# the closed network refuses its many connections; a fresh profile comes from
# launch_persistent_context(user_data_dir=...).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROWS = 2_000  # 20 batches, 6 or 7 a range: each upload run is short
# Rows of each earlier date, oldest first: rising to ROWS, so each date's plotted values
# differ, and by less than the contract's max_row_count_change from day to day.
EARLIER_ROWS = [1_400, 1_600, 1_800]
EARLIER_DAYS = len(EARLIER_ROWS)  # the copy's partitions start there
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_S = 90

# The test instance: runs launch at once (DefaultRunCoordinator), so a run launched from
# the UI needs no daemon (a backfill does: the `daemon` fixture); the pool still applies,
# as in deploy/local/dagster.yaml.
DAGSTER_YAML = """\
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
concurrency:
  pools:
    default_limit: 4
telemetry:
  enabled: false
nux:
  enabled: false  # the "join the community" dialog would cover the page
"""


@dataclass
class PreparedDay:
    stack: LocalStack
    day: str
    batches: int  # in the day's snapshot
    workspace: Path  # the code location over the stack's contract copy

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    @property
    def contract(self) -> Contract:
        return load_contract(self.stack.contracts_dir / "user_profile.yaml")

    @property
    def earlier_days(self) -> list[str]:
        """The copy's dates before `day`, oldest first."""
        return dates_before(self.day)

    def nonempty_range_keys(self) -> list[str]:
        keys = range_keys(self.contract.batch_ranges)
        return [k for i, k in enumerate(keys) if batch_slice(i, len(keys), self.batches)]


def dates_before(day: str, count: int = EARLIER_DAYS) -> list[str]:
    """The `count` dates before `day`, oldest first."""
    days = [day]
    for _ in range(count):
        days.insert(0, previous_date(days[0]))
    return days[:-1]


def copy_contract_with_ranges(contracts_dir: Path, start_date: str) -> None:
    """The demo contract, as the demo copies it (from `start_date`), cut into RANGES."""
    (path,) = copy_contracts(CONTRACTS_DIR, contracts_dir, start_date=start_date)
    text, changed = re.subn(r"^batch_ranges:.*$", f"batch_ranges: {RANGES}", path.read_text(), flags=re.M)
    assert changed == 1, path
    path.write_text(text)


@pytest.fixture(scope="module")
def prepared_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreparedDay]:
    """The local stack; the dates before the business date delivered whole, oldest first,
    as the days before would have delivered them; then a 2,000-row source for the business
    date (yesterday in GMT+8) and its extract and snapshot materialized in the stack's
    instance, as the demo (datahub_dev/demo.py) does.

    The earlier dates go by datahub-deliver's own function, in this process: extract,
    snapshot, every range and the proof, as runs on the webserver's instance. They come
    first because an older date is never sent after a newer one (the uploaded asset
    refuses it), and they are small, so this is quick."""
    root = (tmp_path_factory.mktemp("ui") / "stack").resolve()
    day = business_date()
    copy_contract_with_ranges(root / "contracts", start_date=dates_before(day)[0])
    stack = start_local_stack(root, contracts_dir=root / "contracts")
    try:
        workspace = write_code_location(root, stack.contracts_dir)
        Path(stack.env["DAGSTER_HOME"], "dagster.yaml").write_text(DAGSTER_YAML)
        source_url = stack.env["DATAHUB_SOURCE_DB_URL"]
        with pytest.MonkeyPatch.context() as mp:
            for key, value in stack.env.items():
                mp.setenv(key, value)  # the resources' EnvVars, and DAGSTER_HOME
            definitions = build_definitions(stack.contracts_dir)
            contract = load_contract(stack.contracts_dir / "user_profile.yaml")
            with dg.DagsterInstance.get() as instance:
                for earlier_day, rows in zip(dates_before(day), EARLIER_ROWS, strict=True):
                    write_table(generate(rows, earlier_day), source_url)
                    said: list[str] = []
                    assert deliver_date(definitions, instance, contract, earlier_day, say=said.append), said
                write_table(generate(ROWS, day), source_url)
                result = definitions.resolve_job_def(prepare_job_name(contract)).execute_in_process(
                    partition_key=day, instance=instance
                )
        (snapshot,) = result.asset_materializations_for_node("user_profile_snapshot")
        rows = snapshot.metadata["dagster/row_count"].value
        assert rows == ROWS  # the generator made no broken rows and no duplicates
        yield PreparedDay(stack=stack, day=day, batches=batch_count(rows), workspace=workspace)
    finally:
        stack.endpoint.stop()


@dataclass
class Webserver:
    url: str
    port: int
    log_path: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


WEBSERVER_START_ATTEMPTS = 5


class PortTaken(Exception):
    """Another process bound the port between our choice and the webserver's bind."""


def _unused_port() -> int:
    """A port nobody listened on a moment ago: a candidate only, checked by the start."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def webserver(prepared_day: PreparedDay) -> Iterator[Webserver]:
    """`python -m dagster_webserver` on the stack's code location, with the stack's env.

    The webserver cannot report a port it chose itself, so the fixture picks one; if
    another process takes it first, the webserver fails to bind and the fixture tries
    another port. It then trusts only an answer from our child: alive, and serving the
    instance of this stack's DAGSTER_HOME.
    """
    log_dir = Path(prepared_day.env["DAGSTER_HOME"]).parent
    env = {**os.environ, **prepared_day.env}
    for attempt in range(WEBSERVER_START_ATTEMPTS):
        port = _unused_port()
        log_path = log_dir / f"webserver-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "dagster_webserver", "-w", str(prepared_day.workspace), "-h", "127.0.0.1", "-p", str(port)],
                # Not the repo root: Dagster loads a .env from its working directory, and a
                # developer's would override the stack's settings.
                cwd=log_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = Webserver(url=f"http://127.0.0.1:{port}", port=port, log_path=log_path)
        try:
            wait_until_serving(server, process, dagster_home=prepared_day.env["DAGSTER_HOME"])
        except PortTaken:
            stop(process)
            continue
        except BaseException:
            stop(process)
            raise
        try:
            yield server
        finally:
            stop(process)
        return
    raise RuntimeError(f"no free port for the webserver in {WEBSERVER_START_ATTEMPTS} attempts")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_until_serving(server: Webserver, process: subprocess.Popen, dagster_home: str, timeout_s: float = 60) -> None:
    """Until our webserver answers and its code location has loaded.

    Raises PortTaken when the webserver could not bind its port, and refuses an answer
    from any other server on the port: ours is alive and serves our DAGSTER_HOME.
    """
    deadline = time.monotonic() + timeout_s
    query = (
        "{ instance { info } "
        "workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    )
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = server.log_tail()
            if "address already in use" in log.lower():
                raise PortTaken(server.port)
            raise RuntimeError(f"webserver exited with {process.returncode}:\n{log}")
        try:
            answer = server.graphql(query)
        except (OSError, urllib.error.URLError):
            answer = None
        if answer is not None:
            if dagster_home not in (answer["instance"]["info"] or ""):
                raise PortTaken(server.port)  # another server answers on this port
            entries = answer["workspaceOrError"]["locationEntries"]
            if [e["name"] for e in entries] == ["datahub_assets"] and entries[0]["loadStatus"] == "LOADED":
                if process.poll() is None:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"webserver not ready after {timeout_s} s:\n{server.log_tail()}")


@dataclass
class Daemon:
    process: subprocess.Popen
    log_path: Path

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"dagster-daemon exited with {self.process.returncode}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


DAEMON_START_TIMEOUT_S = 120
FAST_DAEMON = Path(__file__).with_name("fast_daemon.py")
BACKFILL_DAEMON_HEALTH = '{ instance { daemonHealth { daemonStatus(daemonType: "BACKFILL") { healthy } } } }'


@pytest.fixture(scope="module")
def daemon(prepared_day: PreparedDay, webserver: Webserver) -> Iterator[Daemon]:
    """`dagster-daemon run` on the webserver's code location and instance, started as
    datahub_dev/platform.py starts it, but with 2 s backfill cycles (tests/fast_daemon.py):
    the UI's backfills are launched by its backfill daemon, and it runs the sensors as in
    production. In its own session, so that its code server stops with it. Ready once
    the webserver reports the backfill daemon healthy (the UI warns about backfills
    otherwise)."""
    root = Path(prepared_day.env["DAGSTER_HOME"]).parent
    log_path = root / "daemon.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(FAST_DAEMON), "run", "-w", str(prepared_day.workspace)],
            cwd=root,  # not the repo root, for the same reason as the webserver
            env={**os.environ, **prepared_day.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Daemon(process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not webserver.graphql(BACKFILL_DAEMON_HEALTH)["instance"]["daemonHealth"]["daemonStatus"]["healthy"]:
            daemon.assert_alive()
            assert time.monotonic() < deadline, f"backfill daemon not healthy after {DAEMON_START_TIMEOUT_S} s:\n{daemon.log_tail()}"
            time.sleep(1)
        yield daemon
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's session group; SIGKILL to the group if its leader is still there after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Debian Chromium (never a Playwright download) with a fresh profile."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "ensure_chromium.sh")], check=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A new tab per test; its last state is saved as a screenshot whatever the outcome,
    so a failure leaves a picture of what the browser showed."""
    tab = browser_context.new_page()
    yield tab
    ARTIFACTS.mkdir(exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}-last.png"), full_page=True)
    tab.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


RUNS_BY_TAGS = """
query RunsByTags($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { runId status } }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def runs_with_tags(server: Webserver, tags: dict[str, str]) -> list[dict[str, Any]]:
    variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
    return server.graphql(RUNS_BY_TAGS, variables)["runsOrError"]["results"]


def wait_for_run(server: Webserver, run_id: str, timeout_s: float = RUN_TIMEOUT_S) -> str:
    """The run's final status, polled over GraphQL."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
        if status in FINISHED:
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run_id} not finished after {timeout_s} s:\n{server.log_tail()}")


BACKFILL_STATUS = """
query BackfillStatus($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) { ... on PartitionBackfill { status } }
}
"""
BACKFILL_UNFINISHED = {"REQUESTED", "CANCELING", "FAILING"}
# The backfill daemon looks at a backfill every 30 s and submits one layer of the chain
# each time (extract+snapshot, the ranges, the proof); 4 looks and the runs in between.
BACKFILL_TIMEOUT_S = 360


def wait_for_backfill(server: Webserver, daemon: Daemon, backfill_id: str, timeout_s: float = BACKFILL_TIMEOUT_S) -> str:
    """The backfill's final status, polled over GraphQL while the daemon that runs it lives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        daemon.assert_alive()
        status = server.graphql(BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"]["status"]
        if status not in BACKFILL_UNFINISHED:
            return status
        time.sleep(2)
    raise TimeoutError(f"backfill {backfill_id} not finished after {timeout_s} s:\n{daemon.log_tail()}")
