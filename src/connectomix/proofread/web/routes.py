"""Routes of the proofreading JSON API.

======================================  ==========================================================
``GET  /health``                         liveness, no token
``GET  /api/me``                         the caller
``POST /api/tasks/next``                 claim the next task (200 with task, Neuroglancer state and link;
                                         204 when the queue is empty)
``GET  /api/tasks/{id}``                 a task with its Neuroglancer state and link
``POST /api/tasks/{id}/heartbeat``       renew the caller's lease
``POST /api/tasks/{id}/merge``           merge the task's two segments (EditLog.merge), complete the task
``POST /api/tasks/{id}/split``           split the task's segment between sources and sinks, complete it
``POST /api/tasks/{id}/skip``            give the task back (not offered to the caller again)
``POST /api/tasks/{id}/correct``         "correct as is": complete without an edit
``GET  /api/admin/stats``                queue statistics, edit count, per-user counts (admins)
``GET  /api/admin/users``                the users (admins)
======================================  ==========================================================

Acting on a task needs a live lease held by the caller (409 otherwise); the lease is renewed before the
edit, so an edit is never made for a task the caller no longer holds.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from connectomix.errors import ForbiddenError, InputError
from connectomix.proofread.neuroglancer import task_link, viewer_state
from connectomix.proofread.users import User
from connectomix.proofread.web.app import NEUROGLANCER_CLIENT_PATH, WebContext, context_of
from connectomix.proofread.web.models import (
    ActionOut,
    AdminStats,
    EditOut,
    ErrorOut,
    Health,
    Heartbeat,
    MergeIn,
    QueueStatsOut,
    SplitIn,
    TaskOut,
    TaskView,
    UserOut,
    UserStats,
)

_bearer = HTTPBearer(auto_error=False, description="API token from `cx users add NAME`.")
_header = APIKeyHeader(name="X-CX-Token", auto_error=False, description="API token (alternative header).")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "No token or an unknown/revoked token."},
    422: {"model": ErrorOut, "description": "Malformed request."},
}
_TASK_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    404: {"model": ErrorOut, "description": "No such task."},
    409: {"model": ErrorOut, "description": "The task is not held by the caller (or its lease ran out)."},
}


def current_user(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> User:
    """The user holding the request's token (401 otherwise)."""
    token = bearer.credentials if bearer is not None else header
    return context_of(request).users.authenticate(token)


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    """The caller, who must be an admin (403 otherwise)."""
    if not user.is_admin:
        raise ForbiddenError(f"user {user.name!r} is a {user.role}; this needs an admin")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
TaskId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Queue id of the task.")]
Context = Annotated[WebContext, Depends(context_of)]

health_router = APIRouter(tags=["health"])
api_router = APIRouter(prefix="/api", tags=["tasks"], responses=_ERRORS)
admin_router = APIRouter(
    prefix="/api/admin",
    tags=["admin"],
    dependencies=[Depends(admin_user)],
    responses={**_ERRORS, 403: {"model": ErrorOut, "description": "The caller is not an admin."}},
)


