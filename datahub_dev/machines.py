"""Simulated machines on one host, for rehearsals: Linux network namespaces joined to the
host by veth pairs, and a run launcher that starts upload runs inside them.

Machine k is the namespace `datahub-m<k>`: its end of the veth pair is 10.77.<k>.2, the
host's end 10.77.<k>.1. From inside, the host's services are reached over that address,
never over loopback:
- PostgreSQL (which listens on 127.0.0.1 only) through a `socat` relay the host runs on
  10.77.<k>.1:5432, so Dagster's storage, the ledger and the limiter go over the veth;
- the endpoint, which then binds every address and serves HTTPS with a certificate for
  each 10.77.<k>.1 (the SDK sends plain http only on loopback).

The namespaces share the host's filesystem (the lake, the SDK jar) and its process ids, so
a run worker in a namespace is killed like any other process. Creating namespaces needs
root. Only namespaces and relays made here are removed.

`NamespaceRunLauncher` is a Dagster run launcher (set in the instance's dagster.yaml):
a run of a batch range starts `dagster api execute_run` in the machine running the
fewest of this launcher's runs, with that machine's environment; every other run (the
extract and snapshot of the day) starts on the host, as the default launcher would.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

PREFIX = "datahub-m"
LOCK_FILE = Path("/run/lock/datahub-machines.lock") if Path("/run/lock").is_dir() else Path("/tmp/datahub-machines.lock")
POSTGRES_PORT = 5432
# An upload run carries one of these: the fan-out's and the upload job's runs name their
# range or block of ranges; a run from the asset page's Materialize button has only
# Dagster's partition tag.
UPLOAD_RUN_TAGS = ("datahub/range", "dagster/partition/range")


def is_upload_run(run: dg.DagsterRun) -> bool:
    return any(tag in run.tags for tag in UPLOAD_RUN_TAGS)


@dataclass(frozen=True)
class Machine:
    index: int

    @property
    def namespace(self) -> str:
        return f"{PREFIX}{self.index}"

    @property
    def host_address(self) -> str:
        """The host as this machine reaches it."""
        return f"10.77.{self.index}.1"

    @property
    def address(self) -> str:
        return f"10.77.{self.index}.2"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _remove(machine: Machine) -> None:
    # What still runs inside goes with the machine: the run workers and step processes
    # of an interrupted rehearsal would otherwise outlive it, sending from a namespace
    # that no longer has a name.
    inside = subprocess.run(["ip", "netns", "pids", machine.namespace], capture_output=True, text=True).stdout
    for pid in inside.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    # Deleting the namespace deletes its end of the veth pair, and with it the host's end.
    subprocess.run(["ip", "netns", "delete", machine.namespace], capture_output=True)
    subprocess.run(["ip", "link", "delete", f"dhm{machine.index}h"], capture_output=True)


def _create(machine: Machine) -> None:
    k, ns = machine.index, machine.namespace
    host_if, ns_if = f"dhm{k}h", f"dhm{k}n"
    _ip("netns", "add", ns)
    _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    _ip("link", "set", ns_if, "netns", ns)
    _ip("addr", "add", f"{machine.host_address}/24", "dev", host_if)
    _ip("link", "set", host_if, "up")
    _ip("-n", ns, "addr", "add", f"{machine.address}/24", "dev", ns_if)
    _ip("-n", ns, "link", "set", ns_if, "up")
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "route", "add", "default", "via", machine.host_address)


@contextlib.contextmanager
def simulated_machines(count: int, log_dir: Path) -> Iterator[list[Machine]]:
    """`count` namespaces with their veth pairs and Postgres relays; all removed on exit.

    The names and addresses are fixed, so one set of machines exists at a time: a lock
    held for the whole block makes a second rehearsal wait rather than take the first
    one's namespaces. A namespace found while holding it was left by a killed rehearsal.
    """
    if os.geteuid() != 0:
        raise PermissionError("simulated machines need root (ip netns)")
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with _machines(count, log_dir) as machines:
            yield machines


@contextlib.contextmanager
def _machines(count: int, log_dir: Path) -> Iterator[list[Machine]]:
    machines = [Machine(k) for k in range(1, count + 1)]
    relays: list[subprocess.Popen] = []
    try:
        for machine in machines:
            _remove(machine)  # left by a killed rehearsal (the lock is ours)
            _create(machine)
            with open(log_dir / f"relay-{machine.namespace}.log", "ab") as log:
                relays.append(
                    subprocess.Popen(
                        [
                            "socat", f"TCP-LISTEN:{POSTGRES_PORT},bind={machine.host_address},fork,reuseaddr",
                            f"TCP:127.0.0.1:{POSTGRES_PORT}",
                        ],
                        stdout=log, stderr=log, start_new_session=True,
                    )  # fmt: skip
                )
        _wait_for_relays(machines)
        yield machines
    finally:
        for relay in relays:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(relay.pid, signal.SIGTERM)
            relay.wait()
        for machine in machines:
            _remove(machine)


def _wait_for_relays(machines: list[Machine], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    for machine in machines:
        while True:
            try:
                socket.create_connection((machine.host_address, POSTGRES_PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


class NamespaceRunLauncher(RunLauncher, ConfigurableClass):
    """Starts each run's worker as its own process: a run of a batch range in the machine
    running the fewest of them, with that machine's environment; any other run on the host."""

    def __init__(self, machines: list[Mapping], log_dir: str, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._machines = [(m["namespace"], dict(m.get("env", {}))) for m in machines]
        self._log_dir = Path(log_dir)
        self._workers: dict[str, tuple[str | None, subprocess.Popen]] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {
            "machines": dg.Array(dg.Shape({"namespace": str, "env": dg.Permissive()})),
            "log_dir": str,
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping) -> NamespaceRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def _busy(self, namespace: str) -> int:
        return sum(1 for ns, p in self._workers.values() if ns == namespace and p.poll() is None)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = context.job_code_origin
        assert origin is not None, "a run without a code origin"
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True
        ).get_command_args()
        namespace, env = None, {}
        if is_upload_run(run) and self._machines:
            namespace, env = min(self._machines, key=lambda m: self._busy(m[0]))
        command = ["ip", "netns", "exec", namespace, *args] if namespace else list(args)
        # `dagster` is found next to this interpreter, as the code server would find it.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        with open(self._log_dir / f"run-{run.run_id}.log", "ab") as log:
            process = subprocess.Popen(
                command, env={**os.environ, **env, "PATH": path}, stdout=log, stderr=log, start_new_session=True
            )
        self._workers[run.run_id] = (namespace, process)
        self._instance.report_engine_event(
            f"Started process for run (pid: {process.pid}) on {namespace or 'the host'}.", run, cls=self.__class__
        )

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        worker = self._workers.get(run.run_id)
        if worker is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "not started by this launcher process")
        code = worker[1].poll()
        if code is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if code == 0:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"run worker exited with {code}")

    def terminate(self, run_id: str) -> bool:
        worker = self._workers.get(run_id)
        if worker is None or worker[1].poll() is not None:
            return False
        run = self._instance.get_run_by_id(run_id)
        if run is not None:
            self._instance.report_run_canceling(run)
        worker[1].send_signal(signal.SIGTERM)
        return True
