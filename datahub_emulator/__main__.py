"""Run the local DataHub endpoint: `python -m datahub_emulator --port 8765 --db PATH`."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import uvicorn

from datahub_emulator.app import AdminAccess, create_app, loopback_hosts
from datahub_emulator.client import ADMIN_TOKEN_ENV
from datahub_emulator.faults import DEFAULT_CAP, FaultConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m datahub_emulator",
        description="Local stand-in for the Alipay+ DataHub server (loopback only).",
    )
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file (created if absent)")
    parser.add_argument(
        "--port-file", type=Path, help="write the port actually bound here once listening"
    )
    parser.add_argument(
        "--admin-token-file",
        type=Path,
        help=f"where to write the admin token (mode 0600; default DB.admin-token); "
        f"the token is ${ADMIN_TOKEN_ENV} if set, else a new random one",
    )
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP, help="batches per sliding second")
    parser.add_argument("--latency-median-ms", type=float, default=0.0)
    parser.add_argument("--latency-jitter-ms", type=float, default=0.0)
    parser.add_argument("--u-rate", type=float, default=0.0, help="share of U/UNKNOWN_EXCEPTION")
    parser.add_argument("--f-rate", type=float, default=0.0, help="share of injected F results")
    parser.add_argument(
        "--lost-ack-rate", type=float, default=0.0, help="share of stored batches answered U"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for injected faults")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM); with --tls-cert")
    parser.add_argument(
        "--admin-from-anywhere",
        action="store_true",
        help="serve /admin/* to non-loopback clients and any Host too (the token still applies)",
    )
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return args


def fault_config(args: argparse.Namespace) -> FaultConfig:
    # Validate the flags exactly as the admin API validates a POST /admin/faults.
    return FaultConfig().merged(
        {
            "latency_ms": {"median": args.latency_median_ms, "jitter": args.latency_jitter_ms},
            "u_rate": args.u_rate,
            "f_rate": args.f_rate,
            "lost_ack_rate": args.lost_ack_rate,
            "cap": args.cap,
            "seed": args.seed,
        }
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    faults = fault_config(args)
    # Bound here, before uvicorn starts, so that the port is known (also when asked for
    # port 0) and reported only once this process owns it.
    sock = _listen(args.host, args.port)
    port = int(sock.getsockname()[1])
    # From the environment rather than a flag: every user of the machine can read the
    # command lines of its processes.
    token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_urlsafe(32)
    token_file = args.admin_token_file or args.db.with_name(args.db.name + ".admin-token")
    write_private(token_file, token + "\n")
    hosts = set(loopback_hosts(port))
    if _is_loopback(args.host) and ":" not in args.host:
        hosts.add(f"{args.host.lower()}:{port}")  # e.g. 127.0.0.2
    access = AdminAccess(
        token=token,
        hosts=None if args.admin_from_anywhere else frozenset(hosts),
        loopback_only=not args.admin_from_anywhere,
    )
    app = create_app(args.db, faults, access)
    config = uvicorn.Config(
        app,
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
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    if args.port_file is not None:
        write_private(args.port_file, f"{port}\n")
    # uvicorn handles SIGINT/SIGTERM: it stops accepting, drains, then runs the
    # lifespan shutdown, which closes (and checkpoints) the database. Afterwards it
    # re-raises the signal into the handlers it found; these make that a normal exit 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_quietly)
    # The event loop stamps arrivals while the service thread runs the checks: it gets
    # the interpreter back within 1 ms (the default is 5 ms), so a stamp waits at most that.
    sys.setswitchinterval(0.001)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        token_file.unlink(missing_ok=True)  # the token dies with this process


def _listen(host: str, port: int) -> socket.socket:
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=2048)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exit_quietly(signum: int, frame: object) -> None:
    """Shutdown already happened inside uvicorn; nothing is left to do."""


if __name__ == "__main__":
    main()
