"""The `prepare` code location: extract and snapshot, and their daily schedule. Its runs
read the sources; they hold no partner key and no delivery database."""

from datahub_assets.definitions import build_definitions

defs = build_definitions(parts=("prepare",))
