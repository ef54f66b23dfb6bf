"""Neuroglancer viewer states and links for proofreading tasks.

The state is the JSON Neuroglancer keeps in its URL (``{client}#!{json}``). Its global coordinate space has
the dimensions ``x``, ``y``, ``z`` with the voxel size in metres (Neuroglancer's convention:
``"x": [8e-09, "m"]`` for 8 nm), so ``position`` is in voxels (x, y, z); the task's point is shown at the
voxel's centre (``point + 0.5``). Segment ids are written as strings (uint64 exceeds JSON's 2^53).
The JSON is built here without importing the ``neuroglancer`` package (and never starts its server); the
tests check it round-trips through ``neuroglancer.ViewerState``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from connectomix.errors import InputError

if TYPE_CHECKING:
    from connectomix.flag.tasks import Task

Layout = Literal["4panel", "xy-3d", "xy", "3d"]
LAYOUTS: tuple[str, ...] = ("4panel", "xy-3d", "xy", "3d")
#: layer names used in every state (the web page and tests refer to them)
EM_LAYER = "em"
SEGMENTATION_LAYER = "segmentation"
POINTS_LAYER = "points"
#: characters left unescaped in the URL fragment (the same set as ``neuroglancer.to_url``)
_SAFE = "~@#$&()*!+=:;,.?/'"


def layer_source(source: str) -> str:
    """A Neuroglancer data source: ``http(s)://…`` is served as precomputed (``precomputed://http…``);
    anything with a Neuroglancer scheme (``precomputed://``, ``zarr://``, ``n5://``, …) is kept as is."""
    if not isinstance(source, str) or not source.strip():
        raise InputError(
            f"a layer source must be a URL such as precomputed://http://HOST/PATH, got {source!r}"
        )
    source = source.strip()
    if source.startswith(("http://", "https://")):
        return f"precomputed://{source}"
    if "://" not in source:
        raise InputError(f"a layer source needs a scheme (precomputed://, zarr://, http://), got {source!r}")
    return source


def viewer_state(
    task: Task,
    *,
    em_source: str | None,
    segmentation_source: str,
    segment_ids: Iterable[int] | None = None,
    zoom_nm_per_px: float = 8.0,
    projection_nm_per_px: float | None = None,
    resolution_nm_xyz: Sequence[float] = (8.0, 8.0, 8.0),
    layout: Layout = "4panel",
) -> dict[str, Any]:
    """The Neuroglancer state (JSON-ready dict) that shows ``task``.

    Parameters
    ----------
    task : the task; its ``point_xyz`` (voxels, x, y, z) becomes the position and its ``segment_ids`` the
        selected segments (unless ``segment_ids`` is given).
    em_source, segmentation_source : layer sources (``http(s)://`` URLs are read as precomputed); pass
        ``em_source=None`` for no image layer.
    zoom_nm_per_px : cross-section zoom, nanometres per screen pixel.
    projection_nm_per_px : 3-D view zoom (default: 8 × the cross-section zoom).
    resolution_nm_xyz : voxel size in nm, (x, y, z).
    layout : ``4panel`` (xy, xz, yz, 3-D), ``xy-3d``, ``xy`` or ``3d``.
    """
    resolution = _resolution(resolution_nm_xyz)
    if layout not in LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not zoom_nm_per_px > 0 or (projection_nm_per_px is not None and not projection_nm_per_px > 0):
        raise InputError(f"zoom must be positive nm per pixel, got {zoom_nm_per_px!r}")
    point = _point(task.point_xyz, "task point_xyz")
    ids = [int(i) for i in (task.segment_ids if segment_ids is None else segment_ids)]
    if any(i < 0 or i >= 2**64 for i in ids):
        raise InputError(f"segment ids must be uint64, got {ids}")
    dimensions = {axis: [r * 1e-9, "m"] for axis, r in zip("xyz", resolution, strict=True)}
    # Neuroglancer's scales count "canonical voxels" (the finest voxel size) per screen pixel.
    canonical_nm = min(resolution)
    projection = projection_nm_per_px if projection_nm_per_px is not None else 8.0 * zoom_nm_per_px
    layers: list[dict[str, Any]] = []
    if em_source is not None:
        layers.append({"type": "image", "source": layer_source(em_source), "name": EM_LAYER})
    layers.append(
        {
            "type": "segmentation",
            "source": layer_source(segmentation_source),
            "name": SEGMENTATION_LAYER,
            "segments": [str(i) for i in dict.fromkeys(ids) if i != 0],
            "selectedAlpha": 0.35,
        }
    )
    points = _evidence_points(task.evidence)
    if points:
        layers.append(
            {
                "type": "annotation",
                "source": {"url": "local://annotations", "transform": {"outputDimensions": dimensions}},
                "name": POINTS_LAYER,
                "annotations": points,
            }
        )
    return {
        "dimensions": dimensions,
        "position": [float(c) + 0.5 for c in point],
        "crossSectionScale": float(zoom_nm_per_px) / canonical_nm,
        "projectionScale": float(projection) / canonical_nm * 256.0,
        "layers": layers,
        "selectedLayer": {"layer": SEGMENTATION_LAYER, "visible": True},
        "layout": layout,
    }


def task_link(state: Mapping[str, Any], client_url: str) -> str:
    """``{client_url}#!{url-encoded JSON}``: the link that opens ``state`` in the client at ``client_url``
    (any fragment already on ``client_url`` is replaced)."""
    if not isinstance(client_url, str) or not client_url.startswith(("http://", "https://")):
        raise InputError(f"client_url must be an http(s) URL of a Neuroglancer client, got {client_url!r}")
    base = client_url.split("#", 1)[0]
    text = json.dumps(state, separators=(",", ":"), allow_nan=False)
    return f"{base}#!{urllib.parse.quote(text, safe=_SAFE)}"


def parse_link(link: str) -> dict[str, Any]:
    """The state in a Neuroglancer link (the inverse of :func:`task_link`). Raises InputError."""
    _, sep, fragment = link.partition("#!")
    if not sep:
        raise InputError(f"not a Neuroglancer state link (expected '...#!{{json}}'): {link[:80]!r}")
    try:
        state = json.loads(urllib.parse.unquote(fragment))
    except json.JSONDecodeError as exc:
        raise InputError(f"the link's state is not valid JSON: {exc}") from None
    if not isinstance(state, dict):
        raise InputError("the link's state must be a JSON object")
    return state


def _resolution(values: Sequence[float]) -> tuple[float, float, float]:
    try:
        resolution = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"resolution_nm_xyz must be 3 positive numbers, got {values!r}") from None
    if len(resolution) != 3 or not all(r > 0 and r < float("inf") for r in resolution):
        raise InputError(f"resolution_nm_xyz must be 3 positive numbers, got {values!r}")
    return resolution  # type: ignore[return-value]


def _point(values: Sequence[Any], name: str) -> tuple[int, int, int]:
    try:
        point = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be 3 integers (x, y, z) in voxels, got {values!r}") from None
    if len(point) != 3:
        raise InputError(f"{name} must be 3 integers (x, y, z) in voxels, got {values!r}")
    return point  # type: ignore[return-value]


def _evidence_points(evidence: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Point annotations for a split task's ``sources_xyz`` / ``sinks_xyz`` evidence (voxel centres)."""
    annotations: list[dict[str, Any]] = []
    for key in ("sources_xyz", "sinks_xyz"):
        values = (evidence or {}).get(key) or []
        for index, value in enumerate(values):
            try:
                point = _point(value, key)
            except InputError:
                continue
            annotations.append(
                {
                    "type": "point",
                    "id": f"{key.split('_')[0]}-{index}",
                    "point": [c + 0.5 for c in point],
                    "description": key.split("_")[0][:-1],
                }
            )
    return annotations


__all__ = ["LAYOUTS", "Layout", "layer_source", "parse_link", "task_link", "viewer_state"]
