"""deploy/helm/values.yaml checked against dagster-k8s's own schema and code (0.29.27,
the release of dagster 1.13.27), since no cluster and no helm run here.

The chart turns the values into two things this test rebuilds the same way:
- the instance's dagster.yaml (its `configmap-instance.yaml` and `dagsterYaml.*`
  templates): the run launcher, the run coordinator, the concurrency limits, run
  monitoring and run retries, each camelCase key written as its snake_case name;
- each code location's container context (`dagsterUserDeployments.k8sContainerContext`),
  which the launcher merges into every run pod of that location.

Every key of the run launcher and instance settings is carried over, not only the ones
the templates read, so that a misspelt key reaches Dagster's schema and fails here, as
the chart's values schema would refuse it at install. Then dagster-k8s builds a run
pod's Job from both, as K8sRunLauncher.launch_run does; it turns the env, volumes,
mounts and resources into Kubernetes models and refuses any field Kubernetes does not have.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.config import dagster_instance_config
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job
from dagster_k8s.version import __version__ as dagster_k8s_version

REPO_ROOT = Path(__file__).resolve().parents[1]
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
PRODUCTION_YAML = REPO_ROOT / "dagster.yaml"

# What `helm upgrade --install datahub dagster/dagster --namespace datahub` (deploy/README.md) names.
RELEASE = "datahub"
NAMESPACE = "datahub"
FULLNAME = f"{RELEASE}-dagster"
DAGSTER_HOME = "/opt/dagster/dagster_home"  # the chart's global.dagsterHome


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snake_keys(values: dict[str, Any]) -> dict[str, Any]:
    """One level of keys to snake_case; null values left out, as the templates skip them."""
    return {snake(k): v for k, v in values.items() if v is not None}


def run_launcher_config(values: dict) -> dict[str, Any]:
    """`run_launcher.config` as the chart's `dagsterYaml.runLauncher.k8s` writes it."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    config: dict[str, Any] = {
        # Filled in by the chart itself.
        "job_namespace": NAMESPACE,
        "service_account_name": FULLNAME,
        "dagster_home": DAGSTER_HOME,
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    for key, value in launcher.items():
        if key in ("envConfigMaps", "envSecrets"):
            config[snake(key)] = [source["name"] for source in value]  # the chart keeps the names
        elif key == "image":
            config["job_image"] = f"{value['repository']}:{value['tag']}"
        elif key == "runK8sConfig":
            config["run_k8s_config"] = snake_keys(value)
        elif key == "failPodOnRunFailure":
            config[snake(key)] = bool(value)
        else:
            config[snake(key)] = value
    return config


def instance_settings(values: dict) -> dict[str, Any]:
    """The run launcher and instance settings of the chart's dagster.yaml (storage and the
    compute logs aside: the chart's own, unchanged by these values)."""
    daemon = values["dagsterDaemon"]
    concurrency = values["concurrency"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    runs = dict(concurrency["runs"])
    runs["tagConcurrencyLimits"] = [snake_keys(limit) for limit in runs.get("tagConcurrencyLimits", [])]
    return {
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": run_launcher_config(values)},
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
            # The template writes a limit only when it is set: an empty list is left out.
            "config": {k: v for k, v in snake_keys(queued).items() if v != []},
        },
        "concurrency": {"pools": snake_keys(concurrency["pools"]), "runs": snake_keys(runs)},
        "run_monitoring": snake_keys(daemon["runMonitoring"]),
        "run_retries": snake_keys(daemon["runRetries"]),
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }


