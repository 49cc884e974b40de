"""Every resource's settings, and the one place they are read from the environment.

`RESOURCE_ENV` maps each resource field to its environment variable; `build_resources`
wires them as `dg.EnvVar`s, resolved only when a run or sensor uses the resource, never
while definitions load. The demo stack, the tests and the workers derive their
settings from the same map.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from datahub_assets.extract.sources import LandingFiles, SourceDatabase
from datahub_assets.lake import DataLake
from datahub_assets.monitoring.clock import WatchClock
from datahub_assets.monitoring.notifier import Notifier
from datahub_assets.upload.resources import DeliveryDatabase
from datahub_assets.upload.sdk import DataHubSdkResource

RESOURCE_ENV: Mapping[str, tuple[type[dg.ConfigurableResource], Mapping[str, str]]] = {
    "lake": (DataLake, {"root": "DATAHUB_DATA_DIR"}),
    "source_db": (SourceDatabase, {"url": "DATAHUB_SOURCE_DB_URL"}),
    "landing": (
        LandingFiles,
        {
            "url": "DATAHUB_LANDING_URL",
            "known_hosts": "DATAHUB_SFTP_KNOWN_HOSTS",
            "sftp_password": "DATAHUB_SFTP_PASSWORD",
            "sftp_key_path": "DATAHUB_SFTP_KEY_PATH",
        },
    ),
    "sdk": (
        DataHubSdkResource,
        {"classpath": "DATAHUB_SDK_CLASSPATH", "keys_path": "DATAHUB_KEYS_PATH", "trust_store": "DATAHUB_SDK_TRUSTSTORE"},
    ),
    "delivery_db": (DeliveryDatabase, {"url": "DATAHUB_DELIVERY_DB_URL"}),
    # Each may be set empty: an empty token/channel or URL disables that channel.
    "notifier": (
        Notifier,
        {
            "slack_token": "DATAHUB_SLACK_TOKEN",
            "slack_channel": "DATAHUB_SLACK_CHANNEL",
            "webhook_url": "DATAHUB_ALERT_WEBHOOK_URL",
        },
    ),
    # Empty in production; a frozen time for rehearsals and tests of the watch.
    "watch_clock": (WatchClock, {"frozen_at": "DATAHUB_WATCH_FROZEN_AT"}),
}


def build_resources(**overrides: dg.ConfigurableResource) -> dict[str, dg.ConfigurableResource]:
    """Every resource, configured from the environment unless given here."""
    unknown = set(overrides) - set(RESOURCE_ENV)
    if unknown:
        raise KeyError(f"no such resources: {sorted(unknown)}")
    resources = {
        key: cls(**{name: dg.EnvVar(var) for name, var in fields.items()})
        for key, (cls, fields) in RESOURCE_ENV.items()
    }
    return {**resources, **overrides}


def resource_environment(settings: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The environment variables for {resource key: {field: value}}; a field not given is
    set empty (every variable must be set, empty where unused)."""
    env = {var: "" for _, fields in RESOURCE_ENV.values() for var in fields.values()}
    for key, values in settings.items():
        _, fields = RESOURCE_ENV[key]
        for name, value in values.items():
            env[fields[name]] = str(value)
    return env
