"""The instance configurations load as Dagster reads them, against real storage.

- dagster.yaml (top level, production): Postgres storage from the DAGSTER_PG_* env vars,
  run queue limits and the upload pool, loaded into a fresh database on the local server.
- deploy/local/dagster.yaml (one machine): SQLite in DAGSTER_HOME, with the same pool.
- deploy/helm/values.yaml: the same limits and the platform's settings on Kubernetes
  (the chart itself cannot be rendered here: see deploy/README.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from datahub_assets.contract import DEFAULT_CONTRACTS_DIR, load_contracts
from datahub_assets.definitions import PART_RESOURCES, build_dataset_assets
from datahub_assets.locations import deliver as deliver_location
from datahub_assets.locations import prepare as prepare_location
from datahub_assets.resources import RESOURCE_ENV
from datahub_assets.upload.assets import UPLOAD_POOL

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_YAML = REPO_ROOT / "dagster.yaml"
LOCAL_YAML = REPO_ROOT / "deploy" / "local" / "dagster.yaml"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
CONTRACTS_DIR = DEFAULT_CONTRACTS_DIR


def dagster_home_with(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh DAGSTER_HOME holding a copy of `config`, the way a deployment sets one up."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(config, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def production_env(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    pg_database = pg_url.rsplit("/", 1)[1]
    monkeypatch.setenv("DAGSTER_PG_HOST", "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", "5432")
    monkeypatch.setenv("DAGSTER_PG_USER", "postgres")
    # Trust auth on loopback ignores it; set anyway because the config requires it.
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "unused-under-trust-auth")
    monkeypatch.setenv("DAGSTER_PG_DB", pg_database)
    return pg_database


def uploaded_pools() -> set[str | None]:
    return {a.op.pool for a in build_dataset_assets(CONTRACTS_DIR) if a.key.path[-1].endswith("_uploaded")}


def test_the_upload_assets_use_the_pool_the_instances_limit():
    # The yaml files limit pools by default_limit, not by name: this pins the name.
    assert uploaded_pools() == {UPLOAD_POOL}


def test_production_instance_is_postgres_backed_with_queue_and_pool(production_env, tmp_path, monkeypatch):
    database = production_env
    dagster_home_with(PRODUCTION_YAML, tmp_path, monkeypatch)

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        # The driver is named explicitly (SQLAlchemy 2.1 would pick psycopg 3 otherwise).
        url = sa.engine.make_url(instance.run_storage.postgres_url)
        assert url.drivername == "postgresql+psycopg2"
        assert (url.host, url.port, url.database) == ("127.0.0.1", 5432, database)

        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        runs = concurrency.run_queue_config
        pools = concurrency.pool_config
        backfill_limit = {t["key"]: t["limit"] for t in runs.tag_concurrency_limits}["dagster/backfill"]
        # The invariants the numbers encode (see the comments in dagster.yaml): the
        # fan-out's runs of today and the backfill runs fit in the upload pool together,
        # so today never waits for a slot a backfill holds; and uploads always leave run
        # slots for extract/snapshot runs.
        todays_runs = max(c.upload_runs for c in load_contracts(CONTRACTS_DIR))
        assert todays_runs + backfill_limit <= pools.default_pool_limit < runs.max_concurrent_runs
        # Run granularity: the queue, not a started pod, waits for an upload slot.
        assert pools.pool_granularity.value == "run"
        assert instance.run_monitoring_enabled

        # The pool limit is stored in Postgres, where every run pod's claim is counted.
        instance.event_log_storage.initialize_concurrency_limit_to_default(UPLOAD_POOL)
        assert instance.event_log_storage.get_concurrency_info(UPLOAD_POOL).slot_count == pools.default_pool_limit

    engine = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}")
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            stored_limit = conn.execute(
                sa.text('select "limit" from concurrency_limits where concurrency_key = :k'), {"k": UPLOAD_POOL}
            ).scalar_one()
    finally:
        engine.dispose()
    assert {"runs", "event_logs", "jobs", "concurrency_limits", "concurrency_slots"} <= tables
    assert stored_limit == pools.default_pool_limit


@pytest.mark.parametrize("missing", ["DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"])
def test_production_instance_refuses_to_start_without_its_env_vars(missing, production_env, tmp_path, monkeypatch):
    # No silent fallback (to SQLite, or to a default host): a pod missing its secret fails at once.
    dagster_home_with(PRODUCTION_YAML, tmp_path, monkeypatch)
    monkeypatch.delenv(missing)
    with pytest.raises(dg.DagsterInvalidConfigError, match=missing):
        dg.DagsterInstance.get()


def test_local_instance_is_sqlite_in_dagster_home_with_the_pool(tmp_path, monkeypatch):
    home = dagster_home_with(LOCAL_YAML, tmp_path, monkeypatch)

    with dg.DagsterInstance.get() as instance:
        assert not isinstance(instance.run_storage, PostgresRunStorage)
        # SQLite storages enforce pools too (DagsterInstance.ephemeral() would not).
        assert instance.event_log_storage.supports_global_concurrency_limits
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit < concurrency.run_queue_config.max_concurrent_runs
        instance.event_log_storage.initialize_concurrency_limit_to_default(UPLOAD_POOL)
        info = instance.event_log_storage.get_concurrency_info(UPLOAD_POOL)
        assert info.slot_count == concurrency.pool_config.default_pool_limit

    assert (home / "history" / "runs.db").is_file()
    assert (home / "schedules" / "schedules.db").is_file()


# --- Kubernetes: the Helm values --------------------------------------------------


@pytest.fixture(scope="module")
def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_helm_concurrency_mirrors_the_production_instance(helm_values):
    production = yaml.safe_load(PRODUCTION_YAML.read_text())["concurrency"]
    helm = helm_values["concurrency"]
    assert helm["enabled"] is True
    assert helm["runs"]["maxConcurrentRuns"] == production["runs"]["max_concurrent_runs"]
    assert helm["runs"]["tagConcurrencyLimits"] == production["runs"]["tag_concurrency_limits"]
    assert helm["pools"]["defaultLimit"] == production["pools"]["default_limit"]
    assert helm["pools"]["granularity"] == production["pools"]["granularity"]
    # Dagster refuses run limits set both under `concurrency` and on the coordinator.
    queued = helm_values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] is None and not queued["tagConcurrencyLimits"]
    assert queued["blockOpConcurrencyLimitedRuns"] is None


def test_helm_storage_is_external_postgres_with_the_psycopg2_driver(helm_values):
    pg = helm_values["postgresql"]
    assert pg["enabled"] is False and pg["postgresqlHost"]
    assert pg["postgresqlScheme"] == yaml.safe_load(PRODUCTION_YAML.read_text())["storage"]["postgres"]["postgres_db"]["scheme"]
    assert pg["postgresqlPassword"] == "" and helm_values["generatePostgresqlPasswordSecret"] is False


# Every credential comes from a Secret, never as a literal in the values.
SECRET_SETTINGS = {
    "DATAHUB_DELIVERY_DB_URL",
    "DATAHUB_SOURCE_DB_URL",
    "DATAHUB_LANDING_URL",
    "DATAHUB_SFTP_KNOWN_HOSTS",  # pins the server's identity: changed only with the credentials
    "DATAHUB_SFTP_PASSWORD",
    "DATAHUB_SFTP_KEY_PATH",
    "DATAHUB_SLACK_TOKEN",
    "DATAHUB_ALERT_WEBHOOK_URL",
}


def _part_settings(part: str) -> set[str]:
    return {var for key in PART_RESOURCES[part] for var in RESOURCE_ENV[key][1].values()}


def test_helm_runs_each_run_in_its_own_pod_with_only_its_parts_settings(helm_values):
    assert helm_values["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm_values["runLauncher"]["config"]["k8sRunLauncher"]["resources"]["requests"]
    # No setting reaches every run pod through the launcher itself.
    launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    assert not launcher["envSecrets"] and not launcher["envVars"] and not launcher["volumes"]

    deployments = {d["name"]: d for d in helm_values["dagster-user-deployments"]["deployments"]}
    assert set(deployments) == {"datahub-prepare", "datahub-deliver"}
    envs = {}
    for part in ("prepare", "deliver"):
        deployment = deployments[f"datahub-{part}"]
        args = deployment["dagsterApiGrpcArgs"]
        assert args[args.index("--module-name") + 1] == f"datahub_assets.locations.{part}"
        assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
        assert "resources" not in deployment  # would override the run pods' sizing
        pod, container = deployment["podSecurityContext"], deployment["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0 and pod["fsGroup"] > 0
        assert container["runAsNonRoot"] is True and container["allowPrivilegeEscalation"] is False

        env = envs[part] = {e["name"]: e for e in deployment["env"]}
        # Exactly the part's settings: its run pods get no other part's secret.
        assert set(env) == _part_settings(part), set(env) ^ _part_settings(part)
        for name in SECRET_SETTINGS & set(env):
            assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["key"] == name
        for name in set(env) - SECRET_SETTINGS:
            assert "valueFrom" not in env[name], f"{name}: a setting, not a secret"
        mounts = {m["name"]: m for m in deployment["volumeMounts"]}
        assert mounts["datahub-lake"]["mountPath"] == env["DATAHUB_DATA_DIR"]["value"]
    # Together the parts set every setting the platform reads.
    assert set(envs["prepare"]) | set(envs["deliver"]) == {v for _, f in RESOURCE_ENV.values() for v in f.values()}
    assert not {"DATAHUB_KEYS_PATH", "DATAHUB_DELIVERY_DB_URL"} & set(envs["prepare"])
    assert not {"DATAHUB_SOURCE_DB_URL", "DATAHUB_LANDING_URL", "DATAHUB_SFTP_PASSWORD"} & set(envs["deliver"])

    # keys.properties: only in the deliver pods, a Secret volume mounted where
    # DATAHUB_KEYS_PATH points, root-owned and readable by the pod's fsGroup only.
    assert "datahub-keys" not in {v["name"] for v in deployments["datahub-prepare"]["volumes"]}
    deliver = deployments["datahub-deliver"]
    volumes = {v["name"]: v for v in deliver["volumes"]}
    mounts = {m["name"]: m for m in deliver["volumeMounts"]}
    keys = volumes["datahub-keys"]["secret"]
    assert keys["defaultMode"] == 0o440
    # Mounted as the file itself (subPath): in a Secret folder the file is a symlink,
    # which the SDK resource refuses.
    assert mounts["datahub-keys"]["subPath"] == keys["items"][0]["path"]
    assert mounts["datahub-keys"]["mountPath"] == envs["deliver"]["DATAHUB_KEYS_PATH"]["value"]
    assert mounts["datahub-keys"]["readOnly"]


def test_each_code_location_holds_its_parts_assets_and_resources_only():
    prepare, deliver = prepare_location.defs, deliver_location.defs
    assert set(prepare.resources) == set(PART_RESOURCES["prepare"])
    assert set(deliver.resources) == set(PART_RESOURCES["deliver"])
    keys = {name: {a.key.to_user_string() for a in d.assets} for name, d in (("prepare", prepare), ("deliver", deliver))}
    assert keys == {
        "prepare": {"user_profile_extract", "user_profile_snapshot"},
        "deliver": {"user_profile_uploaded", "user_profile_delivered"},  # the proof reads the ledger
    }
    assert not deliver.schedules and not prepare.sensors and deliver.sensors


@pytest.mark.parametrize("component", ["dagsterWebserver", "dagsterDaemon"])
def test_helm_runs_the_charts_pods_as_non_root_with_a_read_only_root(helm_values, component):
    pod = helm_values[component]["podSecurityContext"]
    container = helm_values[component]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0 and pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["runAsNonRoot"] is True and container["runAsUser"] > 0
    assert container["allowPrivilegeEscalation"] is False and container["readOnlyRootFilesystem"] is True
    assert container["capabilities"]["drop"] == ["ALL"]
