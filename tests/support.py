"""What the tests share: contract copies, resources, a materialized day, scratch
PostgreSQL databases, the endpoint's receipts and a local webhook/Slack receiver.

Registered as a pytest plugin (conftest.py), so its fixtures are available everywhere.
Keys come from `datahub_dev.stack.register_keys`, the same helper the demo uses.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
import yaml

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contract, load_contracts
from datahub_assets.definitions import build_dataset_assets
from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.lake import DataLake
from datahub_assets.partitions import block_partition_tags, range_keys, upload_partition_key
from datahub_assets.resources import RESOURCE_ENV, build_resources, resource_environment
from datahub_assets.upload.ledger import Ledger, LedgerEntry
from datahub_assets.upload.resources import DeliveryDatabase, create_delivery_engine
from datahub_assets.upload.sdk import DataHubSdkResource
from datahub_dev.scratch_db import scratch_database
from datahub_dev.synthetic import BAD_ROW_KINDS

DAY = "2026-11-26"
CONTRACTS_DIR = DEFAULT_CONTRACTS_DIR
CONTRACT = load_contract(CONTRACTS_DIR / "user_profile.yaml")
FAST_RETRY = {"retry_base_delay_s": 0.05, "progress_every_s": 1.0}


def is_bad(frame: pl.DataFrame) -> pl.Series:
    """The generator's broken rows, found independently of the conform code."""
    mask = pl.Series([False] * frame.height)
    for col, value in BAD_ROW_KINDS:
        mask = mask | (
            frame[col].is_null() if value is None else (frame[col] == value).fill_null(False)
        )
    return mask


