"""The proofreading web app: ``create_app(db, workspace)`` → a FastAPI app.

What it serves:

* ``GET /`` the proofreading page (token log-in, next task, hotkeys ``m`` ``s`` ``x`` ``d``, admin stats);
* ``/metrics`` Prometheus metrics (:mod:`connectomix.observe`; an admin token, like the admin API);
* ``/api/…`` the JSON API (see :mod:`connectomix.proofread.web.routes`; OpenAPI at ``/docs``), every route
  but ``GET /health`` authenticated by ``Authorization: Bearer TOKEN`` (or ``X-CX-Token: TOKEN``);
* ``/precomputed/{name}/…`` the EM volume (``em``) and the edit log's current segmentation (named after
  the edit log) as Neuroglancer precomputed, and ``/neuroglancer/`` the Neuroglancer client.

The page, ``/health``, the Neuroglancer client and the precomputed volumes are served without a token
(Neuroglancer cannot send one); keep the server on a loopback address unless the network is trusted.

Errors: the package's exceptions become HTTP statuses (InputError 422, NotFoundError 404, ConflictError 409,
AuthenticationError 401, ForbiddenError 403, any other CxError 503) with ``{"detail": message, "error":
type}``; malformed JSON and schema violations answer 422 with a one-line ``detail``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from connectomix.errors import (
    AuthenticationError,
    ConflictError,
    CxError,
    ForbiddenError,
    InputError,
    NotFoundError,
)
from connectomix.proofread.db import Database, open_database
from connectomix.proofread.precomputed_server import VolumeRegistry, neuroglancer_router, precomputed_router
from connectomix.proofread.users import Users
from connectomix.proofread.web.page import PAGE_HTML

EM_VOLUME = "em"
NEUROGLANCER_CLIENT_PATH = "/neuroglancer/v/connectomix/"
_STATUS: tuple[tuple[type[CxError], int], ...] = (
    (AuthenticationError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (InputError, 422),
)


@dataclass
class WebContext:
    """What the routes share: the database and the objects over it (thread-safe; one per app)."""

    db: Database
    workspace: Path
    users: Users
    queue: Any  # connectomix.proofread.queue.TaskQueue
    edit_log: Any  # connectomix.proofread.edits.EditLog
    registry: VolumeRegistry
    segmentation_volume: str
    em_volume: str | None
    resolution_nm_xyz: tuple[float, float, float]
    #: serialises edits made through this app (the edit log also guards itself with transactions)
    edit_lock: threading.Lock


def status_of(exc: CxError) -> int:
    """The HTTP status for a package error (503 for storage trouble such as corrupt data)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 503


def create_app(
    db: Database | str | Path,
    workspace: Path | str,
    *,
    edit_log: str = "seg",
    em_url: str | None = None,
    lease_seconds: float = 600.0,
) -> FastAPI:
    """The proofreading app over the workspace database ``db`` and the edit log called ``edit_log`` in
    ``workspace``. ``em_url`` (any ``open_volume`` URL) is the EM shown under the segmentation (default: the
    edit log's raw volume, if it has one). ``lease_seconds``: how long a claimed task stays held without a
    heartbeat. Raises NotFoundError when the edit log does not exist."""
    from connectomix.proofread.edits import EditLog
    from connectomix.proofread.queue import TaskQueue

    database = open_database(db)
    workspace = Path(workspace)
    log = EditLog.open(database, workspace, edit_log)
    registry = VolumeRegistry()
    registry.add(edit_log, lambda: (log.current_url, log.version), kind="segmentation")
    em = em_url if em_url is not None else getattr(log, "raw_url", None)
    if em:
        registry.add(EM_VOLUME, em, kind="image")
    segmentation, _ = registry.get(edit_log)
    context = WebContext(
        db=database,
        workspace=workspace,
        users=Users(database),
        queue=TaskQueue(database, lease_seconds=lease_seconds),
        edit_log=log,
        registry=registry,
        segmentation_volume=edit_log,
        em_volume=EM_VOLUME if em else None,
        resolution_nm_xyz=tuple(float(r) for r in segmentation.resolution_xyz),  # type: ignore[arg-type]
        edit_lock=threading.Lock(),
    )

    from connectomix import __version__
    from connectomix.observe.exporter import build_registry
    from connectomix.proofread.web.routes import admin_router, api_router, health_router, metrics_router

    app = FastAPI(
        title="connectomix proofreading",
        version=__version__,
        description=(
            "Claim proofreading tasks, merge/split/skip/confirm them, and open them in Neuroglancer. "
            "Authenticate with `Authorization: Bearer TOKEN` (tokens: `cx users add NAME`)."
        ),
        openapi_tags=[
            {"name": "health", "description": "Liveness (no token)."},
            {"name": "tasks", "description": "The proofreader's work: claim, act, heartbeat."},
            {"name": "admin", "description": "Queue and user statistics (admins only)."},
            {"name": "metrics", "description": "Prometheus metrics at /metrics (admin token)."},
            {"name": "precomputed", "description": "Volumes as Neuroglancer precomputed (no token)."},
        ],
    )
    app.state.context = context
    app.state.metrics_registry = build_registry(database)
    _install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_router)
    app.include_router(admin_router)
    app.include_router(metrics_router)
    app.include_router(precomputed_router(registry))
    app.include_router(neuroglancer_router())

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML, headers={"Cache-Control": "no-cache"})

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CxError)
    async def cx_error(_request: Request, exc: CxError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return JSONResponse(
            {"detail": _validation_message(errors), "error": "InputError", "errors": _jsonable(errors)}, 422
        )


def _validation_message(errors: Any) -> str:
    parts = []
    for error in list(errors)[:5]:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            return f"malformed JSON body: {reason}".strip().rstrip(":")
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


def _jsonable(errors: Any) -> Any:
    try:
        return jsonable_encoder(errors)
    except (TypeError, ValueError):
        return [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))} for e in errors]


def context_of(request: Request) -> WebContext:
    """The app's :class:`WebContext`."""
    return request.app.state.context


__all__ = ["WebContext", "context_of", "create_app", "status_of"]
