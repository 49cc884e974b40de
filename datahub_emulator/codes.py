"""Result statuses and codes of the partner's upload call, as the endpoint answers them.

The partner documents S/SUCCESS, U/UNKNOWN_EXCEPTION, F/PARAM_ILLEGAL and
F/DATA_CHECK_FAILED; the other codes belong to our wire protocol (docs/protocol.md).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

STATUS_SUCCESS = "S"
STATUS_UNKNOWN = "U"
STATUS_FAILED = "F"

SUCCESS = "SUCCESS"
UNKNOWN_EXCEPTION = "UNKNOWN_EXCEPTION"
THROTTLED = "THROTTLED"
PARAM_ILLEGAL = "PARAM_ILLEGAL"
DATA_CHECK_FAILED = "DATA_CHECK_FAILED"
SIGNATURE_INVALID = "SIGNATURE_INVALID"
REPLAY_REJECTED = "REPLAY_REJECTED"
CLIENT_UNKNOWN = "CLIENT_UNKNOWN"
NO_PERMISSION = "NO_PERMISSION"

FAILED_CODES = (
    PARAM_ILLEGAL,
    DATA_CHECK_FAILED,
    SIGNATURE_INVALID,
    REPLAY_REJECTED,
    CLIENT_UNKNOWN,
    NO_PERMISSION,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the endpoint answers for one request. `msg` never carries a data value."""

    status: str
    code: str
    msg: str

    def as_response(self, trace_id: str) -> dict[str, str]:
        return {
            "resultStatus": self.status,
            "resultCode": self.code,
            "resultMsg": self.msg,
            "traceId": trace_id,
        }


OK = Outcome(STATUS_SUCCESS, SUCCESS, "success")


class Rejection(Exception):
    """Raised anywhere in the request pipeline to answer with a non-success outcome."""

    def __init__(self, status: str, code: str, msg: str) -> None:
        super().__init__(f"{status}/{code}")
        self.outcome = Outcome(status, code, msg)


def failed(code: str, msg: str) -> Rejection:
    return Rejection(STATUS_FAILED, code, msg)


def unknown(code: str, msg: str) -> Rejection:
    return Rejection(STATUS_UNKNOWN, code, msg)


def new_trace_id() -> str:
    """19 random digits with no leading zero, shaped like the partner's sample traceId."""
    return str(10**18 + secrets.randbelow(9 * 10**18))
