"""The README's main command, after setup: start the local endpoint, register the keys,
write a synthetic source for every contract, then deliver the last business dates end to
end and print a summary (default), or start the Dagster UI on the same stack (--ui).

The contracts are copies of datahub_assets/contracts/*.yaml in VAR/contracts whose daily
partitions start --days business dates back (GMT+8), so the UI shows those dates only.
Each contract gets a synthetic source made from its own columns (its table, or its
landing file). The terminal shows one line per stage and the summary; Dagster's and the
SDK's own output goes to VAR/demo.log (with --ui, the UI's to VAR/dagster-dev.log).
Ctrl-C or SIGTERM stops everything the demo started: the endpoint, and with --ui the
webserver, the daemon and their runs. All state lives in VAR (delete it to start over).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datahub_assets.cli import DateDelivery

REPO_ROOT = Path(__file__).resolve().parents[1]
UI_START_TIMEOUT_S = 180.0
STOP_GRACE_S = 20.0


def parser() -> argparse.ArgumentParser:
    from datahub_assets.contract import DEFAULT_CONTRACTS_DIR

    p = argparse.ArgumentParser(
        prog="scripts/demo.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ui", action="store_true", help="start the Dagster UI on the stack instead of delivering")
    p.add_argument("--days", type=_positive, default=3, help="business dates, ending yesterday GMT+8 (default 3)")
    p.add_argument("--rows", type=_positive, default=10_000, help="source rows per contract and date (default 10000)")
    p.add_argument("--bad-share", type=float, default=0.02, help="share of rows that break the contract (default 0.02)")
    p.add_argument("--contracts", type=Path, default=DEFAULT_CONTRACTS_DIR, help="folder of contracts to copy (default: datahub_assets/contracts)")
    p.add_argument("--var", type=Path, default=REPO_ROOT / "var", help="folder of all the demo's state (default: var/)")
    p.add_argument("--endpoint-port", type=int, default=8765, help="the local endpoint's port (default 8765)")
    p.add_argument("--ui-port", type=int, default=3000, help="the UI's port, with --ui (default 3000)")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    var = args.var.resolve()
    for flag, port in [("--endpoint-port", args.endpoint_port), *([("--ui-port", args.ui_port)] if args.ui else [])]:
        if port_in_use(port):
            print(f"demo: port {port} is in use (a demo still running?): stop it, or pick another with {flag} PORT", file=sys.stderr)
            return 2
    var.mkdir(parents=True, exist_ok=True)
    out = Terminal(var / "demo.log")
    stops: list[Callable[[], None]] = []
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM stops the demo as Ctrl-C does
    try:
        return run(args, var, out, stops)
    except KeyboardInterrupt:
        out.line("stopping: the demo was interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - one line here, the traceback in the log
        traceback.print_exc()
        out.line(f"failed: {error.__class__.__name__}: {error} (details in {out.log_path})")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for stop in reversed(stops):
            stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, var: Path, out: Terminal, stops: list[Callable[[], None]]) -> int:
    from datahub_assets.contract import load_contracts
    from datahub_assets.partitions import business_date, previous_date
    from datahub_dev.stack import copy_contracts, start_local_stack
    from datahub_dev.synthetic import generate_for_contract, write_source

    days = [business_date()]
    while len(days) < args.days:
        days.insert(0, previous_date(days[0]))
    contracts_dir = var / "contracts"
    copy_contracts(args.contracts, contracts_dir, start_date=days[0])
    contracts = load_contracts(contracts_dir)
    out.line(f"contracts: {', '.join(c.dataset for c in contracts)}; copies in {_shown(contracts_dir)} start on {days[0]}")

    stack = start_local_stack(var, port=args.endpoint_port, contracts_dir=contracts_dir)
    stops.append(stack.endpoint.stop)
    os.environ.update(stack.env)
    write_env_file(var / "demo.env", {**stack.env, "ADMIN_TOKEN_FILE": str(stack.endpoint.admin_token_file)})
    out.line(f"endpoint: {stack.endpoint.url}; keys for {len(contracts)} dataset(s) in {_shown(stack.keys_path)} (mode 600)")

    for contract in contracts:
        for day in days:
            frame = generate_for_contract(contract, args.rows, day, args.bad_share)
            where = write_source(
                contract, frame, day, source_db_url=stack.env["DATAHUB_SOURCE_DB_URL"], landing_dir=var / "landing"
            )
        out.line(f"source {contract.dataset}: {args.rows:,} rows a date, {days[0]}..{days[-1]}, in {where} ({args.bad_share:.0%} broken)")

    if args.ui:
        return serve_ui(var, contracts_dir, args.ui_port, out, stops)
    return deliver(days, contracts, stack, out)


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """The stack's settings for another shell: `set -a; . var/demo.env; set +a` (paths and
    URLs only; the keys stay in their file)."""
    path.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items())))


# --- delivering -------------------------------------------------------------------------


@dataclass
class DateOutcome:
    dataset: str
    day: str
    delivery: DateDelivery
    not_sent_because: str = ""  # a newer date is delivered already


def deliver(days: list[str], contracts: list, stack, out: Terminal) -> int:  # noqa: ANN001
    """Each date of each contract, oldest first as the daily schedule would have, through
    `datahub-deliver`'s chain (extract and snapshot, every range, the proof of delivery),
    in this process; a date older than one already delivered is not sent (the partner
    keeps the last value per id)."""
    import dagster as dg

    from datahub_assets.cli import DateDelivery, deliver_date
    from datahub_assets.definitions import build_definitions
    from datahub_assets.upload.ledger import Ledger
    from datahub_assets.upload.outcome import BatchStatus
    from datahub_assets.upload.resources import create_delivery_engine

    started = time.monotonic()
    defs = build_definitions(stack.contracts_dir)
    engine = create_delivery_engine(stack.env["DATAHUB_DELIVERY_DB_URL"])
    outcomes: list[DateOutcome] = []
    try:
        with dg.DagsterInstance.get() as instance:
            for contract in contracts:
                name = contract.dataset
                for day in days:
                    outcome = DateOutcome(name, day, DateDelivery())
                    outcomes.append(outcome)
                    ledger = Ledger(engine)
                    newer = ledger.newer_delivered_day(contract.data_uuid, day)
                    if newer is not None:
                        acknowledged = ledger.status_counts(contract.data_uuid, day).get(BatchStatus.SUCCESS, 0)
                        outcome.delivery.batches_already_delivered = acknowledged
                        if acknowledged:
                            out.line(f"{name} {day}: {acknowledged} batches already delivered (not sent again after {newer})")
                        else:
                            outcome.not_sent_because = f"{newer} is already delivered"
                            out.line(f"{name} {day}: not sent, {newer} is already delivered and an older date would overwrite it")
                        continue
                    # Dagster's own lines (DEBUG up) go where the demo sends its output: the log.
                    outcome.delivery = deliver_date(defs, instance, contract, day, say=out.line, console_log_level="DEBUG")
    finally:
        engine.dispose()

    stats = stack.endpoint.stats()
    out.line(f"summary, business dates {days[0]}..{days[-1]}:")
    for contract in contracts:
        mine = [o for o in outcomes if o.dataset == contract.dataset]
        sent = sum(o.delivery.batches_sent for o in mine)
        already = sum(o.delivery.batches_already_delivered for o in mine)
        failed = sum(len(o.delivery.ranges_failed) for o in mine)
        not_sent = [o.day for o in mine if o.not_sent_because]
        out.line(
            f"  {contract.dataset}: {sent} batches sent, {already} already delivered, {failed} ranges failed"
            + (f", {len(not_sent)} date(s) not sent ({', '.join(not_sent)})" if not_sent else "")
            + f"; the endpoint holds {stats['rows_stored'].get(contract.data_uuid, 0):,} rows (one per id)"
        )
    out.line(f"  endpoint: at most {stats['max_admitted_per_sliding_second']} requests in any second (cap {stats['cap']})")
    failures = sum(not o.not_sent_because and not o.delivery.delivered for o in outcomes)
    out.line(
        f"{'done' if not failures else 'done with failures'} in {time.monotonic() - started:.0f} s; "
        f"Dagster's log: {_shown(out.log_path)}; the UI on this stack: scripts/demo.sh --ui"
    )
    return 1 if failures else 0


# --- the UI -------------------------------------------------------------------------------


def serve_ui(var: Path, contracts_dir: Path, port: int, out: Terminal, stops: list[Callable[[], None]]) -> int:
    """`dagster dev` (webserver and daemon) on the stack, in its own process group, so
    that stopping the demo stops all of it and every run it started."""
    from datahub_dev.stack import answers, write_code_location

    workspace = write_code_location(var, contracts_dir)
    log_path = var / "dagster-dev.log"
    with open(log_path, "ab") as log:
        ui = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "--host", "127.0.0.1", "--port", str(port)],
            cwd=var, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    stops.append(lambda: stop_process_group(ui))
    url = f"http://127.0.0.1:{port}"
    out.line(f"UI: starting on {url} (its log: {_shown(log_path)})")
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while not answers(f"{url}/server_info"):
        if ui.poll() is not None or time.monotonic() > deadline:
            out.line(f"UI: did not start (see {_shown(log_path)})")
            return 1
        time.sleep(0.5)
    out.line(f"UI: {url} is up; materialize a date there. Ctrl-C stops the UI, its daemon and the endpoint")
    return ui.wait()


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (it leads it), then SIGKILL to whatever is left of
    the group after STOP_GRACE_S."""
    group = process.pid
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        if process.poll() is not None and not _group_alive(group):
            return
        time.sleep(0.2)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


# --- the terminal -------------------------------------------------------------------------


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class Terminal:
    """The demo's own lines, on the terminal it was started from. Everything else this
    process prints from now on (Dagster's logs, warnings, the JVM) goes to the log file,
    and so do the demo's lines, for context."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        sys.stdout.flush()
        sys.stderr.flush()
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        self._tty = self._out.isatty()
        self._progress_shown = False
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, sys.stdout.fileno())
        os.dup2(log, sys.stderr.fileno())
        os.close(log)

    def line(self, text: str) -> None:
        if self._progress_shown:
            self._out.write("\r\x1b[K")
            self._progress_shown = False
        self._out.write(text + "\n")
        print(f"[demo] {text}", flush=True)

    def progress(self, text: str) -> None:
        """A line rewritten in place on a terminal; nothing elsewhere (a log, a pipe)."""
        if self._tty:
            self._out.write("\r\x1b[K" + text)
            self._out.flush()
            self._progress_shown = True


def _shown(path: Path) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    code = main()
    if code == 130:
        # Stopped: leave now rather than wait for upload threads still retrying against
        # the stopped endpoint. Nothing is lost: the ledger has every acknowledged batch.
        os._exit(code)
    sys.exit(code)