def write_contract(directory: Path, **changes: Any) -> Path:
    """A contracts folder holding the demo contract with some top-level keys changed
    (batch_ranges, source, ...). Unless changed, the dataUuid and columns stay, so the
    registration that the `keys_file` fixture made with the endpoint still applies."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((CONTRACTS_DIR / "user_profile.yaml").read_text())
    raw.update(changes)
    (directory / f"{raw['dataset']}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return directory


def configured_resources(
    tmp_path: Path, *, delivery_url: str, sdk_jar: Path | None = None, keys_file: Path | None = None, **overrides: Any
) -> dict[str, dg.ConfigurableResource]:
    """Every resource with concrete settings under tmp_path (the platform's own wiring,
    `build_resources`, with each value given instead of read from the environment)."""
    resources = {
        "lake": DataLake(root=str(tmp_path / "lake")),
        "source_db": SourceDatabase(url=f"sqlite:///{tmp_path / 'source.db'}"),
        "landing": LandingFiles(url=str(tmp_path / "landing")),
        "delivery_db": DeliveryDatabase(url=delivery_url),
    }
    if sdk_jar is not None and keys_file is not None:
        resources["sdk"] = DataHubSdkResource(classpath=str(sdk_jar), keys_path=str(keys_file))
    return {k: v for k, v in build_resources(**resources, **overrides).items() if k in {*resources, *overrides}}


class NoSendClient:
    """An UploadClient for runs that must send nothing (every batch already acknowledged):
    any attempt to get ready or to send fails the run."""

    endpoint = "nowhere"
    key_id = ""

    def start(self, warm_up: bool = False) -> None:
        raise AssertionError("this run was expected to send nothing")

    def prepare(self, rows: list[str]):
        raise AssertionError("this run was expected to send nothing")

    def upload(self, *, data_uuid: str, rows):
        raise AssertionError("this run was expected to send nothing")


def environment_of(resources: dict[str, dg.ConfigurableResource]) -> dict[str, str]:
    """The DATAHUB_* variables that make `build_resources()` in another process resolve to
    these resources (a run worker, as in production)."""
    return resource_environment(
        {
            key: {name: value for name, value in resource.model_dump().items() if name in RESOURCE_ENV[key][1]}
            for key, resource in resources.items()
        }
    )


class Day:
    """A materialized day: the assets, their resources and a Dagster instance."""

    def __init__(
        self,
        tmp_path: Path,
        sdk_jar: Path,
        keys_file: Path,
        delivery_url: str,
        instance: dg.DagsterInstance,
        contracts_dir: Path = CONTRACTS_DIR,
        day: str = DAY,
    ):
        self.day = day
        self.contracts_dir = contracts_dir
        (self.contract,) = load_contracts(contracts_dir)
        self.delivery_url = delivery_url
        self.resources = configured_resources(tmp_path, delivery_url=delivery_url, sdk_jar=sdk_jar, keys_file=keys_file)
        self.lake = self.resources["lake"]
        self.source_url = self.resources["source_db"].url
        self.landing_dir = Path(self.resources["landing"].url)
        self.extract, self.snapshot, self.uploaded, self.delivered = build_dataset_assets(contracts_dir)
        self.instance = instance

    @property
    def range_keys(self) -> list[str]:
        return range_keys(self.contract.batch_ranges)

    def env(self) -> dict[str, str]:
        """The DATAHUB_* settings for a run in another process."""
        return environment_of(self.resources)

    def prepare(self, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            [self.extract, self.snapshot],
            partition_key=self.day,
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
        )
        assert result.success or not raise_on_error
        return result

    def partition_key(self, range_key: str) -> dg.MultiPartitionKey:
        return upload_partition_key(self.day, range_key)

    def upload_range(
        self, range_key: str, config: dict | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [self.uploaded],
            partition_key=self.partition_key(range_key),
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
            run_config={"ops": {self.uploaded.op.name: {"config": {**FAST_RETRY, **(config or {})}}}},
        )

    def upload_block(
        self, first: str, last: str, config: dict | None = None, raise_on_error: bool = True
    ) -> dg.ExecuteInProcessResult:
        """One run over ranges first..last of the day, as the daily fan-out starts them."""
        return dg.materialize(
            [self.uploaded],
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
            tags=block_partition_tags(self.day, first, last),
            run_config={"ops": {self.uploaded.op.name: {"config": {**FAST_RETRY, **(config or {})}}}},
        )

    def upload_all(self, config: dict | None = None) -> list[dict]:
        """Materialize every range of the day; return each range's metadata."""
        metadata = []
        for key in self.range_keys:
            result = self.upload_range(key, config)
            assert result.success
            metadata.append(materialization_metadata(result, self.uploaded))
        return metadata

    def prove(self, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        """Build the day's proof of delivery, as the proof sensor would once every range is uploaded."""
        return dg.materialize(
            [self.delivered], partition_key=self.day, resources=self.resources, instance=self.instance,
            raise_on_error=raise_on_error,
        )  # fmt: skip

    def ledger(self) -> dict[int, LedgerEntry]:
        engine = create_delivery_engine(self.delivery_url)
        try:
            return Ledger(engine).entries(self.contract.data_uuid, self.day)
        finally:
            engine.dispose()

    def snapshot_frame(self) -> pl.DataFrame:
        return pl.read_parquet(self.lake.snapshot_path(self.contract.dataset, self.day))

    def quarantine_frame(self) -> pl.DataFrame:
        return pl.read_parquet(self.lake.quarantine_path(self.contract.dataset, self.day))


def materialization_metadata(result: dg.ExecuteInProcessResult, asset: dg.AssetsDefinition) -> dict:
    (mat,) = result.asset_materializations_for_node(asset.op.name)
    return {k: v.value for k, v in mat.metadata.items()}


def endpoint_receipts(db_path: Path) -> list[dict]:
    """The endpoint's receipts (one per request it answered), read from its database.

    Read-only, beside the running endpoint (WAL mode allows it); receipts hold no values.
    """
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM receipts ORDER BY arrived_at")]
    finally:
        conn.close()


# --- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped afterwards."""
    with scratch_database("datahub_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def delivery_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both ledger backends, through the same code."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'delivery.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def delivery_engine(delivery_url: str) -> Iterator[sa.Engine]:
    engine = create_delivery_engine(delivery_url)
    yield engine
    engine.dispose()


# --- alert receiver ----------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP server that answers every POST like Slack's API ({"ok": true})."""

    url: str
    posts: list[tuple[str, dict, dict]] = field(default_factory=list)  # (path, headers, JSON body)
    refusing: list[bool] = field(default_factory=lambda: [False])  # answer 503 while True
    refused_paths: set[str] = field(default_factory=set)  # answer 503 on these paths

    def webhook_alerts(self) -> list[dict]:
        return [body for path, _, body in self.posts if path == "/hook"]

    def slack_messages(self) -> list[dict]:
        return [body for path, _, body in self.posts if path == "/slack/chat.postMessage"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    posts: list[tuple[str, dict, dict]] = []
    refusing = [False]
    refused_paths: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if refusing[0] or self.path in refused_paths:
                self.send_error(503)
                return
            posts.append((self.path, dict(self.headers), json.loads(body)))
            reply = b'{"ok": true, "channel": "C1", "ts": "1.0"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(f"http://127.0.0.1:{server.server_port}", posts, refusing, refused_paths)
    server.shutdown()
    server.server_close()


# --- MariaDB ---------------------------------------------------------------------------


@pytest.fixture
def mariadb_url() -> Iterator[str]:
    """A SQLAlchemy URL (mysql+pymysql) of a fresh, empty MariaDB database, dropped afterwards."""
    from datahub_dev.scratch_db import scratch_mariadb_database

    with scratch_mariadb_database("datahub_test") as url:
        yield url