metrics_router = APIRouter(tags=["metrics"])


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics (admins)",
    dependencies=[Depends(admin_user)],
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(request: Request) -> Response:
    """This process's and the workspace's metrics (scrape with ``authorization: {credentials: TOKEN}``)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from connectomix.observe.exporter import exposition

    return Response(exposition(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)


@health_router.get("/health", response_model=Health, summary="Liveness")
def health() -> Health:
    return Health(status="ok")


@api_router.get("/me", response_model=UserOut, summary="The caller")
def me(user: CurrentUser) -> UserOut:
    return UserOut(**user.to_dict())  # type: ignore[arg-type]


@api_router.post(
    "/tasks/next",
    response_model=TaskView,
    summary="Claim the next task",
    responses={204: {"description": "The queue is empty."}},
)
def next_task(request: Request, ctx: Context, user: CurrentUser) -> Any:
    queued = ctx.queue.claim(user.name)
    if queued is None:
        return Response(status_code=204)
    return task_view(request, ctx, queued)


@api_router.get("/tasks/{task_id}", response_model=TaskView, summary="A task", responses=_TASK_ERRORS)
def get_task(task_id: TaskId, request: Request, ctx: Context, user: CurrentUser) -> TaskView:
    return task_view(request, ctx, ctx.queue.get(task_id))


@api_router.post(
    "/tasks/{task_id}/heartbeat", response_model=Heartbeat, summary="Renew the lease", responses=_TASK_ERRORS
)
def heartbeat(task_id: TaskId, ctx: Context, user: CurrentUser) -> Heartbeat:
    ctx.queue.get(task_id)
    return Heartbeat(task_id=str(task_id), lease_expires=ctx.queue.heartbeat(task_id, user.name))


@api_router.post(
    "/tasks/{task_id}/merge", response_model=ActionOut, summary="Merge and complete", responses=_TASK_ERRORS
)
def merge(
    task_id: TaskId, ctx: Context, user: CurrentUser, body: Annotated[MergeIn | None, Body()] = None
) -> ActionOut:
    body = body or MergeIn()
    queued = _hold(ctx, task_id, user)
    task = queued.task
    ids = tuple(body.segment_ids) if body.segment_ids is not None else tuple(task.segment_ids)
    if len(ids) != 2 or ids[0] == ids[1] or 0 in ids:
        raise InputError(
            f"a merge needs two different non-zero segment ids, got {[str(i) for i in ids]} "
            f"(task {task_id} is a {task.kind} task): send segment_ids in the body"
        )
    points = body.points_xyz or [tuple(p) for p in task.evidence.get("points_xyz") or []]
    with ctx.edit_lock:
        edit = ctx.edit_log.merge(int(ids[0]), int(ids[1]), user=user.name, points_xyz=points)
    done = ctx.queue.complete(task_id, user.name, _edit_result("merge", edit))
    return ActionOut(task=task_out(done), action="merge", edit=edit_out(edit))


@api_router.post(
    "/tasks/{task_id}/split", response_model=ActionOut, summary="Split and complete", responses=_TASK_ERRORS
)
def split(
    task_id: TaskId, ctx: Context, user: CurrentUser, body: Annotated[SplitIn | None, Body()] = None
) -> ActionOut:
    body = body or SplitIn()
    queued = _hold(ctx, task_id, user)
    task = queued.task
    segment = body.segment_id if body.segment_id is not None else _only_segment(task)
    sources = body.sources_xyz if body.sources_xyz is not None else task.evidence.get("sources_xyz")
    sinks = body.sinks_xyz if body.sinks_xyz is not None else task.evidence.get("sinks_xyz")
    if not sources or not sinks:
        raise InputError(
            f"a split needs sources_xyz and sinks_xyz (voxels x, y, z); task {task_id} suggests none: "
            f"send them in the body"
        )
    with ctx.edit_lock:
        edit = ctx.edit_log.split(
            int(segment), [tuple(p) for p in sources], [tuple(p) for p in sinks], user=user.name
        )
    done = ctx.queue.complete(task_id, user.name, _edit_result("split", edit))
    return ActionOut(task=task_out(done), action="split", edit=edit_out(edit))


@api_router.post("/tasks/{task_id}/skip", response_model=ActionOut, summary="Skip", responses=_TASK_ERRORS)
def skip(task_id: TaskId, ctx: Context, user: CurrentUser) -> ActionOut:
    ctx.queue.get(task_id)
    return ActionOut(task=task_out(ctx.queue.skip(task_id, user.name)), action="skip")


@api_router.post(
    "/tasks/{task_id}/correct", response_model=ActionOut, summary="Correct as is", responses=_TASK_ERRORS
)
def correct(task_id: TaskId, ctx: Context, user: CurrentUser) -> ActionOut:
    ctx.queue.get(task_id)
    done = ctx.queue.complete(task_id, user.name, {"action": "correct"})
    return ActionOut(task=task_out(done), action="correct")


@admin_router.get("/stats", response_model=AdminStats, summary="Queue and user statistics")
def admin_stats(ctx: Context) -> AdminStats:
    stats = ctx.queue.stats()
    edits = ctx.edit_log.edits()
    edits_by_user = Counter(edit.user for edit in edits)
    users = []
    for user in ctx.users.list():
        history = ctx.queue.history(user.name, limit=1_000_000)
        completed = sum(1 for t in history if t.state == "done" and t.claimed_by == user.name)
        users.append(
            UserStats(name=user.name, role=user.role, completed=completed, edits=edits_by_user[user.name])
        )
    return AdminStats(
        queue=QueueStatsOut(**{k: getattr(stats, k) for k in QueueStatsOut.model_fields}),
        edits=len(edits),
        version=int(ctx.edit_log.version),
        users=users,
    )


@admin_router.get("/users", response_model=list[UserOut], summary="The users")
def admin_users(ctx: Context) -> list[UserOut]:
    return [UserOut(**user.to_dict()) for user in ctx.users.list()]  # type: ignore[arg-type]


# -- helpers ----------------------------------------------------------------------------------------------
def _hold(ctx: WebContext, task_id: TaskId, user: User) -> Any:
    """The task, after renewing ``user``'s lease on it (404 unknown, 409 not held by ``user``)."""
    queued = ctx.queue.get(task_id)
    ctx.queue.heartbeat(task_id, user.name)
    return queued


