"""`dagster-daemon`, with the cycle of its backfill and asset daemons at 2 s.

Dagster runs those daemons every 30 s, a constant with no setting. A backfill of one date
(prepare, the ranges, the proof) takes a cycle per step, so the browser test would spend
minutes waiting between them. Everything else is the real `dagster-daemon run`.
"""

import sys

import dagster._daemon.controller as controller
from dagster._daemon.cli import main

controller.DEFAULT_DAEMON_INTERVAL_SECONDS = 2

if __name__ == "__main__":
    sys.exit(main())
