"""The proofreading page in a real headless Chromium: log in with a token, claim a task, press ``m``, and
find the merge in the edit log and the task done. Skipped where Chromium or chromedriver is missing."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from connectomix.flag.tasks import Task
from connectomix.proofread.db import open_database
from connectomix.proofread.edits import EditLog
from connectomix.proofread.queue import TaskQueue
from connectomix.proofread.users import Users
from connectomix.proofread.web import create_app
from connectomix.volume import open_volume

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 20.0

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()) or shutil.which("chromium") is None,
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)",
)


@pytest.fixture
def workspace(tmp_path):
    """Two touching segments (1 | 2 along x) with one merge task, and a proofreader's token."""
    seg = np.zeros((8, 16, 32), dtype=np.uint64)
    seg[:, :, :16], seg[:, :, 16:] = 1, 2
    seg_url = f"zarr://{tmp_path / 'seg.zarr'}"
    volume = open_volume(
        seg_url, "w", shape=seg.shape, dtype=seg.dtype, resolution=(8, 8, 8), chunks=(8, 16, 16)
    )
    volume.write(volume.bounds, seg)
    db = open_database(f"sqlite:///{tmp_path / 'cx.db'}")
    log = EditLog.create(db, tmp_path / "ws", seg_url, name="seg")
    queue = TaskQueue(db)
    task = Task.create("merge", (15, 8, 4), (1, 2), 0.9, evidence={"points_xyz": [[15, 8, 4], [16, 8, 4]]})
    queue.enqueue(task)
    token = Users(db).add("alice", "proofreader")
    yield {"db": db, "dir": tmp_path / "ws", "log": log, "queue": queue, "token": token}
    db.dispose()


@pytest.fixture
def server(workspace):
    """The app under uvicorn on 127.0.0.1 (a free port) in a background thread; stopped afterwards."""
    app = create_app(workspace["db"], workspace["dir"], edit_log="seg")
    requested: list[str] = []

    @app.middleware("http")
    async def record(request, call_next):
        requested.append(request.url.path)
        return await call_next(request)

    workspace["requested"] = requested
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cx-test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(WAIT_S)
    yield browser
    browser.quit()


def wait_text(driver, element_id: str, needle: str) -> str:
    """Wait until the element's text contains ``needle``; returns the text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        text = d.find_element(By.ID, element_id).text
        return text if needle in text else False

    try:
        return WebDriverWait(driver, WAIT_S).until(check)
    except Exception:
        status = driver.find_element(By.ID, "status").text
        pytest.fail(f"#{element_id} never showed {needle!r}; #status: {status!r}")


def test_log_in_claim_and_merge_with_the_hotkey(server, driver, workspace) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{server}/")
    driver.find_element(By.ID, "token").send_keys(workspace["token"])
    driver.find_element(By.ID, "login").click()
    wait_text(driver, "status", "logged in as alice")
    assert driver.execute_script("return localStorage.getItem('cx-token')") == workspace["token"]

    driver.find_element(By.ID, "next").click()
    wait_text(driver, "status", "claimed")
    task_text = driver.find_element(By.ID, "task").text
    assert "merge" in task_text and "1, 2" in task_text
    link = driver.find_element(By.ID, "ng-link")
    assert link.get_attribute("target") == "_blank"
    assert link.get_attribute("href").startswith(f"{server}/neuroglancer/v/connectomix/#!")
    task_id = int(task_text.split("#", 1)[1].split()[0])
    assert workspace["queue"].get(task_id).claimed_by == "alice"

    driver.find_element(By.TAG_NAME, "body").send_keys("m")
    status = wait_text(driver, "status", "merged")
    edits = workspace["log"].edits()
    assert len(edits) == 1 and edits[0].operation == "merge" and edits[0].user == "alice"
    assert f"edit {edits[0].id}" in status
    done = workspace["queue"].get(task_id)
    assert done.state == "done" and done.result["edit_id"] == edits[0].id

    # the queue is now empty: the page says so instead of failing
    driver.find_element(By.TAG_NAME, "body").send_keys("n")
    wait_text(driver, "status", "queue empty")


def test_the_task_link_opens_in_the_bundled_neuroglancer(server, driver, workspace) -> None:
    """The link of a claimed task loads the local Neuroglancer client, which reads its state from the URL
    and fetches the segmentation's info and chunks from this app's precomputed server."""
    import httpx
    from selenium.webdriver.support.ui import WebDriverWait

    from connectomix.proofread.precomputed_server import neuroglancer_client_dir

    if neuroglancer_client_dir() is None:
        pytest.skip("the neuroglancer package's client is not installed")
    headers = {"Authorization": f"Bearer {workspace['token']}"}
    view = httpx.post(f"{server}/api/tasks/next", headers=headers, timeout=WAIT_S).json()
    driver.get(view["neuroglancer_url"])

    def loaded(_driver) -> list[str] | bool:
        # Neuroglancer fetches in a web worker, so the server's log is the witness, not the page's.
        chunks = [path for path in workspace["requested"] if path.startswith("/precomputed/seg/8_8_8/")]
        return chunks if "/precomputed/seg/info" in workspace["requested"] and chunks else False

    try:
        WebDriverWait(driver, WAIT_S).until(loaded)
    except Exception:
        body = driver.find_element("tag name", "body").text[:300]
        pytest.fail(f"Neuroglancer fetched no chunks; requests {workspace['requested']}; page {body!r}")
    layers = driver.execute_script("return window.viewer.layerManager.managedLayers.map((l) => l.name)")
    assert "segmentation" in layers
    segments = driver.execute_script(
        "const layer = window.viewer.layerManager.getLayerByName('segmentation').layer;"
        "return Array.from(layer.displayState.segmentationGroupState.value.visibleSegments, String)"
    )
    assert sorted(segments) == ["1", "2"]
