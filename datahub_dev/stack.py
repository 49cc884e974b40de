"""The local stand-in stack on one machine: the endpoint, registered keys, and the
environment the platform's resources read (the demo, the UI test, the benchmarks).
Everything lives under one folder (default `var/`)."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contract
from datahub_assets.resources import resource_environment
from datahub_emulator.client import EmulatorProcess
from datahub_emulator.toolkit import ContractSchema, KeysInfo, init_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
SDK_JAR = REPO_ROOT / "build" / "sdk" / "datahub-sdk-standin.jar"
LOCAL_INSTANCE_YAML = REPO_ROOT / "deploy" / "local" / "dagster.yaml"
INSTITUTION_ID = "WALLET_01"
ANT_INSTITUTION_ID = "ANT_01"


def contract_schema(path: Path) -> ContractSchema:
    """A data contract's schema as the partner's toolkit registers it."""
    return ContractSchema.from_json(load_contract(Path(path)).partner_schema())


def register_keys(endpoint_url: str, out: Path, contracts: Iterable[Path], rotate: bool = False) -> KeysInfo:
    """keys.properties at `out` (mode 0600), registered with the endpoint for every contract."""
    return init_keys(
        endpoint=endpoint_url,
        out=Path(out),
        institution_id=INSTITUTION_ID,
        ant_institution_id=ANT_INSTITUTION_ID,
        schemas=[contract_schema(p) for p in contracts],
        rotate=rotate,
    )


_START_DATE_LINE = re.compile(r"^start_date:.*$", re.M)

# A code location over a folder of contracts (the platform's own definitions).
_DEFINITIONS_PY = '''"""The platform's definitions over the contracts next to this file (written by datahub_dev.stack)."""
from pathlib import Path

from datahub_assets.definitions import build_definitions

defs = build_definitions(Path(__file__).parent / "contracts")
'''


def copy_contracts(source_dir: Path, target_dir: Path, start_date: str) -> list[Path]:
    """Copy every contract of `source_dir` into `target_dir` (replacing what is there),
    with daily partitions from `start_date`: the file is otherwise unchanged, comments
    included, so its dataUuid and columns stay registered."""
    if target_dir.exists():
        shutil.rmtree(target_dir)
    target_dir.mkdir(parents=True)
    copies = []
    for path in sorted(Path(source_dir).glob("*.yaml")):
        text = path.read_text()
        line = f'start_date: "{start_date}"'
        text = _START_DATE_LINE.sub(line, text) if _START_DATE_LINE.search(text) else text.rstrip("\n") + f"\n{line}\n"
        copies.append(target_dir / path.name)
        copies[-1].write_text(text)
    return copies


def write_code_location(root: Path, contracts_dir: Path, name: str = "datahub_assets") -> Path:
    """A workspace.yaml under `root` whose code location builds the platform from
    `contracts_dir` (which must be `root / "contracts"`); returns its path."""
    assert Path(contracts_dir).resolve() == (Path(root) / "contracts").resolve(), contracts_dir
    (Path(root) / "definitions.py").write_text(_DEFINITIONS_PY)
    workspace = Path(root) / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"python_file": {"relative_path": "definitions.py", "location_name": name}}]})
    )
    return workspace


@dataclass
class LocalStack:
    root: Path
    endpoint: EmulatorProcess
    contracts_dir: Path = DEFAULT_CONTRACTS_DIR
    trust_store: Path | None = None  # the CA of an endpoint that serves HTTPS, for the SDK's JVM

    @property
    def keys_path(self) -> Path:
        return self.root / "keys" / "keys.properties"

    @property
    def env(self) -> dict[str, str]:
        """DAGSTER_HOME and the platform's settings; alert channels empty (off)."""
        return {
            "DAGSTER_HOME": str(self.root / "dagster_home"),
            **resource_environment(
                {
                    "lake": {"root": self.root / "lake"},
                    "source_db": {"url": f"sqlite:///{self.root / 'source.db'}"},
                    "landing": {"url": self.root / "landing"},
                    "sdk": {"classpath": SDK_JAR, "keys_path": self.keys_path, "trust_store": self.trust_store or ""},
                    "delivery_db": {"url": f"sqlite:///{self.root / 'delivery.db'}"},
                }
            ),
        }


def start_local_stack(
    root: Path,
    port: int = 0,
    cap: int | None = None,
    contracts_dir: Path = DEFAULT_CONTRACTS_DIR,
    https_hosts: tuple[str, ...] = (),
) -> LocalStack:
    """Start the endpoint, create and register the keys, and prepare DAGSTER_HOME.

    With `https_hosts` the endpoint binds every address and serves HTTPS with a
    certificate for loopback and those hosts (other machines reach it over the network)."""
    root = root.resolve()
    for sub in ("dagster_home", "lake", "landing", "keys"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "keys", 0o700)
    shutil.copyfile(LOCAL_INSTANCE_YAML, root / "dagster_home" / "dagster.yaml")
    tls, trust_store, host = None, None, "127.0.0.1"
    if https_hosts:
        from datahub_dev.tls import make_test_tls

        tls, trust_store = make_test_tls(root / "tls", ("127.0.0.1", "localhost", *https_hosts))
        host = "0.0.0.0"
    endpoint = EmulatorProcess(
        db_path=root / "datahub.db", port=port, host=host, cap=cap, tls=tls, log_path=root / "datahub.log"
    ).start()
    stack = LocalStack(root=root, endpoint=endpoint, contracts_dir=contracts_dir, trust_store=trust_store)
    register_keys(endpoint.url, stack.keys_path, sorted(contracts_dir.glob("*.yaml")))
    return stack


def answers(url: str) -> bool:
    """Whether something serves `url` (a local web server that is up)."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
