"""The proofreading web API end to end on a small synthetic workspace: auth, claiming, merge/split/skip/
correct through the real queue and edit log, error statuses, and no 500 for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from connectomix.flag.tasks import Task
from connectomix.proofread.db import open_database
from connectomix.proofread.edits import EditLog
from connectomix.proofread.neuroglancer import parse_link
from connectomix.proofread.queue import TaskQueue
from connectomix.proofread.users import Users
from connectomix.proofread.web import create_app
from connectomix.volume import open_volume

SHAPE_ZYX = (16, 32, 48)
RESOLUTION_ZYX = (16.0, 8.0, 8.0)


def synthetic_segmentation() -> np.ndarray:
    """Three touching slabs along x: 1 (x < 16), 2 (16 <= x < 32), 3 (x >= 32); background row at y = 0."""
    seg = np.zeros(SHAPE_ZYX, dtype=np.uint64)
    seg[:, 1:, :16] = 1
    seg[:, 1:, 16:32] = 2
    seg[:, 1:, 32:] = 3
    return seg


def build_workspace(tmp_path, db_url: str) -> dict:
    seg = synthetic_segmentation()
    raw = np.full(SHAPE_ZYX, 200, dtype=np.uint8)
    raw[:, :, 39:41] = 20  # a dark membrane inside segment 3: where a split should cut
    urls = {"seg": f"zarr://{tmp_path / 'seg.zarr'}", "raw": f"zarr://{tmp_path / 'raw.zarr'}"}
    for key, data in (("seg", seg), ("raw", raw)):
        volume = open_volume(
            urls[key], "w", shape=SHAPE_ZYX, dtype=data.dtype, resolution=RESOLUTION_ZYX, chunks=(16, 16, 16)
        )
        volume.write(volume.bounds, data)
    db = open_database(db_url)
    workspace = tmp_path / "workspace"
    log = EditLog.create(db, workspace, urls["seg"], raw_url=urls["raw"], name="seg")
    res_xyz = RESOLUTION_ZYX[::-1]
    tasks = [
        Task.create(
            "merge",
            (15, 16, 8),
            (1, 2),
            0.9,
            resolution_nm_xyz=res_xyz,
            evidence={"points_xyz": [[15, 16, 8], [16, 16, 8]]},
        ),
        Task.create("merge", (31, 16, 8), (2, 3), 0.8, resolution_nm_xyz=res_xyz),
        Task.create(
            "split",
            (40, 16, 8),
            (3,),
            0.7,
            resolution_nm_xyz=res_xyz,
            evidence={"sources_xyz": [[34, 16, 8]], "sinks_xyz": [[46, 16, 8]]},
        ),
    ]
    queue = TaskQueue(db)
    assert queue.enqueue_many(tasks) == 3
    users = Users(db)
    tokens = {
        name: users.add(name, role)
        for name, role in [("alice", "proofreader"), ("bob", "proofreader"), ("root", "admin")]
    }
    return {"db": db, "workspace": workspace, "log": log, "queue": queue, "tokens": tokens, "tasks": tasks}


@pytest.fixture
def world(tmp_path):
    world = build_workspace(tmp_path, f"sqlite:///{tmp_path / 'cx.db'}")
    app = create_app(world["db"], world["workspace"], edit_log="seg", lease_seconds=60)
    with TestClient(app) as client:
        world["client"] = client
        yield world
    world["db"].dispose()


def auth(world, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {world['tokens'][name]}"}


def claim(world, name: str) -> dict:
    response = world["client"].post("/api/tasks/next", headers=auth(world, name))
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_page_need_no_token(world) -> None:
    client = world["client"]
    assert client.get("/health").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="token"', 'id="login"', 'id="next"', 'id="task"', 'id="status"'):
        assert element in page.text


def test_tokens_authenticate(world) -> None:
    client = world["client"]
    assert client.get("/api/me").status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/me", headers={"Authorization": "Basic abc"}).status_code == 401
    assert client.post("/api/tasks/next").status_code == 401
    response = client.get("/api/me", headers=auth(world, "alice"))
    assert response.status_code == 200 and response.json()["name"] == "alice"
    response = client.get("/api/me", headers={"X-CX-Token": world["tokens"]["root"]})
    assert response.json()["role"] == "admin"
    Users(world["db"]).revoke("bob")
    assert client.get("/api/me", headers=auth(world, "bob")).status_code == 401


def test_claim_and_merge(world) -> None:
    client, log, queue = world["client"], world["log"], world["queue"]
    view = claim(world, "alice")
    task = view["task"]
    assert task["kind"] == "merge" and task["segment_ids"] == ["1", "2"] and task["claimed_by"] == "alice"
    assert isinstance(task["id"], str) and task["point_xyz"] == [15, 16, 8]
    state = view["viewer_state"]
    assert parse_link(view["neuroglancer_url"]) == state
    assert view["neuroglancer_url"].startswith("http://testserver/neuroglancer/v/connectomix/#!")
    sources = {layer["name"]: layer["source"] for layer in state["layers"]}
    assert sources == {
        "em": "precomputed://http://testserver/precomputed/em",
        "segmentation": "precomputed://http://testserver/precomputed/seg",
    }
    assert state["dimensions"]["z"] == [16e-9, "m"]
    before = client.get("/precomputed/seg/8_8_16/0-16_0-16_0-16").content
    assert set(np.frombuffer(before, dtype="<u8").tolist()) == {0, 1}

    response = client.post(f"/api/tasks/{task['id']}/merge", headers=auth(world, "alice"))
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["action"] == "merge" and out["task"]["state"] == "done"
    edits = log.edits()
    assert len(edits) == 1 and edits[0].operation == "merge" and edits[0].user == "alice"
    assert out["edit"]["id"] == str(edits[0].id)
    done = queue.get(int(task["id"]))
    assert done.state == "done" and done.result["action"] == "merge" and done.result["edit_id"] == edits[0].id
    # the segmentation served to Neuroglancer shows the merge: 1 and 2 now carry one id
    left = np.frombuffer(client.get("/precomputed/seg/8_8_16/0-16_0-16_0-16").content, dtype="<u8")
    right = np.frombuffer(client.get("/precomputed/seg/8_8_16/16-32_0-16_0-16").content, dtype="<u8")
    assert (set(left.tolist()) - {0}) == (set(right.tolist()) - {0})
    # acting again on a finished task conflicts
    assert client.post(f"/api/tasks/{task['id']}/merge", headers=auth(world, "alice")).status_code == 409


def test_split_skip_correct_and_heartbeat(world) -> None:
    client, log, queue = world["client"], world["log"], world["queue"]
    first = claim(world, "alice")["task"]
    response = client.post(f"/api/tasks/{first['id']}/heartbeat", headers=auth(world, "alice"))
    assert response.status_code == 200 and response.json()["lease_expires"] > 0
    response = client.post(f"/api/tasks/{first['id']}/skip", headers=auth(world, "alice"))
    assert response.status_code == 200 and response.json()["action"] == "skip"
    second = claim(world, "alice")["task"]
    assert second["id"] != first["id"]  # a skipped task is not offered to the same user again
    response = client.post(f"/api/tasks/{second['id']}/correct", headers=auth(world, "alice"))
    assert response.status_code == 200 and queue.get(int(second["id"])).result == {"action": "correct"}
    third = claim(world, "alice")["task"]
    assert third["kind"] == "split"
    response = client.post(f"/api/tasks/{third['id']}/split", headers=auth(world, "alice"))
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["edit"]["operation"] == "split" and len(out["edit"]["new_ids"]) >= 1
    assert [e.operation for e in log.edits()] == ["split"]
    assert queue.get(int(third["id"])).state == "done"
    # bob still gets the task alice skipped
    assert claim(world, "bob")["task"]["id"] == first["id"]


def test_unknown_task_is_404(world) -> None:
    client = world["client"]
    for method, path in [
        ("GET", "/api/tasks/999"),
        ("POST", "/api/tasks/999/merge"),
        ("POST", "/api/tasks/999/skip"),
        ("POST", "/api/tasks/999/heartbeat"),
    ]:
        response = client.request(method, path, headers=auth(world, "alice"))
        assert response.status_code == 404, (path, response.text)
        assert "999" in response.json()["detail"]


def test_acting_on_someone_elses_task_is_409(world) -> None:
    client = world["client"]
    task = claim(world, "alice")["task"]
    for action in ("merge", "split", "skip", "correct", "heartbeat"):
        response = client.post(f"/api/tasks/{task['id']}/{action}", headers=auth(world, "bob"))
        assert response.status_code == 409, (action, response.text)
    assert world["log"].edits() == []
    assert world["queue"].get(int(task["id"])).claimed_by == "alice"
    assert client.get(f"/api/tasks/{task['id']}", headers=auth(world, "bob")).status_code == 200


def test_admin_routes_need_the_admin_role(world) -> None:
    client = world["client"]
    assert client.get("/api/admin/stats", headers=auth(world, "alice")).status_code == 403
    assert client.get("/api/admin/users", headers=auth(world, "bob")).status_code == 403
    assert client.get("/api/admin/stats").status_code == 401
    task = claim(world, "alice")["task"]
    client.post(f"/api/tasks/{task['id']}/merge", headers=auth(world, "alice"))
    stats = client.get("/api/admin/stats", headers=auth(world, "root"))
    assert stats.status_code == 200
    body = stats.json()
    assert body["queue"]["done"] == 1 and body["queue"]["depth"] == 2 and body["edits"] == 1
    per_user = {u["name"]: (u["completed"], u["edits"]) for u in body["users"]}
    assert per_user == {"alice": (1, 1), "bob": (0, 0), "root": (0, 0)}
    users = client.get("/api/admin/users", headers=auth(world, "root")).json()
    assert [u["name"] for u in users] == ["alice", "bob", "root"]
    assert all("token" not in key for u in users for key in u)


def test_malformed_json_is_422(world) -> None:
    client = world["client"]
    task = claim(world, "alice")["task"]
    response = client.post(
        f"/api/tasks/{task['id']}/merge",
        content=b'{"points_xyz": [1,',
        headers={**auth(world, "alice"), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]
    response = client.post(
        f"/api/tasks/{task['id']}/merge", json={"points_xyz": [[1, 2]]}, headers=auth(world, "alice")
    )
    assert response.status_code == 422 and "points_xyz" in response.json()["detail"]
    assert world["log"].edits() == []


def test_empty_queue_is_204(world) -> None:
    client = world["client"]
    for _ in range(3):
        claim(world, "alice")
    response = client.post("/api/tasks/next", headers=auth(world, "alice"))
    assert response.status_code == 204 and response.content == b""


BAD_INPUTS: list[tuple[str, str, object]] = [
    ("GET", "/api/tasks/abc", None),
    ("GET", "/api/tasks/-1", None),
    ("GET", "/api/tasks/99999999999999999999999999", None),
    ("POST", "/api/tasks/1/merge", []),
    ("POST", "/api/tasks/1/merge", "text"),
    ("POST", "/api/tasks/1/merge", {"segment_ids": ["x", "y"]}),
    ("POST", "/api/tasks/1/merge", {"segment_ids": [1]}),
    ("POST", "/api/tasks/1/merge", {"segment_ids": [1, 1]}),
    ("POST", "/api/tasks/1/merge", {"segment_ids": ["-5", "2"]}),
    ("POST", "/api/tasks/1/merge", {"segment_ids": [1, 2**70]}),
    ("POST", "/api/tasks/1/merge", {"segment_ids": [1, 999]}),
    ("POST", "/api/tasks/1/merge", {"points_xyz": [[1, 2, 3, 4]]}),
    ("POST", "/api/tasks/1/merge", {"unknown": 1}),
    ("POST", "/api/tasks/1/split", {}),
    ("POST", "/api/tasks/1/split", {"sources_xyz": [[1, 1, 1]], "sinks_xyz": [[1, 1, 1]]}),
    ("POST", "/api/tasks/1/split", {"segment_id": 1, "sources_xyz": [[999, 1, 1]], "sinks_xyz": [[2, 2, 2]]}),
    ("POST", "/api/tasks/1/split", {"sources_xyz": "x"}),
    ("GET", "/api/admin/stats", None),
    ("DELETE", "/api/tasks/1", None),
    ("GET", "/precomputed/seg/8_8_16/0-99_0-16_0-16", None),
    ("GET", "/precomputed/seg/8_8_16/x", None),
    ("GET", "/precomputed/../../etc/passwd", None),
    ("GET", "/neuroglancer/v/x/..%2F..%2Fpyproject.toml", None),
]


def test_no_route_answers_500_for_bad_input(world) -> None:
    client = world["client"]
    claim(world, "alice")  # task 1 is held, so bodies reach the edit log
    for method, path, body in BAD_INPUTS:
        kwargs = {"json": body} if body is not None else {}
        response = client.request(method, path, headers=auth(world, "alice"), **kwargs)
        assert 400 <= response.status_code < 500, (method, path, body, response.status_code, response.text)
    assert world["log"].edits() == []


def test_openapi_documents_the_api(world) -> None:
    schema = world["client"].get("/openapi.json").json()
    for path in [
        "/health",
        "/api/me",
        "/api/tasks/next",
        "/api/tasks/{task_id}",
        "/api/tasks/{task_id}/merge",
        "/api/tasks/{task_id}/split",
        "/api/tasks/{task_id}/skip",
        "/api/tasks/{task_id}/correct",
        "/api/tasks/{task_id}/heartbeat",
        "/api/admin/stats",
        "/api/admin/users",
    ]:
        assert path in schema["paths"], path
    assert {"HTTPBearer", "APIKeyHeader"} <= set(schema["components"]["securitySchemes"])
    assert "MergeIn" in schema["components"]["schemas"] and "TaskView" in schema["components"]["schemas"]
    assert schema["paths"]["/api/admin/stats"]["get"]["tags"] == ["admin"]


def test_postgresql_backend(tmp_path, postgres_url) -> None:
    world = build_workspace(tmp_path, postgres_url)
    app = create_app(world["db"], world["workspace"])
    with TestClient(app) as client:
        world["client"] = client
        task = claim(world, "bob")["task"]
        response = client.post(f"/api/tasks/{task['id']}/merge", headers=auth(world, "bob"))
        assert response.status_code == 200, response.text
        assert world["queue"].get(int(task["id"])).state == "done" and len(world["log"].edits()) == 1
    world["db"].dispose()


def test_cx_serve_runs_the_app_with_uvicorn(tmp_path, monkeypatch) -> None:
    import uvicorn

    from connectomix.cli.serve import serve_command

    db_url = f"sqlite:///{tmp_path / 'cx.db'}"
    world = build_workspace(tmp_path, db_url)
    world["db"].dispose()
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    serve_command(port=8799, host="127.0.0.1", workspace=world["workspace"], db=db_url, edit_log="seg")
    ((app, kwargs),) = calls
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8799
    with TestClient(app) as client:
        response = client.get("/api/me", headers=auth(world, "root"))
        assert response.status_code == 200 and response.json()["name"] == "root"