def container_context(values: dict, deployment: dict) -> dict[str, Any]:
    """A code location's container context, as `dagsterUserDeployments.k8sContainerContext`
    writes it (includeConfigInLaunchedRuns)."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{FULLNAME}-user-deployments-{deployment['name']}-user-env"],
        "namespace": NAMESPACE,
        "service_account_name": f"{FULLNAME}-user-deployments-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    for key in ("envSecrets",):
        if deployment.get(key):
            k8s[snake(key)] = [source["name"] for source in deployment[key]]
    for key in ("volumeMounts", "volumes", "labels", "resources", "schedulerName", "env"):
        if deployment.get(key):
            k8s[snake(key)] = deployment[key]
    return {"k8s": k8s}


def run_pod_job(values: dict, deployment_name: str, tmp_path: Path) -> Any:
    """The Kubernetes Job of one run of a code location, built by dagster-k8s as
    K8sRunLauncher.launch_run builds it (without sending it to a cluster)."""
    settings = instance_settings(values)["run_launcher"]["config"]
    processed = process_config(K8sRunLauncher.config_type(), settings)
    if not processed.success:
        raise dg.DagsterInvalidConfigError("run launcher", processed.errors, settings)
    # The one change: outside a cluster, the Kubernetes client reads a kubeconfig file.
    launcher = K8sRunLauncher(**{**processed.value, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig(tmp_path))})

    (deployment,) = [d for d in values["dagster-user-deployments"]["deployments"] if d["name"] == deployment_name]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    args = deployment["dagsterApiGrpcArgs"]
    run = dg.DagsterRun(
        job_name="__ASSET_JOB",
        run_id="0123abcd-0000-4000-8000-000000000000",
        job_code_origin=JobPythonOrigin(
            "__ASSET_JOB",
            RepositoryPythonOrigin(
                executable_path=sys.executable,
                code_pointer=ModuleCodePointer(args[args.index("--module-name") + 1], "defs"),
                container_image=image,
                container_context=container_context(values, deployment),
            ),
        ),
    )
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run"],
        job_name="dagster-run-0123abcd",
        pod_name="dagster-run-0123abcd",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )


def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def load_instance_settings(settings: dict, tmp_path: Path) -> dict:
    """Dagster's own reading of a dagster.yaml holding these settings: its instance schema,
    then the run coordinator's config schema."""
    config, _ = dagster_instance_config(str(home_with(settings, tmp_path)))
    coordinator = process_config(QueuedRunCoordinator.config_type(), settings["run_coordinator"]["config"])
    if not coordinator.success:
        raise dg.DagsterInvalidConfigError("run coordinator", coordinator.errors, settings["run_coordinator"])
    return config