def _only_segment(task: Any) -> int:
    if len(task.segment_ids) != 1:
        raise InputError(
            f"a split needs one segment; this {task.kind} task has {len(task.segment_ids)}: "
            f"send segment_id in the body"
        )
    return int(task.segment_ids[0])


def _edit_result(action: str, edit: Any) -> dict[str, Any]:
    return {
        "action": action,
        "edit_id": int(edit.id),
        "version": int(edit.version),
        "new_ids": [str(i) for i in edit.new_ids],
    }


def edit_out(edit: Any) -> EditOut:
    return EditOut(
        id=str(edit.id),
        version=int(edit.version),
        operation=str(edit.operation),
        user=str(edit.user),
        time=float(edit.time),
        new_ids=[str(i) for i in edit.new_ids],
        parent_ids=[str(i) for i in edit.parent_ids],
    )


def task_out(queued: Any) -> TaskOut:
    """A queued task as JSON (ids as strings)."""
    task = queued.task
    return TaskOut(
        id=str(queued.id),
        key=queued.key,
        kind=queued.kind,
        state=queued.state,
        priority=float(queued.priority),
        score=float(task.score),
        point_xyz=list(task.point_xyz),
        point_nm_xyz=list(task.point_nm_xyz),
        segment_ids=[str(i) for i in task.segment_ids],
        evidence=dict(task.evidence),
        claimed_by=queued.claimed_by,
        lease_expires=queued.lease_expires,
        enqueued_at=float(queued.enqueued_at),
        claimed_at=queued.claimed_at,
        completed_at=queued.completed_at,
        attempts=int(queued.attempts),
        result=queued.result,
    )


def task_view(request: Request, ctx: WebContext, queued: Any) -> TaskView:
    """The task with a Neuroglancer state whose sources and client are served by this app."""
    base = str(request.base_url).rstrip("/")
    state = viewer_state(
        queued.task,
        em_source=f"{base}/precomputed/{ctx.em_volume}" if ctx.em_volume else None,
        segmentation_source=f"{base}/precomputed/{ctx.segmentation_volume}",
        resolution_nm_xyz=ctx.resolution_nm_xyz,
        zoom_nm_per_px=min(ctx.resolution_nm_xyz),
    )
    return TaskView(
        task=task_out(queued),
        viewer_state=state,
        neuroglancer_url=task_link(state, f"{base}{NEUROGLANCER_CLIENT_PATH}"),
    )
