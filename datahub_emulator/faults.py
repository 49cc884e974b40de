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

# Scripted outcomes besides "U/<code>" and "F/<code>": the batch is stored but answered
# U/UNKNOWN_EXCEPTION, as when the acknowledgement is lost on its way back.
LOST_ACK = "lost_ack"
SCRIPTED_OUTCOMES = frozenset(
    {
        f"{codes.STATUS_UNKNOWN}/{codes.UNKNOWN_EXCEPTION}",
        f"{codes.STATUS_UNKNOWN}/{codes.THROTTLED}",
        LOST_ACK,
        *(f"{codes.STATUS_FAILED}/{code}" for code in codes.FAILED_CODES),
    }
)


@dataclass(frozen=True, slots=True)
class Outage:
    start: float
    end: float

    def covers(self, now: float) -> bool:
        return self.start <= now < self.end


@dataclass(frozen=True, slots=True)
class Scripted:
    """What happens to one upload request, picked by its number (1-based)."""

    request: int
    outcome: str | None = None  # one of SCRIPTED_OUTCOMES; None: processed as usual
    latency_ms: float | None = None  # None: the usual latency draw

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"request": self.request}
        if self.outcome is not None:
            entry["outcome"] = self.outcome
        if self.latency_ms is not None:
            entry["latency_ms"] = self.latency_ms
        return entry

    @property
    def throttled(self) -> bool:
        return self.outcome == f"{codes.STATUS_UNKNOWN}/{codes.THROTTLED}"

    @property
    def lost_ack(self) -> bool:
        return self.outcome == LOST_ACK

    def raise_if_rejected(self) -> None:
        """Answer U/UNKNOWN_EXCEPTION or an F code here; other outcomes act elsewhere."""
        if self.outcome is None or self.throttled or self.lost_ack:
            return
        status, _, code = self.outcome.partition("/")
        raise codes.Rejection(status, code, "injected")


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
    seed: int | None = None
    scripted: tuple[Scripted, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": {"median": self.latency_median_ms, "jitter": self.latency_jitter_ms},
            "u_rate": self.u_rate,
            "f_rate": self.f_rate,
            "lost_ack_rate": self.lost_ack_rate,
            "outages": [{"start": o.start, "end": o.end} for o in self.outages],
            "cap": self.cap,
            "seed": self.seed,
            "scripted": [entry.to_json() for entry in self.scripted],
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
        if "seed" in patch:
            seed = patch["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed must be an integer or null")
            changes["seed"] = seed
        if "scripted" in patch:
            changes["scripted"] = _scripted(patch["scripted"])
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


def _scripted(value: Any) -> tuple[Scripted, ...]:
    if not isinstance(value, list):
        raise ValueError("scripted must be a list")
    entries: dict[int, Scripted] = {}
    for item in value:
        body = _mapping(item, "scripted entry")
        unknown = set(body) - {"request", "outcome", "latency_ms"}
        if unknown:
            raise ValueError(f"unknown scripted keys: {sorted(unknown)}")
        request = _positive_int(body.get("request"), "scripted.request")
        if request in entries:
            raise ValueError(f"request {request} is scripted twice")
        outcome = body.get("outcome")
        if outcome is not None and outcome not in SCRIPTED_OUTCOMES:
            raise ValueError(f"scripted.outcome must be one of {sorted(SCRIPTED_OUTCOMES)}")
        latency = body.get("latency_ms")
        if latency is not None:
            latency = _non_negative(latency, "scripted.latency_ms")
        if outcome is None and latency is None:
            raise ValueError("a scripted entry needs an outcome or latency_ms")
        entries[request] = Scripted(request, outcome, latency)
    return tuple(sorted(entries.values(), key=lambda entry: entry.request))


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
    """Decides the injected outcome and latency of each upload request.

    Random draws come from one source seeded with `config.seed`; scripted entries pick
    requests by number. Both restart whenever the config is replaced or the endpoint is
    reset, so the same config and the same requests give the same answers.
    """

    def __init__(self, config: FaultConfig) -> None:
        self.configure(config)

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self._scripted = {entry.request: entry for entry in config.scripted}
        self.restart()

    def restart(self) -> None:
        self._random = random.Random(self.config.seed)
        self._requests = 0

    def next_request(self) -> Scripted | None:
        """Count one upload request; its scripted entry, if any."""
        self._requests += 1
        return self._scripted.get(self._requests)

    def raise_if_injected(self, now: float, scripted: Scripted | None) -> None:
        config = self.config
        if any(outage.covers(now) for outage in config.outages):
            raise codes.unknown(codes.UNKNOWN_EXCEPTION, "service unavailable (outage)")
        if scripted is not None and scripted.outcome is not None:
            scripted.raise_if_rejected()
            return  # the script decides this request: no random draw
        if config.u_rate and self._random.random() < config.u_rate:
            raise codes.unknown(codes.UNKNOWN_EXCEPTION, "injected")
        if config.f_rate and self._random.random() < config.f_rate:
            raise codes.failed(codes.DATA_CHECK_FAILED, "injected")

    def lose_ack(self, scripted: Scripted | None) -> bool:
        """Whether to answer U for a batch that was stored (the outcome really is unknown)."""
        if scripted is not None and scripted.outcome is not None:
            return scripted.lost_ack
        rate = self.config.lost_ack_rate
        return bool(rate) and self._random.random() < rate

    def latency_s(self, scripted: Scripted | None) -> float:
        if scripted is not None and scripted.latency_ms is not None:
            return scripted.latency_ms / 1000.0
        config = self.config
        if not (config.latency_median_ms or config.latency_jitter_ms):
            return 0.0
        jitter = self._random.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        return max(0.0, config.latency_median_ms + jitter) / 1000.0
