"""Serve connectomix volumes as Neuroglancer precomputed over HTTP, and the bundled Neuroglancer client.

Routes (a FastAPI router; :func:`create_precomputed_app` wraps it in an app of its own):

``GET /precomputed/{name}/info``
    Neuroglancer's multiscale-volume info: one scale, ``raw`` encoding, sizes/offsets in voxels (x, y, z),
    resolution in nm (x, y, z).
``GET /precomputed/{name}/{key}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}``
    One chunk (global voxel coordinates, stop exclusive), raw-encoded: little-endian values with x varying
    fastest, i.e. the bytes of the (z, y, x) C-order array.
``GET /neuroglancer/``
    The Neuroglancer client shipped inside the ``neuroglancer`` Python package. That build expects to live
    under ``…/v/{token}/`` (it is the Python-integration build), so ``/neuroglancer/`` redirects to
    ``/neuroglancer/v/connectomix/`` (browsers keep the ``#!{state}`` fragment across the redirect); when the
    URL carries a state fragment the client takes its state from it. ``/neuroglancer/events/{token}`` answers
    its server-sent-event connection with an idle stream.

Every data response carries ``Access-Control-Allow-Origin: *``. A volume is registered under a name with
either a fixed URL (opened once; reads go through the shared chunk cache) or a callable returning
``(url, version)``: the volume is reopened whenever the version changes (the edit log's segmentation, so a
proofreader sees their own edit on the next chunk request). Bad chunk names and out-of-range boxes answer
400, unknown volumes or scale keys 404, never 500 for bad input.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse

from connectomix.errors import CxError, InputError, NotFoundError
from connectomix.volume import Box, Volume, open_volume

CORS = {"Access-Control-Allow-Origin": "*"}
#: the largest chunk one request may ask for (voxels); Neuroglancer asks for ``chunk_sizes`` boxes.
MAX_CHUNK_VOXELS = 1 << 24
#: Neuroglancer chunk edge cap (voxels per axis), whatever the storage chunks are.
MAX_CHUNK_EDGE = 128
NEUROGLANCER_TOKEN = "connectomix"
CHUNK_PATTERN = re.compile(r"^(\d{1,12})-(\d{1,12})_(\d{1,12})-(\d{1,12})_(\d{1,12})-(\d{1,12})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_STATIC_NAME = re.compile(r"^[a-z0-9][a-zA-Z0-9_\-.]*\.(?:js|map|css|wasm|html)$")
_MIME = {
    ".css": "text/css",
    ".js": "application/javascript",
    ".html": "text/html",
    ".map": "application/json",
    ".wasm": "application/wasm",
}
#: how long an idle event stream to the Neuroglancer client stays open before it reconnects (seconds)
EVENT_STREAM_SECONDS = 25.0

VersionedUrl = Callable[[], tuple[str, Hashable]]


@dataclass
class _Entry:
    source: str | VersionedUrl
    kind: str | None
    volume: Volume | None = None
    version: Hashable = None


class VolumeRegistry:
    """Named volumes to serve. Thread-safe; volumes are opened lazily on first request."""

    def __init__(self, volumes: Mapping[str, str | VersionedUrl] | None = None) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        for name, source in (volumes or {}).items():
            self.add(name, source)

    def add(self, name: str, source: str | VersionedUrl, *, kind: str | None = None) -> None:
        """Serve ``source`` (an ``open_volume`` URL, or a callable returning ``(url, version)``) as
        ``name``; ``kind`` (``image`` or ``segmentation``) overrides the volume's own."""
        if not NAME_PATTERN.match(name):
            raise InputError(f"volume name must be letters, digits, '_', '.', '-', got {name!r}")
        if kind not in (None, "image", "segmentation"):
            raise InputError(f"kind must be image or segmentation, got {kind!r}")
        with self._lock:
            self._entries[name] = _Entry(source, kind)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> tuple[Volume, str]:
        """The open volume called ``name`` and its kind; NotFoundError for an unknown name."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise NotFoundError(
                    f"no volume {name!r} is served (served: {', '.join(self.names()) or 'none'})"
                )
            if isinstance(entry.source, str):
                if entry.volume is None:
                    entry.volume = open_volume(entry.source)
            else:
                url, version = entry.source()
                if entry.volume is None or version != entry.version or entry.volume.url != url:
                    volume = open_volume(url)
                    volume.cached = False  # each version is read straight from storage, never stale
                    entry.volume, entry.version = volume, version
            return entry.volume, entry.kind or entry.volume.kind


def scale_key(volume: Volume) -> str:
    """The scale's key: the voxel size in nm, ``X_Y_Z``."""
    return "_".join(f"{r:g}" for r in volume.resolution_xyz)


