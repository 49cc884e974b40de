"""The upload pipeline, in the order the partner's server is assumed to work:

authenticate (signature, client, replay) and authorize (institution, grant)
-> throttle -> injected faults / outages -> request shape -> data check -> store.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from datahub_emulator import auth, checks, codes
from datahub_emulator.faults import (
    WINDOW_S,
    FaultConfig,
    FaultInjector,
    Scripted,
    SlidingWindowThrottle,
)
from datahub_emulator.store import Client, Receipt, Store

log = logging.getLogger(__name__)


class UploadService:
    """Answers one upload request at a time: call it from one thread only (the endpoint's
    service thread), in the order the requests arrived."""

    def __init__(self, store: Store, faults: FaultConfig) -> None:
        self.store = store
        self.injector = FaultInjector(faults)
        self._throttle = SlidingWindowThrottle()
        self._replays = auth.ReplayGuard()
        self._ciphers: dict[str, AESGCM] = {}

    def handle(
        self, body: bytes, headers: Mapping[str, str], now: float
    ) -> tuple[dict[str, str], float]:
        """Process one request; the response JSON and the latency to inject. Never raises."""
        scripted = self.injector.next_request()
        receipt = Receipt(
            trace_id=codes.new_trace_id(),
            content_hash=hashlib.sha256(body).hexdigest(),
            arrived_at=now,
        )
        try:
            outcome = self._process(body, headers, receipt, scripted)
        except codes.Rejection as rejection:
            outcome = rejection.outcome
            self._record(receipt, outcome)
        except Exception as error:  # noqa: BLE001 - the endpoint must always answer
            # Only the type: an exception message could quote a value.
            log.error("upload failed unexpectedly: %s", type(error).__name__)
            outcome = codes.Outcome(codes.STATUS_UNKNOWN, codes.UNKNOWN_EXCEPTION, "internal error")
            self._record(receipt, outcome)
        return outcome.as_response(receipt.trace_id), self.injector.latency_s(scripted)

    def _process(
        self,
        body: bytes,
        headers: Mapping[str, str],
        receipt: Receipt,
        scripted: Scripted | None,
    ) -> codes.Outcome:
        now = receipt.arrived_at
        client = self._authenticate(receipt.content_hash, headers, now)
        receipt.client_id = client.client_id
        envelope = checks.parse_envelope(body)
        receipt.data_uuid = envelope.text_field("dataUuid") or None
        self._authorize(client, envelope)
        if scripted is not None and scripted.throttled:
            raise codes.unknown(codes.THROTTLED, "injected")
        if not self._throttle.admit(now, self.injector.config.cap):
            raise codes.unknown(codes.THROTTLED, f"over {self.injector.config.cap} batches/s")
        receipt.admitted = True
        self.injector.raise_if_injected(now, scripted)
        request = checks.parse_upload(envelope)
        receipt.rows = len(request.rows)
        ids = self._check_data(request)
        outcome = codes.OK
        if self.injector.lose_ack(scripted):
            outcome = codes.Outcome(codes.STATUS_UNKNOWN, codes.UNKNOWN_EXCEPTION, "injected")
        receipt.status, receipt.code = outcome.status, outcome.code
        self.store.save_rows(receipt, ids, request.rows)
        return outcome

    def _authenticate(self, body_sha256: str, headers: Mapping[str, str], now: float) -> Client:
        client_id = auth.client_id_of(headers)
        client = self.store.clients.get(client_id)
        if client is None:
            raise codes.failed(codes.CLIENT_UNKNOWN, "client id is not registered")
        signed = auth.signed_headers(headers)
        auth.verify_signature(client.public_key, signed, body_sha256)
        self._replays.check_and_remember(signed, now)
        return client

    def _authorize(self, client: Client, envelope: checks.Envelope) -> None:
        """Check what the body claims against the client's registration.

        Fields that are missing or of the wrong type are left to the shape check, which
        answers PARAM_ILLEGAL after the throttle, as for any other malformed request.
        """
        registered = {
            "institutionId": {client.institution_id},
            "antInstitutionId": {client.ant_institution_id},
            "dataKeyId": client.data_key_ids,
        }
        for field, expected in registered.items():
            claimed = envelope.text_field(field)
            if claimed is not None and claimed not in expected:
                raise codes.failed(codes.NO_PERMISSION, f"{field} does not match the client")
        data_uuid = envelope.text_field("dataUuid")
        if data_uuid and (client.institution_id, data_uuid) not in self.store.grants:
            raise codes.failed(codes.NO_PERMISSION, "institution has no grant on dataUuid")

    def _check_data(self, request: checks.UploadRequest) -> list[str]:
        schema = self.store.schemas.get(request.data_uuid)
        if schema is None:
            raise codes.failed(codes.PARAM_ILLEGAL, "dataUuid has no registered schema")
        decryptor = checks.RowDecryptor(self._cipher(request.data_key_id), request.data_uuid)
        return checks.check_rows(request.rows, schema, decryptor)

    def _cipher(self, data_key_id: str) -> AESGCM:
        cipher = self._ciphers.get(data_key_id)
        if cipher is None:
            key = self.store.data_keys.get(data_key_id)
            if key is None:
                raise codes.failed(codes.PARAM_ILLEGAL, "dataKeyId is not registered")
            cipher = self._ciphers[data_key_id] = AESGCM(key)
        return cipher

    def _record(self, receipt: Receipt, outcome: codes.Outcome) -> None:
        receipt.status, receipt.code = outcome.status, outcome.code
        self.store.save_receipt(receipt)

    # --- admin ---------------------------------------------------------------------

    def on_registrations_changed(self) -> None:
        # A re-registration may replace a data key under the same id.
        self._ciphers.clear()

    def reset(self) -> None:
        self.store.reset()
        self._throttle.clear()
        self.injector.restart()

    def stats(self) -> dict[str, Any]:
        store = self.store
        by_status = store.counts("status")
        return {
            "requests": sum(by_status.values()),
            "by_status": by_status,
            "by_code": store.counts("code"),
            "rows_stored": store.rows_stored(),
            "rows_accepted": store.rows_accepted(),
            "per_second": store.per_second(),
            "max_admitted_per_sliding_second": max_in_window(store.admitted_times()),
            # Every request that arrived counts here, THROTTLED ones too: what a client
            # that keeps to the cap must hold at or below it.
            "max_arrived_per_sliding_second": max_in_window(arrivals := list(store.arrival_times())),
            # Where the bursts over the cap began, in seconds after the first arrival.
            "over_cap_bursts_s": [round(t - arrivals[0], 2) for t in over_cap_starts(arrivals, self.injector.config.cap)],
            "cap": self.injector.config.cap,
        }


def sliding_counts(sorted_times: Iterable[float], window_s: float = WINDOW_S) -> Iterator[tuple[float, int]]:
    """For each timestamp, the first one of the half-open window (t - window_s, t] ending
    there, and how many the window holds, as the throttle counts."""
    times = list(sorted_times)
    start = 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        yield times[start], end - start + 1


def over_cap_starts(sorted_times: Iterable[float], cap: float, window_s: float = WINDOW_S) -> list[float]:
    """Where sliding windows holding more than `cap` timestamps begin, one per burst
    (windows that begin within window_s of a burst's start belong to it)."""
    starts: list[float] = []
    for begin, count in sliding_counts(sorted_times, window_s):
        if count > cap and (not starts or begin - starts[-1] >= window_s):
            starts.append(begin)
    return starts


def max_in_window(sorted_times: Iterable[float], window_s: float = WINDOW_S) -> int:
    """The most timestamps in any sliding window of window_s."""
    return max((count for _, count in sliding_counts(sorted_times, window_s)), default=0)
