"""Injected trouble (latency, unknown outcomes, outages) and the partner's rate cap."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from datahub_emulator import codes

DEFAULT_CAP = 20
WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float

    def covers(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """The endpoint's behaviour knobs; JSON shape as in docs/protocol.md (admin/faults)."""

    latency_median_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    u_rate: float = 0.0
    f_rate: float = 0.0
    lost_ack_rate: float = 0.0
    outages: tuple[Outage, ...] = field(default_factory=tuple)
    cap: int = DEFAULT_CAP

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": {"median": self.latency_median_ms, "jitter": self.latency_jitter_ms},
            "u_rate": self.u_rate,
            "f_rate": self.f_rate,
            "lost_ack_rate": self.lost_ack_rate,
            "outages": [{"start": o.start, "end": o.end} for o in self.outages],
            "cap": self.cap,
        }

    def merged(self, patch: Mapping[str, Any]) -> FaultConfig:
        """A copy with the given JSON keys replaced; raises ValueError on a bad patch."""
        unknown = set(patch) - set(self.to_json())
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        changes: dict[str, Any] = {}
        if "latency_ms" in patch:
            latency = _mapping(patch["latency_ms"], "latency_ms")
            changes["latency_median_ms"] = _non_negative(
                latency.get("median", self.latency_median_ms), "latency_ms.median"
            )
            changes["latency_jitter_ms"] = _non_negative(
                latency.get("jitter", self.latency_jitter_ms), "latency_ms.jitter"
            )
        for name in ("u_rate", "f_rate", "lost_ack_rate"):
            if name in patch:
                changes[name] = _rate(patch[name], name)
        if "outages" in patch:
            changes["outages"] = _outages(patch["outages"])
        if "cap" in patch:
            changes["cap"] = _positive_int(patch["cap"], "cap")
        return replace(self, **changes)


def _mapping(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number")
    return float(value)


def _non_negative(value: Any, name: str) -> float:
    number = _number(value, name)
    if number < 0:
        raise ValueError(f"{name} must be >= 0")
    return number


def _rate(value: Any, name: str) -> float:
    number = _number(value, name)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be within [0, 1]")
    return number


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return value


def _outages(value: Any) -> tuple[Outage, ...]:
    if not isinstance(value, list):
        raise ValueError("outages must be a list")
    outages = []
    for item in value:
        window = _mapping(item, "outage")
        start, end = _number(window.get("start"), "start"), _number(window.get("end"), "end")
        if end < start:
            raise ValueError("an outage must not end before it starts")
        outages.append(Outage(start, end))
    return tuple(outages)


class SlidingWindowThrottle:
    """Admits at most `cap` requests in any sliding window of WINDOW_S seconds.

    Rejected requests are not recorded, so a client that backs off is not punished for
    the attempts it made while over the cap.
    """

    def __init__(self) -> None:
        self._admitted: deque[float] = deque()

    def admit(self, now: float, cap: int) -> bool:
        while self._admitted and now - self._admitted[0] >= WINDOW_S:
            self._admitted.popleft()
        if len(self._admitted) >= cap:
            return False
        self._admitted.append(now)
        return True

    def clear(self) -> None:
        self._admitted.clear()


class FaultInjector:
    """Draws the injected outcomes and latencies from one seeded random source."""

    def __init__(self, config: FaultConfig, seed: int | None = None) -> None:
        self.config = config
        self._random = random.Random(seed)

    def raise_if_injected(self, now: float) -> None:
        config = self.config
        if any(outage.covers(now) for outage in config.outages):
            raise codes.unknown(codes.UNKNOWN_EXCEPTION, "service unavailable (outage)")
        if config.u_rate and self._random.random() < config.u_rate:
            raise codes.unknown(codes.UNKNOWN_EXCEPTION, "injected")
        if config.f_rate and self._random.random() < config.f_rate:
            raise codes.failed(codes.DATA_CHECK_FAILED, "injected")

    def lose_ack(self) -> bool:
        """Whether to answer U for a batch that was stored (the outcome really is unknown)."""
        rate = self.config.lost_ack_rate
        return bool(rate) and self._random.random() < rate

    def latency_s(self) -> float:
        config = self.config
        if not (config.latency_median_ms or config.latency_jitter_ms):
            return 0.0
        jitter = self._random.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        return max(0.0, config.latency_median_ms + jitter) / 1000.0
