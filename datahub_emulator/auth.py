"""Who sent a request and whether it is fresh: signature, client registration, replay.

The canonical string and headers are defined in docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from datahub_emulator import codes

HEADER_CLIENT_ID = "x-client-id"
HEADER_TIMESTAMP = "x-timestamp"
HEADER_NONCE = "x-nonce"
HEADER_SIGNATURE = "x-signature"

REPLAY_WINDOW_S = 300.0

_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_NONCE_RE = re.compile(r"[0-9a-fA-F]{32}")


@dataclass(frozen=True, slots=True)
class SignedHeaders:
    client_id: str
    timestamp: str
    nonce: str
    signature: bytes


def canonical_string(client_id: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    """The exact bytes the client signs; the body enters only through its SHA-256 (hex)."""
    return f"{client_id}\n{timestamp}\n{nonce}\n{body_sha256}".encode()


def client_id_of(headers: Mapping[str, str]) -> str:
    client_id = headers.get(HEADER_CLIENT_ID, "")
    if not client_id:
        raise codes.failed(codes.SIGNATURE_INVALID, "request is not signed")
    return client_id


def signed_headers(headers: Mapping[str, str]) -> SignedHeaders:
    """Read the signing headers; a missing or malformed one means the request is unsigned."""
    client_id = client_id_of(headers)
    timestamp = headers.get(HEADER_TIMESTAMP, "")
    nonce = headers.get(HEADER_NONCE, "")
    signature_b64 = headers.get(HEADER_SIGNATURE, "")
    if not (_TIMESTAMP_RE.fullmatch(timestamp) and _NONCE_RE.fullmatch(nonce) and signature_b64):
        raise codes.failed(codes.SIGNATURE_INVALID, "signing headers missing or malformed")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise codes.failed(codes.SIGNATURE_INVALID, "signature is not base64") from None
    return SignedHeaders(client_id, timestamp, nonce.lower(), signature)


def verify_signature(public_key: rsa.RSAPublicKey, signed: SignedHeaders, body_sha256: str) -> None:
    message = canonical_string(signed.client_id, signed.timestamp, signed.nonce, body_sha256)
    try:
        public_key.verify(signed.signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise codes.failed(codes.SIGNATURE_INVALID, "signature does not verify") from None


class ReplayGuard:
    """Rejects stale timestamps and nonces already seen within the window.

    A nonce only needs remembering for as long as its timestamp is acceptable: after that
    the timestamp check alone rejects a replay. So memory is bounded by the request rate
    times twice the window.
    """

    def __init__(self, window_s: float = REPLAY_WINDOW_S) -> None:
        self._window_s = window_s
        self._seen: set[tuple[str, str]] = set()
        self._expiry: deque[tuple[float, tuple[str, str]]] = deque()

    def check_and_remember(self, signed: SignedHeaders, now: float) -> None:
        self._forget_expired(now)
        sent_at = int(signed.timestamp) / 1000.0
        if abs(now - sent_at) > self._window_s:
            raise codes.failed(codes.REPLAY_REJECTED, "timestamp outside the accepted window")
        key = (signed.client_id, signed.nonce)
        if key in self._seen:
            raise codes.failed(codes.REPLAY_REJECTED, "nonce already used")
        self._seen.add(key)
        # The timestamp may lie up to one window in the future, so keep the nonce until
        # that timestamp has left the window as well.
        self._expiry.append((max(now, sent_at) + self._window_s, key))

    def _forget_expired(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            _, key = self._expiry.popleft()
            self._seen.discard(key)