def served_dtype(volume: Volume, kind: str) -> np.dtype:
    """The little-endian dtype a volume is served as (Neuroglancer's precomputed data types)."""
    dtype = volume.dtype
    if kind == "segmentation":
        return np.dtype("<u4") if dtype in (np.uint8, np.uint16, np.uint32) else np.dtype("<u8")
    if dtype == np.bool_:
        return np.dtype("<u1")
    if dtype.kind == "f":
        return np.dtype("<f4")
    if dtype.kind in "iu" and dtype.itemsize <= 4:
        return dtype.newbyteorder("<")
    return np.dtype("<u8") if dtype.kind == "u" else np.dtype("<i4") if dtype.kind == "i" else np.dtype("<f4")


def chunk_sizes_xyz(volume: Volume) -> list[int]:
    """Neuroglancer chunk edge per axis (x, y, z): the storage chunk, capped to :data:`MAX_CHUNK_EDGE`."""
    return [
        max(1, min(int(c), MAX_CHUNK_EDGE, int(s)))
        for c, s in zip(volume.chunks[::-1], volume.shape[::-1], strict=True)
    ]


def info_json(volume: Volume, kind: str) -> dict[str, Any]:
    """The precomputed ``info`` of ``volume`` served as ``kind`` (sizes and offsets x, y, z voxels; nm)."""
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": kind,
        "data_type": served_dtype(volume, kind).name,
        "num_channels": 1,
        "scales": [
            {
                "key": scale_key(volume),
                "size": [int(s) for s in volume.shape[::-1]],
                "resolution": [float(r) for r in volume.resolution_xyz],
                "chunk_sizes": [chunk_sizes_xyz(volume)],
                "encoding": "raw",
                "voxel_offset": [int(o) for o in volume.voxel_offset[::-1]],
            }
        ],
    }


def parse_chunk_name(text: str) -> Box:
    """``x0-x1_y0-y1_z0-z1`` (voxels, stop exclusive) → a (z, y, x) Box. Raises InputError."""
    match = CHUNK_PATTERN.match(text)
    if match is None:
        raise InputError(f"chunk name must look like x0-x1_y0-y1_z0-z1 (voxels), got {text[:60]!r}")
    x0, x1, y0, y1, z0, z1 = (int(v) for v in match.groups())
    if x1 <= x0 or y1 <= y0 or z1 <= z0:
        raise InputError(f"chunk {text!r} is empty: each stop must exceed its start")
    return Box.from_xyz((x0, y0, z0), (x1, y1, z1))


def encode_raw(array_zyx: np.ndarray, dtype: np.dtype) -> bytes:
    """Precomputed ``raw`` chunk bytes: x fastest, then y, then z (the (z, y, x) C-order bytes)."""
    return np.ascontiguousarray(array_zyx, dtype=dtype).tobytes(order="C")


def read_chunk(volume: Volume, kind: str, key: str, chunk: str) -> bytes:
    """The raw-encoded bytes of one chunk; NotFoundError for a wrong scale key, InputError for a bad or
    out-of-range chunk name."""
    if key != scale_key(volume):
        raise NotFoundError(f"no scale {key!r} (this volume has one scale, {scale_key(volume)!r})")
    box = parse_chunk_name(chunk)
    if not volume.bounds.contains(box):
        raise InputError(
            f"chunk {chunk!r} lies outside the volume: x, y, z from {list(volume.bounds.start_xyz)} "
            f"to {list(volume.bounds.stop_xyz)} (exclusive)"
        )
    if box.size > MAX_CHUNK_VOXELS:
        raise InputError(f"chunk {chunk!r} has {box.size} voxels; at most {MAX_CHUNK_VOXELS} per request")
    return encode_raw(volume.read(box), served_dtype(volume, kind))


def _error(exc: CxError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, InputError) else 500
    if status == 500:  # storage trouble (corrupt data, unsupported source): say so, as a 503
        status = 503
    return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status, headers=CORS)


