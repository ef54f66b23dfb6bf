"""Synapse tables: import (CAVE/MICrONS and neuPrint/navis styles), attach to a segmentation, keep current
across proofreading.

The canonical table (a pandas DataFrame) has one row per synapse:

==============================  ===============================================================
``synapse_id``                  int64 (CAVE ``id``, navis ``connector_id``; else the row number)
``pre_id``, ``post_id``         uint64 segment ids of the pre- and postsynaptic cell; 0 = unknown
``pre_x``, ``pre_y``, ``pre_z``     float64 position of the presynaptic site, **x, y, z** order
``post_x``, ``post_y``, ``post_z``  float64 position of the postsynaptic site (NaN where not known)
``size``                        float64 synapse size in the source's unit (NaN where not given)
==============================  ===============================================================

plus any other columns of the source, unchanged. Positions stay (x, y, z), in the source's unit; they are
turned into (z, y, x) voxel indices only to look ids up, by :func:`positions_to_voxels` through
:func:`connectomix.volume.box.points_xyz_to_zyx`.

Accepted inputs:

- **CAVE / MICrONS** (``pre_pt_root_id``, ``post_pt_root_id``, ``pre_pt_position``, ``post_pt_position``,
  ``size``, optional ``id``): positions as 3-element lists (Parquet), as text ``"[x, y, z]"`` or
  ``"[x y z]"`` (CSV), or split into ``pre_pt_position_x`` / ``_y`` / ``_z`` columns.
- **neuPrint / navis connector tables** (``connector_id``, ``type``, ``x``, ``y``, ``z``): the sites of one
  neuron; ``type`` ``pre`` (or 0) is an output site (the neuron is presynaptic: ``pre_id`` = the neuron,
  position in ``pre_*``), ``post`` (or 1) an input site. The neuron's id comes from ``neuron_id=`` or a
  ``bodyId``/``neuron``/``skeleton_id`` column, else stays 0; the partner stays 0 until
  :func:`attach_segments` looks it up.
- The canonical columns themselves (what :func:`write_synapses` writes).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from connectomix.analyze.lookup import LabelSource, lookup_ids, outside_mask
from connectomix.errors import CorruptDataError, InputError, NotFoundError
from connectomix.volume.box import points_xyz_to_zyx, xyz_to_zyx

POSITION_COLUMNS = {side: [f"{side}_{axis}" for axis in "xyz"] for side in ("pre", "post")}
CANONICAL_COLUMNS: tuple[str, ...] = (
    "synapse_id",
    "pre_id",
    "post_id",
    *POSITION_COLUMNS["pre"],
    *POSITION_COLUMNS["post"],
    "size",
)
CAVE_REQUIRED = ("pre_pt_root_id", "post_pt_root_id", "pre_pt_position", "post_pt_position")
NAVIS_REQUIRED = ("connector_id", "type", "x", "y", "z")
_NEURON_COLUMNS = ("bodyId", "neuron", "skeleton_id")
Style = Literal["auto", "cave", "navis", "canonical"]


# -- parsing helpers --------------------------------------------------------------------------------------
def parse_ids(values: Any, column: str) -> np.ndarray:
    """A column of segment ids as uint64; InputError naming the column and a bad value otherwise.

    Accepts integers, integral floats and decimal text (ids up to 2^64 - 1); missing values are refused.
    """
    series = pd.Series(values)
    if series.isna().any():
        raise InputError(f"column {column!r}: {int(series.isna().sum())} missing ids (expected integers)")
    kind = series.dtype.kind
    if kind in "iu":
        array = series.to_numpy()
        if kind == "i" and (array < 0).any():
            raise InputError(f"column {column!r}: ids must be non-negative, found {int(array.min())}")
        return array.astype(np.uint64)
    if kind == "f":
        array = series.to_numpy()
        bad = ~np.isfinite(array) | (array != np.round(array)) | (array < 0)
        if bad.any():
            raise InputError(f"column {column!r}: ids must be non-negative integers, found {array[bad][0]!r}")
        if (array >= 2.0**53).any():
            raise InputError(f"column {column!r}: ids above 2^53 stored as floats have lost digits")
        return array.astype(np.uint64)
    text = series.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"\d{1,20}")
    if bad.any():
        raise InputError(f"column {column!r}: ids must be non-negative integers, found {text[bad].iloc[0]!r}")
    try:
        return np.array([int(v) for v in text], dtype=np.uint64)
    except OverflowError:
        raise InputError(f"column {column!r}: ids must be below 2^64") from None


def _parse_positions(frame: pd.DataFrame, column: str) -> np.ndarray:
    """``(N, 3)`` float64 x, y, z from a list column, text ``[x, y, z]`` or ``column_x/_y/_z``."""
    split = [f"{column}_{axis}" for axis in "xyz"]
    if all(c in frame.columns for c in split):
        return np.stack([_numbers(frame[c], c) for c in split], axis=1)
    if column not in frame.columns:
        raise InputError(f"missing column {column!r} (or {', '.join(split)})")
    values = frame[column]
    rows = []
    for value in values.tolist():
        if isinstance(value, str):
            parts = [p for p in re.split(r"[\s,\[\]()]+", value) if p]
        elif value is None or (isinstance(value, float) and np.isnan(value)):
            parts = ["nan"] * 3
        else:
            parts = list(np.asarray(value).ravel())
        if len(parts) != 3:
            raise InputError(f"column {column!r}: expected 3 coordinates x, y, z per row, got {value!r}")
        rows.append(parts)
    try:
        return np.array(rows, dtype=np.float64).reshape(-1, 3)
    except ValueError:
        raise InputError(f"column {column!r}: coordinates must be numbers, e.g. [1200, 3400, 560]") from None


def _numbers(values: pd.Series, column: str) -> np.ndarray:
    try:
        return pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"column {column!r}: expected numbers") from None


def _require_finite(positions: np.ndarray, column: str) -> None:
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise InputError(f"column {column!r}: {int(bad.sum())} rows without a finite x, y, z position")


def detect_style(columns: Sequence[str]) -> str:
    """``cave``, ``navis`` or ``canonical`` from the column names; InputError if none fits."""
    present = set(columns)
    has_cave_ids = {"pre_pt_root_id", "post_pt_root_id"} <= present
    if has_cave_ids or "pre_pt_position" in present:
        return "cave"
    if {"connector_id", "type"} <= present:
        return "navis"
    if {"pre_id", "post_id"} <= present:
        return "canonical"
    raise InputError(
        "unrecognised synapse table: expected CAVE columns (" + ", ".join(CAVE_REQUIRED) + ", size) or "
        "navis columns (" + ", ".join(NAVIS_REQUIRED) + f"); found {sorted(present)}"
    )


def _missing(frame: pd.DataFrame, required: Sequence[str], style: str) -> None:
    def has(column: str) -> bool:
        if column in frame.columns:
            return True
        return column.endswith("_position") and all(f"{column}_{a}" in frame.columns for a in "xyz")

    absent = [c for c in required if not has(c)]
    if absent:
        raise InputError(
            f"{style} synapse table lacks column(s) {', '.join(absent)}; found {list(frame.columns)}"
        )


# -- normalising ------------------------------------------------------------------------------------------
def normalise_synapses(
    frame: pd.DataFrame, *, style: Style = "auto", neuron_id: int | None = None
) -> pd.DataFrame:
    """A synapse table in any accepted style → the canonical table (see the module docstring)."""
    chosen = detect_style(list(frame.columns)) if style == "auto" else style
    if chosen == "cave":
        _missing(frame, CAVE_REQUIRED, "CAVE")
        pre_xyz = _parse_positions(frame, "pre_pt_position")
        post_xyz = _parse_positions(frame, "post_pt_position")
        _require_finite(pre_xyz, "pre_pt_position")
        _require_finite(post_xyz, "post_pt_position")
        ids = parse_ids(frame["id"], "id").astype(np.int64) if "id" in frame.columns else None
        pre_id = parse_ids(frame["pre_pt_root_id"], "pre_pt_root_id")
        post_id = parse_ids(frame["post_pt_root_id"], "post_pt_root_id")
        used = {"id", "pre_pt_root_id", "post_pt_root_id", "pre_pt_position", "post_pt_position", "size"}
        used |= {f"{c}_{a}" for c in ("pre_pt_position", "post_pt_position") for a in "xyz"}
    elif chosen == "navis":
        _missing(frame, NAVIS_REQUIRED, "navis")
        kind = frame["type"].astype(str).str.strip().str.lower().map({"pre": 0, "0": 0, "post": 1, "1": 1})
        if kind.isna().any():
            bad = frame["type"][kind.isna()].iloc[0]
            raise InputError(f"column 'type': expected pre or post (or 0 / 1), found {bad!r}")
        xyz = np.stack([_numbers(frame[a], a) for a in "xyz"], axis=1)
        _require_finite(xyz, "x, y, z")
        ids = parse_ids(frame["connector_id"], "connector_id").astype(np.int64)
        owner = _owner_ids(frame, neuron_id)
        is_pre = kind.to_numpy() == 0
        pre_id = np.where(is_pre, owner, np.uint64(0)).astype(np.uint64)
        post_id = np.where(is_pre, np.uint64(0), owner).astype(np.uint64)
        pre_xyz = np.where(is_pre[:, None], xyz, np.nan)
        post_xyz = np.where(is_pre[:, None], np.nan, xyz)
        used = {"connector_id", "type", "x", "y", "z", *_NEURON_COLUMNS}
    elif chosen == "canonical":
        _missing(frame, ("pre_id", "post_id"), "canonical")
        ids = parse_ids(frame["synapse_id"], "synapse_id").astype(np.int64) if "synapse_id" in frame else None
        pre_id, post_id = parse_ids(frame["pre_id"], "pre_id"), parse_ids(frame["post_id"], "post_id")
        pre_xyz, post_xyz = (
            np.stack(
                [_numbers(frame[c], c) if c in frame else np.full(len(frame), np.nan) for c in cols], axis=1
            ).reshape(-1, 3)
            for cols in (POSITION_COLUMNS["pre"], POSITION_COLUMNS["post"])
        )
        used = set(CANONICAL_COLUMNS)
    else:
        raise InputError(f"synapse table style must be auto, cave, navis or canonical, got {style!r}")
    table = pd.DataFrame(
        {"synapse_id": np.arange(len(frame), dtype=np.int64) if ids is None else ids},
    )
    table["pre_id"], table["post_id"] = pre_id, post_id
    for side, xyz in (("pre", pre_xyz), ("post", post_xyz)):
        for axis, column in enumerate(POSITION_COLUMNS[side]):
            table[column] = xyz[:, axis]
    table["size"] = _numbers(frame["size"], "size") if "size" in frame.columns else np.nan
    for column in frame.columns:
        if column not in used and column not in table.columns:
            table[column] = frame[column].to_numpy()
    return table


def _owner_ids(frame: pd.DataFrame, neuron_id: int | None) -> np.ndarray:
    if neuron_id is not None:
        return np.full(len(frame), parse_ids([neuron_id], "neuron_id")[0], np.uint64)
    for column in _NEURON_COLUMNS:
        if column in frame.columns:
            return parse_ids(frame[column], column)
    return np.zeros(len(frame), np.uint64)


# -- files ------------------------------------------------------------------------------------------------
def read_synapses(path: str | Path, *, style: Style = "auto", neuron_id: int | None = None) -> pd.DataFrame:
    """Read a CSV (``,`` or tab separated) or Parquet synapse table and normalise it.

    Id columns are read as text first, so ids above 2^53 keep every digit.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"synapse table not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            frame = pq.read_table(path).to_pandas()
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptDataError(f"{path}: not a readable Parquet file ({exc})") from None
    elif suffix in (".csv", ".tsv", ".txt"):
        id_columns = {c: str for c in ("pre_pt_root_id", "post_pt_root_id", "pre_id", "post_id", "bodyId")}
        try:
            frame = pd.read_csv(path, sep=None, engine="python", dtype=id_columns)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise CorruptDataError(f"{path}: not a readable CSV table ({exc})") from None
    else:
        raise InputError(f"{path}: expected a .csv, .tsv or .parquet synapse table")
    try:
        return normalise_synapses(frame, style=style, neuron_id=neuron_id)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def write_synapses(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a canonical synapse table as Parquet, atomically (temporary name, then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in CANONICAL_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"not a canonical synapse table: lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- positions → voxels -----------------------------------------------------------------------------------
def positions_to_voxels(
    positions_xyz: np.ndarray, source: Any, voxel_size_nm_xyz: Sequence[float] | None = None
) -> np.ndarray:
    """(x, y, z) positions → (z, y, x) int64 voxel indices of ``source`` (a volume or an edit log).

    ``voxel_size_nm_xyz``: the size in nm of one position unit along x, y, z (e.g. ``(1, 1, 1)`` for nm,
    ``(4, 4, 40)`` for MICrONS voxels); None when positions already are the source's global voxels. A
    position maps to the voxel that contains it (floor).
    """
    points_zyx = points_xyz_to_zyx(np.asarray(positions_xyz, dtype=np.float64))
    if voxel_size_nm_xyz is not None:
        scale_zyx = np.array(xyz_to_zyx(tuple(float(v) for v in voxel_size_nm_xyz)), dtype=np.float64)
        if not (np.isfinite(scale_zyx).all() and (scale_zyx > 0).all()):
            raise InputError(
                f"position voxel size must be 3 positive numbers (nm), got {voxel_size_nm_xyz!r}"
            )
        resolution = getattr(source, "resolution", None)
        if resolution is None:
            resolution = source.grid.resolution
        points_zyx = points_zyx * scale_zyx / np.array(resolution, dtype=np.float64)
    return np.floor(points_zyx).astype(np.int64)


def _side_positions(table: pd.DataFrame, side: str) -> tuple[np.ndarray, np.ndarray]:
    xyz = table[POSITION_COLUMNS[side]].to_numpy(dtype=np.float64)
    return xyz, np.isfinite(xyz).all(axis=1)


def attach_segments(
    table: pd.DataFrame,
    segmentation: Any,
    *,
    voxel_size_nm_xyz: Sequence[float] | None = None,
    outside: Literal["error", "background"] = "error",
    progress: bool = False,
) -> pd.DataFrame:
    """Set ``pre_id`` / ``post_id`` from the segment under each synapse's pre / post position.

    ``segmentation``: a volume (see :func:`connectomix.volume.open_volume`) or an edit log (its current
    version). Rows without a position on a side keep that side's id. ``outside``: positions outside the
    volume raise InputError (``error``) or get id 0 (``background``).
    """
    if outside not in ("error", "background"):
        raise InputError(f"outside must be 'error' or 'background', got {outside!r}")
    labels = LabelSource.of(segmentation)
    result = table.copy()
    for side in ("pre", "post"):
        xyz, has = _side_positions(table, side)
        voxels = positions_to_voxels(xyz[has], segmentation, voxel_size_nm_xyz)
        off = outside_mask(labels, voxels)
        if off.any() and outside == "error":
            first = xyz[has][off][0]
            raise InputError(
                f"{int(off.sum())} {side}synaptic positions lie outside {labels.name} "
                f"(x, y, z voxels [{labels.bounds.start_xyz}, {labels.bounds.stop_xyz})), "
                f"e.g. {tuple(float(v) for v in first)} (x, y, z)"
            )
        ids = np.zeros(voxels.shape[0], np.uint64)
        ids[~off] = lookup_ids(labels, voxels[~off], progress=progress)
        column = result[f"{side}_id"].to_numpy().copy()
        column[has] = ids
        result[f"{side}_id"] = column
    return result


# -- keeping up with proofreading --------------------------------------------------------------------------
@dataclass(frozen=True)
class RemapResult:
    """The remapped table and what happened: ids changed by lineage alone (``by_lineage``: merges), by a
    position lookup among the descendants (``by_position``: splits), and ``unresolved`` (set to 0)."""

    table: pd.DataFrame
    by_lineage: int
    by_position: int
    unresolved: int

    def to_dict(self) -> dict[str, int]:
        return {"by_lineage": self.by_lineage, "by_position": self.by_position, "unresolved": self.unresolved}


def remap_synapses(
    table: pd.DataFrame, log: Any, *, voxel_size_nm_xyz: Sequence[float] | None = None
) -> RemapResult:
    """Bring a synapse table's ids up to an edit log's current version, through the ids' lineage.

    For each id that is no longer current: if exactly one current id descends from it (a merge), the id is
    replaced by it; if several do (a split), each synapse takes the one of them under its position in the
    current version (positions as for :func:`attach_segments`); a synapse whose position lies in none of
    them, or that has no position, is unresolved and gets id 0. An id made by an edit that was later undone
    maps back, the same way, to that edit's parents (or to what now descends from them). Ids that no edit
    touched are left as they are.
    """
    edits = log.edits()
    touched = {int(i) for edit in edits for i in (*edit.new_ids, *edit.parent_ids)}
    # lineage leaves out undone edits, so keep their parents to map the undone edit's new ids back
    undone_parents: dict[int, tuple[int, ...]] = {}
    for edit in edits:
        if edit.operation in ("merge", "split") and edit.undone:
            for new in edit.new_ids:
                undone_parents[int(new)] = tuple(int(p) for p in edit.parent_ids)
    current: dict[int, bool] = {}

    def is_current(segment: int) -> bool:
        if segment not in current:
            current[segment] = bool(log.lineage(segment).current)
        return current[segment]

    def current_descendants(segment: int) -> list[int]:
        return [d for d in log.lineage(segment).descendants if is_current(d)]

    def candidates_of(segment: int) -> list[int]:
        lineage = log.lineage(segment)
        found = [d for d in lineage.descendants if is_current(d)]
        if not found:
            found = [a for a in lineage.ancestors if is_current(a)]
        if not found:
            for parent in undone_parents.get(segment, ()):
                found += [parent] if is_current(parent) else current_descendants(parent)
        return sorted(set(found))

    result = table.copy()
    by_lineage = by_position = unresolved = 0
    for side in ("pre", "post"):
        ids = result[f"{side}_id"].to_numpy().astype(np.uint64).copy()
        xyz, has = _side_positions(result, side)
        for old in sorted({int(v) for v in np.unique(ids)} & touched):
            if old == 0 or is_current(old):
                continue
            candidates = candidates_of(old)
            rows = np.flatnonzero(ids == np.uint64(old))
            if len(candidates) == 1:
                ids[rows] = candidates[0]
                by_lineage += rows.size
                continue
            found = np.zeros(rows.size, np.uint64)
            located = has[rows]
            if candidates and located.any():
                voxels = positions_to_voxels(xyz[rows[located]], log, voxel_size_nm_xyz)
                inside = ~outside_mask(log, voxels)
                values = np.zeros(voxels.shape[0], np.uint64)
                values[inside] = lookup_ids(log, voxels[inside])
                found[located] = np.where(np.isin(values, candidates), values, np.uint64(0))
            ids[rows] = found
            by_position += int(np.count_nonzero(found))
            unresolved += int(rows.size - np.count_nonzero(found))
        result[f"{side}_id"] = ids
    return RemapResult(result, by_lineage, by_position, unresolved)


__all__ = [
    "CANONICAL_COLUMNS",
    "POSITION_COLUMNS",
    "RemapResult",
    "attach_segments",
    "detect_style",
    "normalise_synapses",
    "parse_ids",
    "positions_to_voxels",
    "read_synapses",
    "remap_synapses",
    "write_synapses",
]
