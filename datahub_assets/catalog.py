"""What Dagster's catalog shows of a contract on each of its assets: the owners, the
contract file as the code reference, and (for the snapshot) the partner's columns."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import dagster as dg

from datahub_assets.contract import Contract


def contract_metadata(contract: Contract) -> dict[str, Any]:
    """Definition metadata every asset of the contract carries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # code references are beta in Dagster 1.13
        reference = dg.CodeReferencesMetadataValue(
            code_references=[dg.LocalFileCodeReference(file_path=str(contract.path.resolve()), label="data contract")]
        )
    return {"dagster/code_references": reference, "datahub/data_uuid": contract.data_uuid}


def partner_table_schema(contract: Contract) -> Mapping[str, Any]:
    """The snapshot's columns as the partner receives them (every value canonical text)."""
    columns = [
        dg.TableColumn(
            name=c.name,
            type=c.type.value,
            description=f"from {c.source}" if c.source else f"= {c.expression}",
            constraints=dg.TableColumnConstraints(nullable=not c.required, unique=c.name == "id"),
        )
        for c in contract.columns
    ]
    return {"dagster/column_schema": dg.TableSchema(columns=columns)}
