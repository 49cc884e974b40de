"""HTTP routes of the local DataHub endpoint (Starlette)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datahub_emulator import admin
from datahub_emulator.faults import FaultConfig
from datahub_emulator.service import UploadService
from datahub_emulator.store import RegistrationConflict, Store

UPLOAD_PATH = "/datahub/v1/upload"

MIB = 1024 * 1024
# An upload is at most 100 rows. The demo contract's worst case, 4 columns each at the
# contract's 64 KiB value limit (max_value_bytes), is 100 x 4 x 87.4 KB of base64 AES-GCM
# ciphertext = 33.4 MiB; typical batches are tens of KB.
MAX_UPLOAD_BYTES = 40 * MIB
# A reconcile call carries a run's row ids (about 2 million ids of 32 characters).
MAX_RECONCILE_BYTES = 64 * MIB
# Everything else (registrations, fault configs) is a few KB.
MAX_OTHER_BYTES = 1 * MIB

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Who may call /admin/*: the bearer of `token`, through a Host in `hosts` (None: any
    Host), from loopback only unless `loopback_only` is off."""

    token: str
    hosts: frozenset[str] | None
    loopback_only: bool = True


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host headers that name this endpoint on loopback."""
    return frozenset(f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]"))


def create_app(db_path: Path, faults: FaultConfig, access: AdminAccess) -> ASGIApp:
    """The endpoint as an ASGI app; the database opens at startup and closes at shutdown."""
    holder: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # The one thread that runs the service: requests are processed one at a time, in
        # the order they arrived, while the event loop stays free to receive and stamp
        # the next ones.
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="datahub-service")
        holder["worker"] = worker
        store = await _on(worker, Store, db_path)
        holder["service"] = UploadService(store, faults)
        holder["release"] = asyncio.Event()
        try:
            yield
        finally:
            await _on(worker, store.close)
            worker.shutdown()

    def service() -> UploadService:
        service: UploadService = holder["service"]
        return service

    def on_service(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """Run fn on the service's thread, after the requests that arrived before."""
        return _on(holder["worker"], fn, *args)

    async def upload(request: Request) -> Response:
        body = await request.body()
        # Arrival is stamped here, on the event loop, as soon as the request is in: a
        # gateway counts requests at its edge, however long the ones before take to
        # process. The stamp and the hand-over to the service's one thread happen with no
        # await between, so the throttle sees requests in arrival order.
        arrived = time.time()
        answer, delay = await on_service(service().handle, body, request.headers, arrived)
        if delay:
            await _delay(delay, holder["release"])
        return JSONResponse(answer)

    async def register(request: Request) -> Response:
        registration = admin.parse_registration(await _json(request))

        def register_and_refresh() -> None:
            service().store.register(registration)
            service().on_registrations_changed()

        try:
            await on_service(register_and_refresh)
        except RegistrationConflict as conflict:
            return JSONResponse({"error": str(conflict)}, status_code=409)
        return JSONResponse({"registered": registration.client_id})

    async def revoke(request: Request) -> Response:
        institution_id, data_uuid = admin.parse_revoke(await _json(request))
        return JSONResponse({"revoked": await on_service(service().store.revoke, institution_id, data_uuid)})

    async def get_faults(_: Request) -> Response:
        return JSONResponse(service().injector.config.to_json())

    async def post_faults(request: Request) -> Response:
        patch = await _json(request)
        if not isinstance(patch, dict):
            raise admin.AdminError("body must be a JSON object")
        injector = service().injector
        try:
            config = injector.config.merged(patch)
        except ValueError as error:
            raise admin.AdminError(str(error)) from None
        await on_service(injector.configure, config)
        return JSONResponse(injector.config.to_json())

    async def stats(_: Request) -> Response:
        return JSONResponse(await on_service(service().stats))

    async def reconcile(request: Request) -> Response:
        data_uuid, ids = admin.parse_reconcile(await _json(request))
        result = await on_service(service().store.reconcile, data_uuid, ids)
        return JSONResponse(
            {
                "expected": result.expected,
                "stored": result.stored,
                "missing": result.missing,
                "unexpected": result.unexpected,
                "missing_indexes": result.missing_indexes,
            }
        )

    async def receipts(request: Request) -> Response:
        data_uuid, batches = admin.parse_receipts(await _json(request))
        return JSONResponse({"batches": service().store.receipts_by_batch(data_uuid, batches)})

    def release_held_answers() -> None:
        holder["release"].set()
        holder["release"] = asyncio.Event()

    async def reset(_: Request) -> Response:
        await on_service(service().reset)
        release_held_answers()  # a reset starts afresh
        return JSONResponse({"reset": True})

    async def release(_: Request) -> Response:
        release_held_answers()
        return JSONResponse({"released": True})

    async def healthz(_: Request) -> Response:
        # The pid lets the process that started this endpoint tell it from another server.
        return JSONResponse({"ok": True, "pid": os.getpid()})

    def _admin(handler: Handler) -> Handler:
        return _admin_route(handler, access)

    routes = [
        Route(UPLOAD_PATH, upload, methods=["POST"]),
        Route("/admin/register", _admin(register), methods=["POST"]),
        Route("/admin/revoke", _admin(revoke), methods=["POST"]),
        Route("/admin/faults", _admin(get_faults), methods=["GET"]),
        Route("/admin/faults", _admin(post_faults), methods=["POST"]),
        Route("/admin/stats", _admin(stats), methods=["GET"]),
        Route("/admin/reconcile", _admin(reconcile), methods=["POST"]),
        Route("/admin/receipts", _admin(receipts), methods=["POST"]),
        Route("/admin/reset", _admin(reset), methods=["POST"]),
        Route("/admin/release", _admin(release), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    limits = {UPLOAD_PATH: MAX_UPLOAD_BYTES, "/admin/reconcile": MAX_RECONCILE_BYTES, "/admin/receipts": MAX_RECONCILE_BYTES}
    return BodyLimit(Starlette(routes=routes, lifespan=lifespan), limits, MAX_OTHER_BYTES)


def _on(worker: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(worker, fn, *args)


async def _delay(seconds: float, release: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(release.wait(), seconds)
    except TimeoutError:
        pass


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


def _admin_route(handler: Handler, access: AdminAccess) -> Handler:
    """Guard an admin handler, cheapest check first; a bad payload becomes HTTP 400 with a
    message that names no secret.

    Loopback callers only; a Host naming this endpoint (a web page that rebinds its own
    name to 127.0.0.1 sends its own Host); the bearer token (any other local process);
    JSON bodies only (a cross-origin form post cannot send that type without a CORS
    preflight, which this endpoint never grants).
    """
    expected = f"Bearer {access.token}".encode()

    async def wrapped(request: Request) -> Response:
        client_host = request.client.host if request.client else ""
        if access.loopback_only and not _is_loopback(client_host):
            return _error(403, "admin API is served to loopback only")
        if access.hosts is not None and request.headers.get("host", "").lower() not in access.hosts:
            return _error(421, "Host does not name this endpoint")
        authorization = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(authorization, expected):
            return _error(401, "admin token required", {"WWW-Authenticate": "Bearer"})
        if request.method == "POST":
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                return _error(415, "Content-Type must be application/json")
        try:
            return await handler(request)
        except admin.AdminError as error:
            return _error(400, str(error))

    return wrapped


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, ValueError):
        raise admin.AdminError("body is not JSON") from None


class BodyLimit:
    """Refuses a request body over its path's limit with HTTP 413, before buffering it.

    The body is read here, counted as it arrives (a chunked body declares no length), and
    handed on whole, so no route can be made to buffer more than its limit.
    """

    def __init__(self, app: ASGIApp, limits: dict[str, int], default: int) -> None:
        self.app = app
        self.limits = limits
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _too_large(scope, receive, send, limit)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # waits for the disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = _error(413, f"body over {limit} bytes", {"Connection": "close"})
    await response(scope, receive, send)
