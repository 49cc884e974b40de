"""The platform as production runs it, on one machine, for trials and benchmarks.

`Platform` sets up, under one folder:
- Dagster's storage in a scratch PostgreSQL database, and a DAGSTER_HOME holding the
  repository's production dagster.yaml (QueuedRunCoordinator, run monitoring, run
  retries, the upload pool);
- the delivery database (ledger, limiter, range leases) in another scratch database;
- the local endpoint with registered keys (`datahub_dev.stack`), a synthetic source day
  and that day's snapshot;
- `dagster-daemon run` (it launches queued runs, runs the sensors and the run retries)
  and `dagster-webserver`, whose GraphQL API submits runs to the queue, as the UI does.

Runs are launched the ways operators launch them: `launch` submits one to the queue
(daemon-launched, the default launcher), `materialize_cli` starts `dagster asset
materialize` (the run worker is that CLI process). `run_processes` finds a run's
processes to kill: the step process named by its range lease (the lease records the
holder's pid) and its parent, the run worker.

Everything is dropped by `stop()` (or leaving the `with` block): processes, scratch
databases and the endpoint. The folder stays for its logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl
import sqlalchemy as sa
import yaml

from datahub_assets.automation.daily import block_label, run_tags
from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, Contract, load_contracts
from datahub_assets.lake import DataLake
from datahub_assets.partitions import (
    BATCH_ROWS,
    Stage,
    asset_name,
    block_partition_tags,
    business_date,
    previous_date,
    range_keys,
    upload_partition_key,
)
from datahub_assets.resources import build_resources
from datahub_assets.upload.lease import lease_table
from datahub_assets.upload.ledger import Ledger, LedgerEntry, ledger_table
from datahub_assets.upload.resources import create_delivery_engine
from datahub_dev.machines import Machine, simulated_machines
from datahub_dev.scratch_db import scratch_database
from datahub_dev.stack import REPO_ROOT, LocalStack, answers, start_local_stack
from datahub_dev.synthetic import generate, write_table
from datahub_emulator.toolkit import read_properties, write_properties

PRODUCTION_INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
LOCATION = "datahub_platform"
ASSET_JOB = "__ASSET_JOB"
REPOSITORY = "__repository__"
UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_HOLDER_PID = re.compile(r"\(pid (\d+) on ")

# The code location: the platform's own definitions over this folder's contracts, with
# the limiter's cap.
_DEFINITIONS_PY = '''"""The platform's definitions over the contracts next to this file (written by datahub_dev.platform)."""
from pathlib import Path

import dagster as dg

from datahub_assets.definitions import build_definitions
from datahub_assets.upload.resources import DeliveryDatabase

