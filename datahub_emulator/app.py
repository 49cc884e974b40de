"""HTTP routes of the local DataHub endpoint (Starlette)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from datahub_emulator import admin
from datahub_emulator.faults import FaultConfig
from datahub_emulator.service import UploadService
from datahub_emulator.store import Store

UPLOAD_PATH = "/datahub/v1/upload"

Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    db_path: Path,
    faults: FaultConfig,
    seed: int | None = None,
    *,
    admin_loopback_only: bool = True,
) -> Starlette:
    """The endpoint as an ASGI app; the database opens at startup and closes at shutdown."""
    holder: dict[str, UploadService] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        store = Store(db_path)
        holder["service"] = UploadService(store, faults, seed)
        try:
            yield
        finally:
            store.close()

    def service() -> UploadService:
        return holder["service"]

    async def upload(request: Request) -> Response:
        body = await request.body()
        svc = service()
        # Everything up to the answer is synchronous, so arrival and admission share
        # one clock reading and the throttle sees requests in arrival order.
        answer = svc.handle(body, request.headers, time.time())
        delay = svc.injector.latency_s()
        if delay:
            await asyncio.sleep(delay)
        return JSONResponse(answer)

    async def register(request: Request) -> Response:
        registration = admin.parse_registration(await _json(request))
        service().store.register(registration)
        service().on_registrations_changed()
        return JSONResponse({"registered": registration.client_id})

    async def revoke(request: Request) -> Response:
        institution_id, data_uuid = admin.parse_revoke(await _json(request))
        return JSONResponse({"revoked": service().store.revoke(institution_id, data_uuid)})

    async def get_faults(_: Request) -> Response:
        return JSONResponse(service().injector.config.to_json())

    async def post_faults(request: Request) -> Response:
        patch = await _json(request)
        if not isinstance(patch, dict):
            raise admin.AdminError("body must be a JSON object")
        injector = service().injector
        try:
            injector.config = injector.config.merged(patch)
        except ValueError as error:
            raise admin.AdminError(str(error)) from None
        return JSONResponse(injector.config.to_json())

    async def stats(_: Request) -> Response:
        return JSONResponse(service().stats())

    async def reconcile(request: Request) -> Response:
        data_uuid, ids = admin.parse_reconcile(await _json(request))
        result = service().store.reconcile(data_uuid, ids)
        return JSONResponse(
            {
                "expected": result.expected,
                "stored": result.stored,
                "missing": result.missing,
                "unexpected": result.unexpected,
                "missing_indexes": result.missing_indexes,
            }
        )

    async def reset(_: Request) -> Response:
        service().reset()
        return JSONResponse({"reset": True})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True})

    def _admin(handler: Handler) -> Handler:
        return _admin_route(handler, loopback_only=admin_loopback_only)

    routes = [
        Route(UPLOAD_PATH, upload, methods=["POST"]),
        Route("/admin/register", _admin(register), methods=["POST"]),
        Route("/admin/revoke", _admin(revoke), methods=["POST"]),
        Route("/admin/faults", _admin(get_faults), methods=["GET"]),
        Route("/admin/faults", _admin(post_faults), methods=["POST"]),
        Route("/admin/stats", _admin(stats), methods=["GET"]),
        Route("/admin/reconcile", _admin(reconcile), methods=["POST"]),
        Route("/admin/reset", _admin(reset), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    return address.is_loopback


def _admin_route(handler: Handler, *, loopback_only: bool) -> Handler:
    """Guard an admin handler: loopback callers only (it has no authentication), and a bad
    payload becomes HTTP 400 with a message that names no secret."""

    async def wrapped(request: Request) -> Response:
        client_host = request.client.host if request.client else ""
        if loopback_only and not _is_loopback(client_host):
            return JSONResponse({"error": "admin API is served to loopback only"}, status_code=403)
        try:
            return await handler(request)
        except admin.AdminError as error:
            return JSONResponse({"error": str(error)}, status_code=400)

    return wrapped


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, ValueError):
        raise admin.AdminError("body is not JSON") from None
