"""The local stand-in stack on one machine: the endpoint, registered keys, a demo
source, and the environment the platform's resources read (scripts/demo.py, the UI
test). Everything lives under one folder (default `var/`)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from datahub_emulator.client import EmulatorProcess
from datahub_emulator.toolkit import init_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTRACTS_DIR = REPO_ROOT / "datahub_assets" / "contracts"
SDK_JAR = REPO_ROOT / "build" / "sdk" / "datahub-sdk-standin.jar"


@dataclass
class LocalStack:
    root: Path
    endpoint: EmulatorProcess

    @property
    def env(self) -> dict[str, str]:
        """The platform's settings (the EnvVars of datahub_assets/definitions.py)."""
        return {
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            "DATAHUB_DATA_DIR": str(self.root / "lake"),
            "DATAHUB_SOURCE_DB_URL": f"sqlite:///{self.root / 'source.db'}",
            "DATAHUB_LANDING_URL": str(self.root / "landing"),
            "DATAHUB_SDK_CLASSPATH": str(SDK_JAR),
            "DATAHUB_KEYS_PATH": str(self.root / "keys" / "keys.properties"),
            "DATAHUB_DELIVERY_DB_URL": f"sqlite:///{self.root / 'delivery.db'}",
            # Alerts: empty disables a channel (see the README to turn them on).
            "DATAHUB_SLACK_TOKEN": "",
            "DATAHUB_SLACK_CHANNEL": "",
            "DATAHUB_ALERT_WEBHOOK_URL": "",
        }


def start_local_stack(root: Path, port: int = 0, cap: int | None = None) -> LocalStack:
    """Start the endpoint, create and register the keys, and prepare DAGSTER_HOME."""
    root = root.resolve()
    for sub in ("dagster_home", "lake", "landing", "keys"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "keys", 0o700)
    shutil.copyfile(REPO_ROOT / "deploy" / "local" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    endpoint = EmulatorProcess(db_path=root / "datahub.db", port=port, cap=cap, log_path=root / "datahub.log").start()
    stack = LocalStack(root=root, endpoint=endpoint)
    init_keys(
        endpoint=endpoint.url,
        out=Path(stack.env["DATAHUB_KEYS_PATH"]),
        institution_id="WALLET_01",
        ant_institution_id="ANT_01",
        contracts=sorted(CONTRACTS_DIR.glob("*.yaml")),
    )
    return stack