defs = build_definitions(
    Path(__file__).parent / "contracts",
    delivery_db=DeliveryDatabase(url=dg.EnvVar("DATAHUB_DELIVERY_DB_URL"), cap_per_second={cap}),
)
'''


@dataclass(frozen=True)
class PlatformSpec:
    """What to set up. The contracts are the repository's unless given; each copy gets
    `ranges` batch ranges (its dataUuid and columns stay, so the keys register for it)."""

    rows: int = 4_000  # source rows of the day, per contract
    ranges: int = 4  # batch ranges per day
    day: str = field(default_factory=business_date)  # the business date delivered
    earlier_days: int = 0  # also prepared: this many dates before `day` (for backfills)
    contracts: Sequence[Path] = (DEFAULT_CONTRACTS_DIR / "user_profile.yaml",)
    cap: int | None = None  # the endpoint's cap in batches/s (None: its default, 20)
    upload_runs: int = 4  # the fan-out's upload runs per date (the contract's upload_runs)
    webhook_url: str = ""  # where alerts go (empty: nowhere)
    seed: int = 7
    # A PostgreSQL source holding the days' rows already. The days are then prepared by
    # their own runs (the schedule's), not in this process.
    source_url: str | None = None
    limiter_cap: float | None = None  # the limiter's cap in batches/s (None: the endpoint's cap, or 20)
    machines: int = 0  # simulated machines the upload runs start in (datahub_dev.machines); 0: this host


@dataclass(frozen=True)
class RunProcesses:
    """The OS processes of one upload run."""

    run_worker: int
    step: int


class Platform:
    def __init__(self, root: Path, spec: PlatformSpec = PlatformSpec()):
        self.root = root.resolve()
        self.spec = spec
        self._exit = contextlib.ExitStack()
        self._processes: dict[str, subprocess.Popen] = {}
        self.stack: LocalStack | None = None
        self.env: dict[str, str] = {}
        self.instance: dg.DagsterInstance | None = None
        self.delivery_engine: sa.Engine | None = None
        self.webserver_port = 0
        self.machines: list[Machine] = []

    # --- setting up and tearing down ----------------------------------------------------

    def __enter__(self) -> Platform:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Platform:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        storage_url = self._exit.enter_context(scratch_database("datahub_platform_dagster"))
        delivery_url = self._exit.enter_context(scratch_database("datahub_platform_delivery"))
        self._write_contracts()
        self.machines = self._exit.enter_context(simulated_machines(self.spec.machines, self.root)) if self.spec.machines else []
        self.stack = start_local_stack(
            self.root, cap=self.spec.cap, contracts_dir=self.contracts_dir,
            https_hosts=tuple(m.host_address for m in self.machines),
        )  # fmt: skip
        self._exit.callback(self.stack.endpoint.stop)
        self.env = self._environment(storage_url, delivery_url)
        os.environ.update(self.env)  # this process reads the same instance and resources
        self._write_instance()
        self.instance = self._exit.enter_context(dg.DagsterInstance.from_config(str(self.home)))
        self.delivery_engine = create_delivery_engine(delivery_url)
        self._exit.callback(self.delivery_engine.dispose)
        if self.spec.source_url is None:
            self._prepare_day()
        self._start_services()
        return self

    def stop(self) -> None:
        for name in list(self._processes):
            self._stop_process(name)
        self._exit.close()

    @property
    def limiter_cap(self) -> float:
        return self.spec.limiter_cap or self.spec.cap or 20.0

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def contracts_dir(self) -> Path:
        return self.root / "contracts"

    @property
    def contracts(self) -> list[Contract]:
        return load_contracts(self.contracts_dir)

    @property
    def endpoint(self):  # noqa: ANN201 - the EmulatorProcess
        assert self.stack is not None
        return self.stack.endpoint

    def _write_contracts(self) -> None:
        self.contracts_dir.mkdir()
        for path in self.spec.contracts:
            raw = yaml.safe_load(Path(path).read_text())
            raw["batch_ranges"] = self.spec.ranges
            raw["upload_runs"] = self.spec.upload_runs
            (self.contracts_dir / Path(path).name).write_text(yaml.safe_dump(raw, sort_keys=False))
        (self.root / "definitions.py").write_text(_DEFINITIONS_PY.format(cap=float(self.limiter_cap)))
        workspace = {"load_from": [{"python_file": {"relative_path": "definitions.py", "location_name": LOCATION}}]}
        (self.root / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    def _environment(self, storage_url: str, delivery_url: str) -> dict[str, str]:
        assert self.stack is not None
        storage = sa.make_url(storage_url)
        env = {
            **self.stack.env,
            "DAGSTER_PG_HOST": storage.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(storage.port or 5432),
            "DAGSTER_PG_USER": storage.username or "postgres",
            "DAGSTER_PG_PASSWORD": "unused-under-trust-auth",  # required by the yaml
            "DAGSTER_PG_DB": storage.database or "",
            "DATAHUB_DELIVERY_DB_URL": delivery_url,
            "DATAHUB_ALERT_WEBHOOK_URL": self.spec.webhook_url,
        }
        if self.spec.source_url is not None:
            env["DATAHUB_SOURCE_DB_URL"] = self.spec.source_url
        if self.machines:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        return env

    def _machine_environment(self, machine: Machine) -> dict[str, str]:
        """What changes for a run in `machine`: every service at the host's address on
        its veth, and keys naming the endpoint there."""
        assert self.stack is not None
        keys = read_properties(self.stack.keys_path)
        endpoint = keys["endpoint"].replace("127.0.0.1", machine.host_address)
        machine_keys = self.root / "keys" / f"{machine.namespace}.properties"
        write_properties(machine_keys, {**keys, "endpoint": endpoint})
        delivery = sa.make_url(self.env["DATAHUB_DELIVERY_DB_URL"]).set(host=machine.host_address)
        return {
            "DAGSTER_PG_HOST": machine.host_address,
            "DATAHUB_DELIVERY_DB_URL": delivery.render_as_string(hide_password=False),
            "DATAHUB_KEYS_PATH": str(machine_keys),
        }

    def _write_instance(self) -> None:
        """The production instance configuration, with an upload pool sized as production's
        is: the fan-out's runs of a date, plus the backfill runs the queue lets through."""
        config = yaml.safe_load(PRODUCTION_INSTANCE_YAML.read_text())
        config["concurrency"]["pools"]["default_limit"] = self.spec.upload_runs + backfill_run_limit(config)
        if self.machines:
            config["run_launcher"] = {
                "module": "datahub_dev.machines",
                "class": "NamespaceRunLauncher",
                "config": {
                    "log_dir": str(self.root),
                    "machines": [{"namespace": m.namespace, "env": self._machine_environment(m)} for m in self.machines],
                },
            }
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def days(self) -> list[str]:
        """The prepared business dates, newest (`spec.day`) first."""
        days = [self.spec.day]
        for _ in range(self.spec.earlier_days):
            days.append(previous_date(days[-1]))
        return days

    def _prepare_day(self) -> None:
        """Each prepared date's source rows and snapshot, materialized in this process
        (quietly: its events are in the instance)."""
        source_url = self.env["DATAHUB_SOURCE_DB_URL"]
        resources = build_resources()
        for contract in self.contracts:
            assets = [a for a in self._assets() if a.key.path[-1] in {asset_name(contract, s) for s in (Stage.EXTRACT, Stage.SNAPSHOT)}]
            for day in self.days:
                write_table(generate(self.spec.rows, day, seed=self.spec.seed), source_url, contract.source.table)
                dg.materialize(
                    assets, partition_key=day, resources=resources, instance=self.instance,
                    run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
                )  # fmt: skip

    def _assets(self) -> list[dg.AssetsDefinition]:
        from datahub_assets.definitions import build_dataset_assets

        return build_dataset_assets(self.contracts_dir)

    def _start_services(self) -> None:
        bin_dir = Path(sys.executable).parent
        workspace = str(self.root / "workspace.yaml")
        self.webserver_port = _free_port()
        self._start_process("daemon", [str(bin_dir / "dagster-daemon"), "run", "-w", workspace])
        self._start_process(
            "webserver",
            [str(bin_dir / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(self.webserver_port)],
        )
        _wait_for(lambda: answers(f"http://127.0.0.1:{self.webserver_port}/server_info"), 120, "the webserver")

    def _start_process(self, name: str, command: list[str]) -> None:
        with open(self.root / f"{name}.log", "ab") as log:
            self._processes[name] = subprocess.Popen(
                command, cwd=self.root, env={**os.environ, **self.env}, stdout=log, stderr=log, start_new_session=True
            )

    def _stop_process(self, name: str) -> None:
        process = self._processes.pop(name)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # its own session: its code servers stop with it
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    # --- launching and watching runs ------------------------------------------------------

    def contract(self, dataset: str | None = None) -> Contract:
        contracts = self.contracts
        return next(c for c in contracts if c.dataset == dataset) if dataset else contracts[0]

    def range_keys(self) -> list[str]:
        return range_keys(self.spec.ranges)

    def upload_config(self, contract: Contract, **config: object) -> dict:
        return {"ops": {asset_name(contract, Stage.UPLOADED): {"config": {"progress_every_s": 2.0, **config}}}}

    def launch(
        self, first: str, last: str | None = None, *, dataset: str | None = None, day: str | None = None,
        tags: dict | None = None, **config: object,
    ) -> str:
        """Submit an upload run to the queue, as the UI does, of range `first`, or of the
        block of ranges first..last as the daily fan-out cuts them; the daemon launches it.
        Returns its run id."""
        from dagster_graphql import DagsterGraphQLClient

        contract, day = self.contract(dataset), day or self.spec.day
        if last is None:
            key = upload_partition_key(day, first)
            targets = {
                "dagster/partition": str(key),
                **{f"dagster/partition/{dim}": value for dim, value in key.keys_by_dimension.items()},
            }
        else:
            targets = {**block_partition_tags(day, first, last), **run_tags(contract, day, block_label(first, last))}
        client = DagsterGraphQLClient("127.0.0.1", port_number=self.webserver_port)
        return client.submit_job_execution(
            ASSET_JOB,
            repository_location_name=LOCATION,
            repository_name=REPOSITORY,
            run_config=self.upload_config(contract, **config),
            tags={**targets, **(tags or {})},
            asset_selection=[asset_name(contract, Stage.UPLOADED)],
        )

    def materialize_cli(self, range_key: str, *, dataset: str | None = None, day: str | None = None, **config: object) -> subprocess.Popen:
        """`dagster asset materialize` of one range (the default launcher: the CLI process
        is the run worker). Its output goes to cli.log."""
        contract, day = self.contract(dataset), day or self.spec.day
        command = [
            str(Path(sys.executable).parent / "dagster"), "asset", "materialize",
            "-f", str(self.root / "definitions.py"),
            "--select", asset_name(contract, Stage.UPLOADED),
            "--partition", str(upload_partition_key(day, range_key)),
            "--config-json", json.dumps(self.upload_config(contract, **config)),
        ]  # fmt: skip
        with open(self.root / "cli.log", "ab") as log:
            return subprocess.Popen(command, cwd=self.root, env={**os.environ, **self.env}, stdout=log, stderr=log)

    def run(self, run_id: str) -> dg.DagsterRun:
        assert self.instance is not None
        run = self.instance.get_run_by_id(run_id)
        assert run is not None, run_id
        return run

    def runs(self, statuses: Sequence[dg.DagsterRunStatus] | None = None) -> list[dg.DagsterRun]:
        assert self.instance is not None
        return list(self.instance.get_runs(filters=dg.RunsFilter(statuses=list(statuses) if statuses else [])))

    def runs_of_range(self, range_key: str, day: str | None = None) -> list[dg.DagsterRun]:
        """The upload runs of one range of the day, newest first."""
        partition = str(upload_partition_key(day or self.spec.day, range_key))
        return [r for r in self.runs() if r.tags.get("dagster/partition") == partition]

    def unfinished_runs(self) -> list[dg.DagsterRun]:
        """Runs queued or in progress."""
        return self.runs(UNFINISHED)

    def run_record(self, run_id: str) -> dg.RunRecord:
        assert self.instance is not None
        record = self.instance.get_run_record_by_id(run_id)
        assert record is not None, run_id
        return record

    def wait_for_run(self, run_id: str, timeout_s: float = 300) -> dg.DagsterRun:
        """Until the run has finished (any end state)."""
        _wait_for(lambda: self.run(run_id).is_finished, timeout_s, f"run {run_id} to finish")
        return self.run(run_id)

    def wait_until_idle(self, timeout_s: float = 300) -> None:
        """Until no run is queued or in progress."""
        _wait_for(lambda: not self.unfinished_runs(), timeout_s, "every run to finish")

    def failure_message(self, run_id: str) -> str:
        assert self.instance is not None
        events = self.instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        return events[-1].message if events else ""

    def retries_of(self, run_id: str) -> list[dg.DagsterRun]:
        """Runs that Dagster's run retries started for this run."""
        return [r for r in self.runs() if r.tags.get("dagster/parent_run_id") == run_id]

    # --- a run's processes --------------------------------------------------------------------

    def run_processes(self, run_id: str) -> RunProcesses | None:
        """The run's step process and run worker, once its step holds a range lease.

        Both are `multiprocessing` children (of the code server, then of the run
        worker), whose command lines and environments do not name the run; the lease does:
        it records its holder's run id and pid. The run worker is the step's parent.
        """
        assert self.delivery_engine is not None
        t = lease_table
        with self.delivery_engine.connect() as conn:
            holders = conn.execute(sa.select(t.c.holder).where(t.c.run_id == run_id, t.c.expires_at > 0)).scalars().all()
        for holder in holders:
            match = _HOLDER_PID.search(holder)
            if match and pid_alive(step := int(match.group(1))):
                return RunProcesses(run_worker=parent_pid(step), step=step)
        return None

    def started_pid(self, run_id: str) -> int | None:
        """The run worker's pid as Dagster's event log reports it (daemon-launched runs)."""
        assert self.instance is not None
        for event in self.instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            match = re.match(r"Started process for run \(pid: (\d+)\)", event.message or "")
            if match:
                return int(match.group(1))
        return None

    # --- the delivery, as the ledger and the partner see it -----------------------------------

    def ledger(self, contract: Contract | None = None, day: str | None = None) -> dict[int, LedgerEntry]:
        assert self.delivery_engine is not None
        contract = contract or self.contract()
        return Ledger(self.delivery_engine).entries(contract.data_uuid, day or self.spec.day)

    def snapshot_ids(self, contract: Contract | None = None, day: str | None = None) -> list[str]:
        """The day's ids in batch order: batch i is ids [100 i, 100 i + 100)."""
        contract = contract or self.contract()
        path = DataLake(root=self.env["DATAHUB_DATA_DIR"]).snapshot_path(contract.dataset, day or self.spec.day)
        return pl.read_parquet(path, columns=["id"])["id"].to_list()

    def receipts_per_batch(self, contract: Contract | None = None, day: str | None = None) -> list[list[dict]]:
        """For each batch of the day, in order, the endpoint's receipts of its stored requests."""
        contract = contract or self.contract()
        ids = self.snapshot_ids(contract, day)
        batches = [ids[i : i + BATCH_ROWS] for i in range(0, len(ids), BATCH_ROWS)]
        return self.endpoint.receipts(contract.data_uuid, batches)

    def reconcile(self, contract: Contract | None = None, day: str | None = None) -> dict:
        contract = contract or self.contract()
        return self.endpoint.reconcile(contract.data_uuid, self.snapshot_ids(contract, day))

    def reset_delivery(self) -> None:
        """Start the day's delivery afresh: an empty ledger, no leases, an empty endpoint.
        Call it only while no run is in progress."""
        assert self.delivery_engine is not None
        with self.delivery_engine.begin() as conn:
            conn.execute(sa.delete(ledger_table))
            conn.execute(sa.delete(lease_table))
        self.endpoint.reset()


# --- processes ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def kill(pid: int) -> None:
    """SIGKILL, if it is still there."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class AlertReceiver:
    """A local webhook: collects the JSON body of every POST (the notifier's alerts)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        alerts: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                alerts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.alerts = alerts
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def backfill_run_limit(instance_config: dict) -> int:
    """The backfill runs the run queue lets run at once (`dagster/backfill` in its tag limits)."""
    limits = instance_config["concurrency"]["runs"]["tag_concurrency_limits"]
    return next(t["limit"] for t in limits if t["key"] == "dagster/backfill")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.2) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
