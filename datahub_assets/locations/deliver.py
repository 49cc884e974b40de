"""The `deliver` code location: the uploaded asset, its checks and the sensors. Its runs
hold the partner keys and the delivery database; they never read the sources."""

from datahub_assets.definitions import build_definitions

defs = build_definitions(parts=("deliver",))