def home_with(settings: dict, folder: Path) -> Path:
    """A DAGSTER_HOME whose dagster.yaml holds these settings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return folder


@pytest.fixture
def helm_values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_the_schema_is_dagster_k8s_of_this_dagster_release():
    # The chart version is the dagster version (deploy/README.md); dagster-k8s 0.29.x goes with 1.13.x.
    assert dg.__version__ == "1.13.27" and dagster_k8s_version == "0.29.27"


def test_the_instance_settings_load_as_dagster_reads_them_and_match_production(helm_values, tmp_path):
    config = load_instance_settings(instance_settings(helm_values), tmp_path / "helm")
    production = yaml.safe_load(PRODUCTION_YAML.read_text())
    shared = ("run_retries", "run_monitoring", "concurrency")
    # Read the same way, so Dagster's defaults fill both alike.
    production_config, _ = dagster_instance_config(str(home_with({k: production[k] for k in shared}, tmp_path / "production")))
    assert {k: config[k] for k in shared} == {k: production_config[k] for k in shared}
    assert config["run_coordinator"]["class"] == production["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.parametrize("deployment_name", ["datahub-prepare", "datahub-deliver"])
def test_a_run_pod_of_each_code_location_is_built_by_dagster_k8s(helm_values, deployment_name, tmp_path):
    job = run_pod_job(helm_values, deployment_name, tmp_path)
    pod = job.spec.template.spec
    (container,) = pod.containers
    launcher = helm_values["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = {d["name"]: d for d in helm_values["dagster-user-deployments"]["deployments"]}[deployment_name]

    # The code location's settings reach its run pods (includeConfigInLaunchedRuns) ...
    env = {e.name: e for e in container.env}
    for setting in deployment["env"]:
        assert setting["name"] in env
        if "valueFrom" in setting:
            assert env[setting["name"]].value_from.secret_key_ref.name == setting["valueFrom"]["secretKeyRef"]["name"]
    mounts = {(m.name, m.mount_path) for m in container.volume_mounts}
    assert mounts >= {(m["name"], m["mountPath"]) for m in deployment["volumeMounts"]}
    assert {v.name for v in pod.volumes} >= {v["name"] for v in deployment["volumes"]}
    # ... sized and secured by the run launcher: non-root, with the keys file's group.
    assert container.resources.requests == launcher["resources"]["requests"]
    assert container.resources.limits == launcher["resources"]["limits"]
    assert container.security_context.run_as_non_root is True and container.security_context.run_as_user == 10001
    assert container.security_context.allow_privilege_escalation is False
    assert pod.security_context.run_as_user == 10001 and pod.security_context.fs_group == 10001
    assert container.image == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert job.metadata.namespace is None or job.metadata.namespace == NAMESPACE


def test_only_the_deliver_run_pods_hold_the_partner_keys(helm_values, tmp_path):
    deliver = run_pod_job(helm_values, "datahub-deliver", tmp_path).spec.template.spec
    prepare = run_pod_job(helm_values, "datahub-prepare", tmp_path).spec.template.spec
    (mount,) = [m for m in deliver.containers[0].volume_mounts if m.name == "datahub-keys"]
    env = {e.name: e.value for e in deliver.containers[0].env}
    assert mount.mount_path == env["DATAHUB_KEYS_PATH"] and mount.sub_path and mount.read_only
    assert "datahub-keys" not in {v.name for v in prepare.volumes}
    assert "DATAHUB_KEYS_PATH" not in {e.name for e in prepare.containers[0].env}


def _set(values: dict, path: str, value: Any) -> None:
    """Set a value at a dotted path; `[name]` picks a list item by its name."""
    *parents, last = path.split(".")
    node: Any = values
    for part in parents:
        if part.startswith("["):
            node = next(item for item in node if item.get("name") == part[1:-1])
        else:
            node = node[part]
    node[last] = value


def _rename(values: dict, path: str, new_key: str) -> None:
    *parents, old_key = path.split(".")
    node: Any = values
    for part in parents:
        node = next(item for item in node if item.get("name") == part[1:-1]) if part.startswith("[") else node[part]
    node[new_key] = node.pop(old_key)


LAUNCHER = "runLauncher.config.k8sRunLauncher"
DELIVER = "dagster-user-deployments.deployments.[datahub-deliver]"

# A misspelt or mistyped setting in each part the test reads: each must fail it.
TYPOS = [
    ("launcher key", lambda v: _rename(v, f"{LAUNCHER}.imagePullPolicy", "imagePulPolicy")),
    ("launcher flag not a bool", lambda v: _set(v, f"{LAUNCHER}.loadInclusterConfig", "yes")),
    ("launcher resources key", lambda v: _rename(v, f"{LAUNCHER}.resources.requests", "requets")),
    ("run pod security context field", lambda v: _rename(v, f"{LAUNCHER}.securityContext.runAsUser", "runAsUsr")),
    ("run pod spec field", lambda v: _rename(v, f"{LAUNCHER}.runK8sConfig.podSpecConfig.securityContext", "securityContxt")),
    ("code location's mount field", lambda v: _rename(v, f"{DELIVER}.volumeMounts.[datahub-keys].mountPath", "mountpath")),
    ("code location's volume field", lambda v: _rename(v, f"{DELIVER}.volumes.[datahub-keys].secret.secretName", "secretname")),
    ("code location's env field", lambda v: _rename(v, f"{DELIVER}.env.[DATAHUB_DELIVERY_DB_URL].valueFrom", "valuefrom")),
    ("run retries key", lambda v: _rename(v, "dagsterDaemon.runRetries.maxRetries", "maxRetry")),
    ("run monitoring key", lambda v: _rename(v, "dagsterDaemon.runMonitoring.pollIntervalSeconds", "pollInterval")),
    ("pool key", lambda v: _rename(v, "concurrency.pools.defaultLimit", "defaultLimits")),
    ("run coordinator key", lambda v: _set(v, "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.dequeueIntervalSecond", 5)),
]  # fmt: skip


@pytest.mark.parametrize("break_values", [t[1] for t in TYPOS], ids=[t[0] for t in TYPOS])
def test_a_typo_in_the_values_fails(helm_values, break_values, tmp_path):
    broken = copy.deepcopy(helm_values)
    break_values(broken)
    with pytest.raises(Exception) as failure:
        load_instance_settings(instance_settings(broken), tmp_path)
        for deployment in ("datahub-prepare", "datahub-deliver"):
            run_pod_job(broken, deployment, tmp_path)
    # Refused by Dagster's config schema or by dagster-k8s's Kubernetes models, not a slip of this test.
    refused = isinstance(failure.value, dg.DagsterInvalidConfigError) or "Unexpected keys in model class" in str(failure.value)
    assert refused, repr(failure.value)
