"""The precomputed server: info JSON, raw chunks read back exactly (by our client and by tensorstore's
Neuroglancer-precomputed driver over HTTP), fresh data after an edit, error statuses, the bundled client."""

from __future__ import annotations

import itertools
import socket
import threading
import time

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient

from connectomix.proofread import precomputed_server
from connectomix.proofread.precomputed_server import create_precomputed_app, neuroglancer_client_dir
from connectomix.volume import Box, open_volume

SHAPE_ZYX = (20, 36, 50)
OFFSET_ZYX = (3, 0, 5)


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    seg = rng.integers(0, 2**63, size=SHAPE_ZYX, dtype=np.uint64)
    seg[0, 0, 0] = 2**64 - 1  # the top bit survives
    raw = rng.integers(0, 256, size=SHAPE_ZYX, dtype=np.uint8)
    seg_url, raw_url = f"zarr://{tmp_path / 'seg.zarr'}", f"zarr://{tmp_path / 'raw.zarr'}"
    for url, data in ((seg_url, seg), (raw_url, raw)):
        volume = open_volume(
            url,
            "w",
            shape=SHAPE_ZYX,
            dtype=data.dtype,
            resolution=(40, 4, 8),
            chunks=(8, 16, 16),
            voxel_offset=OFFSET_ZYX,
        )
        volume.write(volume.bounds, data)
    return {"seg": (seg_url, seg), "em": (raw_url, raw)}


@pytest.fixture
def client(volumes):
    app = create_precomputed_app({name: url for name, (url, _) in volumes.items()})
    with TestClient(app) as test_client:
        yield test_client


def chunk_names(info: dict) -> list[tuple[str, Box]]:
    scale = info["scales"][0]
    size, offset, chunk = scale["size"], scale["voxel_offset"], scale["chunk_sizes"][0]
    names = []
    ranges = [range(o, o + s, c) for o, s, c in zip(offset, size, chunk, strict=True)]
    for x0, y0, z0 in itertools.product(*ranges):
        start = (x0, y0, z0)
        stop = tuple(min(a + c, o + s) for a, c, o, s in zip(start, chunk, offset, size, strict=True))
        name = "_".join(f"{a}-{b}" for a, b in zip(start, stop, strict=True))
        names.append((name, Box.from_xyz(start, stop)))
    return names


def assemble(client: TestClient, name: str) -> np.ndarray:
    info = client.get(f"/precomputed/{name}/info").json()
    scale = info["scales"][0]
    out = np.zeros(tuple(reversed(scale["size"])), dtype=np.dtype(info["data_type"]).newbyteorder("<"))
    origin = tuple(reversed(scale["voxel_offset"]))
    for chunk, box in chunk_names(info):
        response = client.get(f"/precomputed/{name}/{scale['key']}/{chunk}")
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == "*"
        # raw encoding: x fastest, then y, then z -> a (z, y, x) C-order array
        out[box.to_slices(origin)] = np.frombuffer(response.content, dtype=out.dtype).reshape(box.shape)
    return out


def test_info_json(client) -> None:
    response = client.get("/precomputed/seg/info")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    info = response.json()
    assert info["@type"] == "neuroglancer_multiscale_volume"
    assert (info["type"], info["data_type"], info["num_channels"]) == ("segmentation", "uint64", 1)
    (scale,) = info["scales"]
    assert scale["size"] == [50, 36, 20]  # x, y, z
    assert scale["resolution"] == [8.0, 4.0, 40.0]  # nm, x, y, z
    assert scale["voxel_offset"] == [5, 0, 3]
    assert scale["chunk_sizes"] == [[16, 16, 8]]
    assert scale["encoding"] == "raw" and scale["key"] == "8_4_40"
    em = client.get("/precomputed/em/info").json()
    assert (em["type"], em["data_type"]) == ("image", "uint8")


def test_chunks_read_back_exactly(client, volumes) -> None:
    for name, (_, data) in volumes.items():
        np.testing.assert_array_equal(assemble(client, name), data)


