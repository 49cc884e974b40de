"""One code location per part of the platform, for deployments that give each part's
runs only that part's secrets (deploy/helm/values.yaml). One machine serves both parts
from `datahub_assets.definitions` instead."""
