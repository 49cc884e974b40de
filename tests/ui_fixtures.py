"""Fixtures for the browser test: the local stack with one prepared day, the real
Dagster webserver on it, and headless Debian Chromium driven by Playwright.

Nothing is faked: the endpoint, the stand-in SDK (in the run workers' JVMs), the
webserver, its code server and run workers are the same processes `scripts/demo.sh --ui`
starts. The only difference is the run coordinator (see DAGSTER_YAML).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from datahub_assets.contract import load_contract
from datahub_assets.definitions import build_dataset_assets
from datahub_assets.resources import build_resources
from datahub_dev.synthetic import generate, write_table
from datahub_assets.partitions import batch_count, batch_slice, partner_today, range_keys
from datahub_dev.stack import LocalStack, start_local_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "datahub_assets" / "contracts"
CONTRACT = load_contract(CONTRACTS_DIR / "user_profile.yaml")
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
ROWS = 2_000  # 20 batches: one batch in most ranges, so each upload run is short
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_S = 90

# The test instance: runs launch at once (DefaultRunCoordinator), so no daemon is
# needed; the pool still applies, as in deploy/local/dagster.yaml.
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

    @property
    def env(self) -> dict[str, str]:
        return self.stack.env

    def nonempty_range_keys(self) -> list[str]:
        keys = range_keys(CONTRACT.batch_ranges)
        return [k for i, k in enumerate(keys) if batch_slice(i, len(keys), self.batches)]


@pytest.fixture(scope="module")
def prepared_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PreparedDay]:
    """The local stack, a 2,000-row source for yesterday (GMT+8), and that day's extract
    and snapshot materialized in the stack's instance, as the demo (datahub_dev/demo.py) does."""
    stack = start_local_stack(tmp_path_factory.mktemp("ui") / "stack")
    try:
        Path(stack.env["DAGSTER_HOME"], "dagster.yaml").write_text(DAGSTER_YAML)
        day = str(partner_today() - timedelta(days=1))
        write_table(generate(ROWS, day), stack.env["DATAHUB_SOURCE_DB_URL"])
        with pytest.MonkeyPatch.context() as mp:
            for key, value in stack.env.items():
                mp.setenv(key, value)  # the resources' EnvVars, and DAGSTER_HOME
            assets = {a.key.to_user_string(): a for a in build_dataset_assets(CONTRACTS_DIR)}
            with dg.DagsterInstance.get() as instance:
                result = dg.materialize(
                    [assets["user_profile_extract"], assets["user_profile_snapshot"]],
                    partition_key=day,
                    resources=build_resources(),
                    instance=instance,
                )
        assert result.success
        (snapshot,) = result.asset_materializations_for_node("user_profile_snapshot")
        rows = snapshot.metadata["dagster/row_count"].value
        assert rows == ROWS  # the generator made no broken rows and no duplicates
        yield PreparedDay(stack=stack, day=day, batches=batch_count(rows))
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
    """`python -m dagster_webserver` on the repo's workspace.yaml, with the stack's env.

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
                [sys.executable, "-m", "dagster_webserver", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
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