def test_partial_boxes_and_byte_order(client, volumes) -> None:
    data = volumes["seg"][1]
    response = client.get("/precomputed/seg/8_4_40/6-9_1-3_4-5")  # x 6..8, y 1..2, z 4
    assert response.status_code == 200
    values = np.frombuffer(response.content, dtype="<u8")
    expected = [data[4 - 3, y, x - 5] for y in (1, 2) for x in (6, 7, 8)]  # x fastest
    assert values.tolist() == [int(v) for v in expected]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/precomputed/nothing/info", 404),
        ("/precomputed/nothing/8_4_40/5-21_0-16_3-11", 404),
        ("/precomputed/seg/1_1_1/5-21_0-16_3-11", 404),  # unknown scale key
        ("/precomputed/seg/8_4_40/garbage", 400),
        ("/precomputed/seg/8_4_40/5-21_0-16", 400),
        ("/precomputed/seg/8_4_40/21-5_0-16_3-11", 400),  # stop before start
        ("/precomputed/seg/8_4_40/0-16_0-16_3-11", 400),  # x below the voxel offset
        ("/precomputed/seg/8_4_40/5-21_0-16_3-99", 400),  # past the end
        ("/precomputed/seg/8_4_40/5-21_0-16_3-99999999999999", 400),
        ("/precomputed/seg/8_4_40/-1-5_0-16_3-11", 400),
    ],
)
def test_bad_requests_are_4xx_never_500(client, path, status) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json()["detail"]


def test_versioned_source_serves_the_new_version(tmp_path, volumes) -> None:
    url, data = volumes["seg"]
    state = {"version": 0}
    app = create_precomputed_app({"seg": lambda: (url, state["version"])})
    with TestClient(app) as client:
        before = client.get("/precomputed/seg/8_4_40/5-21_0-16_3-11").content
        np.testing.assert_array_equal(assemble(client, "seg"), data)
        # an edit rewrites the volume in place and bumps the version
        volume = open_volume(url, "r+")
        volume.write(Box((3, 0, 5), (11, 16, 21)), np.full((8, 16, 16), 77, dtype=np.uint64))
        state["version"] = 1
        after = client.get("/precomputed/seg/8_4_40/5-21_0-16_3-11").content
        assert after != before
        assert set(np.frombuffer(after, dtype="<u8").tolist()) == {77}


def test_neuroglancer_client_is_served(client, monkeypatch) -> None:
    root = neuroglancer_client_dir()
    if root is None:
        pytest.skip("the neuroglancer package's client is not installed")
    response = client.get("/neuroglancer/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/neuroglancer/v/connectomix/"
    response = client.get("/neuroglancer/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (root / "index.html").read_text()
    script = next(root.glob("main.*.js")).name
    assert f'src="{script}"' in response.text
    asset = client.get(f"/neuroglancer/v/connectomix/{script}")
    assert asset.status_code == 200 and asset.headers["content-type"].startswith("application/javascript")
    assert client.get("/neuroglancer/v/connectomix/..%2Fserver.py").status_code == 404
    assert client.get("/neuroglancer/v/connectomix/nothing.js").status_code == 404
    monkeypatch.setattr(precomputed_server, "EVENT_STREAM_SECONDS", 0.2)
    with client.stream("GET", "/neuroglancer/events/connectomix?c=1&gc=0") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        assert b"".join(events.iter_bytes()).startswith(b": connectomix")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_tensorstore_reads_the_served_volume(volumes) -> None:
    """An independent client of the format: tensorstore's neuroglancer_precomputed driver over HTTP."""
    ts = pytest.importorskip("tensorstore")
    app = create_precomputed_app({name: url for name, (url, _) in volumes.items()})
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        for name, (_, data) in volumes.items():
            spec = {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "http", "base_url": f"http://127.0.0.1:{port}/precomputed/{name}/"},
            }
            store = ts.open(spec, read=True).result()
            # tensorstore indexes precomputed volumes (x, y, z, channel) in global coordinates
            assert list(store.domain.inclusive_min[:3]) == [5, 0, 3]
            array = store[..., 0].read().result()
            np.testing.assert_array_equal(np.transpose(array, (2, 1, 0)), data)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()
