"""The partner boundary's vocabulary: what one upload call returns, the ledger's batch
states, and the interface every upload client (the SDK resource) implements."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class BatchStatus(StrEnum):
    """A batch's state in the ledger: in flight, or the partner's answer."""

    IN_FLIGHT = "P"  # sent, no answer recorded yet
    SUCCESS = "S"
    UNKNOWN = "U"  # the outcome is unknown: retried
    FAILED = "F"  # refused (PARAM_ILLEGAL, DATA_CHECK_FAILED, ...): never retried blindly


# F codes that refuse the client's keys, not the batch: every other batch would be refused
# the same way, so the range stops sending at the first one.
KEY_CODES = frozenset({"SIGNATURE_INVALID", "CLIENT_UNKNOWN", "NO_PERMISSION"})


@dataclass(frozen=True)
class UploadOutcome:
    status: BatchStatus  # S, U or F; an SDK exception counts as U (unknown outcome)
    code: str
    trace_id: str

    @property
    def refuses_keys(self) -> bool:
        return self.status is BatchStatus.FAILED and self.code in KEY_CODES


class UploadClient(Protocol):
    """Sends one batch of one dataset and says what the partner answered."""

    @property
    def endpoint(self) -> str:
        """Where requests go, for messages (no secret)."""
        ...

    @property
    def key_id(self) -> str:
        """The data key the rows are encrypted under (its id, which requests carry in the
        clear), recorded per batch in the ledger; "" when the SDK does not say."""
        ...

    def start(self, warm_up: bool = False) -> None:
        """Get ready to send; a configuration error surfaces here, before anything is recorded.
        `warm_up`: the range is long, so spend a moment up front for prompt first sends."""
        ...

    def prepare(self, rows: list[str]) -> Any:
        """The batch's rows in the form `upload` sends. Called before the limiter slot is
        taken, so that only the send itself sits between the slot and the request."""
        ...

    def upload(self, *, data_uuid: str, rows: Any) -> UploadOutcome:
        """Send one batch whose rows came from `prepare`."""
        ...