def precomputed_router(registry: VolumeRegistry) -> APIRouter:
    """The ``/precomputed/…`` routes over ``registry``."""
    router = APIRouter(prefix="/precomputed", tags=["precomputed"])

    @router.get("/{name}/info", summary="Neuroglancer precomputed info of a served volume")
    def info(name: str) -> Response:
        try:
            volume, kind = registry.get(name)
            return JSONResponse(info_json(volume, kind), headers=CORS)
        except CxError as exc:
            return _error(exc)

    @router.get("/{name}/{key}/{chunk}", summary="One raw-encoded chunk (x0-x1_y0-y1_z0-z1, voxels)")
    def chunk_data(name: str, key: str, chunk: str) -> Response:
        try:
            volume, kind = registry.get(name)
            data = read_chunk(volume, kind, key, chunk)
        except CxError as exc:
            return _error(exc)
        headers = {**CORS, "Cache-Control": "no-cache"}
        return Response(data, media_type="application/octet-stream", headers=headers)

    return router


def neuroglancer_client_dir() -> Path | None:
    """The Neuroglancer client bundled in the ``neuroglancer`` package (``static/client``), found without
    importing the package; None when it is not installed or not built."""
    try:
        spec = importlib.util.find_spec("neuroglancer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        client = Path(location) / "static" / "client"
        if (client / "index.html").is_file():
            return client
    return None


def neuroglancer_router(client_dir: Path | None = None) -> APIRouter:
    """The ``/neuroglancer/…`` routes serving the bundled client (404s when it is missing)."""
    router = APIRouter(prefix="/neuroglancer", tags=["neuroglancer"], include_in_schema=False)
    root = client_dir if client_dir is not None else neuroglancer_client_dir()
    viewer_path = f"/neuroglancer/v/{NEUROGLANCER_TOKEN}/"

    @router.get("")
    @router.get("/")
    def index_redirect() -> Response:
        return RedirectResponse(viewer_path, status_code=307)

    @router.get("/v/{token}/")
    @router.get("/v/{token}/{path}")
    def static(token: str, path: str = "index.html") -> Response:
        if root is None:
            return JSONResponse({"detail": "the neuroglancer package's client is not installed"}, 404)
        if not _STATIC_NAME.match(path) or not (root / path).is_file():
            return JSONResponse({"detail": f"no client file {path[:60]!r}"}, status_code=404)
        media = _MIME.get(Path(path).suffix, "application/octet-stream")
        return FileResponse(root / path, media_type=media, headers={"Cache-Control": "no-cache"})

    @router.get("/events/{token}")
    async def events(token: str, request: Request) -> Response:
        # The Python-integration client keeps an event stream to its server for state pushed from
        # Python; this server pushes nothing, so the stream stays idle and closes after a while.
        async def idle() -> AsyncIterator[bytes]:
            yield b": connectomix\n\n"
            deadline = time.monotonic() + EVENT_STREAM_SECONDS
            while time.monotonic() < deadline and not await request.is_disconnected():
                await asyncio.sleep(0.5)

        return StreamingResponse(
            idle(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post("/action/{token}")
    @router.post("/state/{token}")
    def ignored(token: str) -> Response:
        return Response(status_code=204)

    @router.post("/credentials/{token}")
    def credentials(token: str) -> Response:
        return JSONResponse({"detail": "no credentials are served"}, status_code=403)

    return router


def create_precomputed_app(
    volumes: Mapping[str, str | VersionedUrl] | VolumeRegistry, *, client_dir: Path | None = None
) -> FastAPI:
    """A stand-alone ASGI app serving ``volumes`` under ``/precomputed/`` and the client under
    ``/neuroglancer/``."""
    registry = volumes if isinstance(volumes, VolumeRegistry) else VolumeRegistry(volumes)
    app = FastAPI(title="connectomix precomputed server")
    app.include_router(precomputed_router(registry))
    app.include_router(neuroglancer_router(client_dir))
    app.state.registry = registry
    return app


__all__ = [
    "CORS",
    "VolumeRegistry",
    "create_precomputed_app",
    "encode_raw",
    "info_json",
    "neuroglancer_client_dir",
    "neuroglancer_router",
    "parse_chunk_name",
    "precomputed_router",
    "read_chunk",
    "scale_key",
    "served_dtype",
]
