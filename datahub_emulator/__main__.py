"""Run the local DataHub endpoint: `python -m datahub_emulator --port 8765 --db PATH`."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

import uvicorn

from datahub_emulator.app import create_app
from datahub_emulator.faults import DEFAULT_CAP, FaultConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m datahub_emulator",
        description="Local stand-in for the Alipay+ DataHub server (loopback only).",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created if absent)")
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP, help="batches per sliding second")
    parser.add_argument("--latency-median-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--u-rate", type=float, default=0.0, help="share of U/UNKNOWN_EXCEPTION")
    parser.add_argument("--f-rate", type=float, default=0.0, help="share of injected F results")
    parser.add_argument(
        "--lost-ack-rate", type=float, default=0.0, help="share of stored batches answered U"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for injected faults")
    parser.add_argument(
        "--admin-from-anywhere",
        action="store_true",
        help="serve /admin/* to non-loopback clients too (it has no authentication)",
    )
    return parser.parse_args(argv)


def fault_config(args: argparse.Namespace) -> FaultConfig:
    # Validate the flags exactly as the admin API validates a POST /admin/faults.
    return FaultConfig().merged(
        {
            "latency_ms": {"median": args.latency_median_ms, "jitter": args.latency_jitter_ms},
            "u_rate": args.u_rate,
            "f_rate": args.f_rate,
            "lost_ack_rate": args.lost_ack_rate,
            "cap": args.cap,
        }
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app = create_app(
        args.db, fault_config(args), args.seed, admin_loopback_only=not args.admin_from_anywhere
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # uvloop and httptools when installed: the endpoint's own overhead per request
        # should stay small next to the checks it runs.
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=5,
        # Clients connect directly; no proxy headers to trust, no headers to add.
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, drains, then runs the
    # lifespan shutdown, which closes (and checkpoints) the database. Afterwards it
    # re-raises the signal into the handlers it found; these make that a normal exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    uvicorn.Server(config).run()


def _exit_quietly(signum: int, frame: object) -> None:
    """Shutdown already happened inside uvicorn; nothing is left to do."""


if __name__ == "__main__":
    main()
