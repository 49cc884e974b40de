"""The watch's clock as a resource: the time the sensors and the delivery checks judge
a date at. Frozen through configuration (`frozen_at`, DATAHUB_WATCH_FROZEN_AT) to
rehearse or test a morning (09:30, 10:01 GMT+8) on the real platform; empty, it is the
real time."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
from pydantic import Field

from datahub_assets.partitions import utc_now


class WatchClock(dg.ConfigurableResource):
    frozen_at: str = Field(
        default="", description="an ISO 8601 time with its offset (2026-11-27T09:30:00+08:00); empty: the real time"
    )

    def now(self) -> datetime:
        if not self.frozen_at:
            return utc_now()
        frozen = datetime.fromisoformat(self.frozen_at)
        if frozen.tzinfo is None:
            raise ValueError(
                f"DATAHUB_WATCH_FROZEN_AT={self.frozen_at} needs its UTC offset, e.g. 2026-11-27T09:30:00+08:00"
            )
        return frozen
