"""The versioned edit log (CAVE / PyChunkedGraph style): merge, split, paint, undo and redo as explicit
operations in an append-only log, ids with lineage, and every version readable.

Version 0 is the imported segmentation; each edit creates the next version. Ids follow CAVE: a merge of
``a`` and ``b`` makes a new id ``n`` (lineage a→n, b→n); a split of ``s`` makes two new ids (s→n1, s→n2); a
paint of unassigned voxels into ``s`` (the FFN stopped early and left part of a neurite unassigned) makes one
new id for ``s`` and the painted voxels (s→n);
ids are never reused. Undo reverts the latest merge or split still in effect and is itself logged (a new
version equal to the one before the reverted edit, the old ids current again); redo re-applies the most
recently undone edit (with the same new ids) while no new merge or split has been made since.

Lineage follows the edits in effect: links made by an undone edit do not count (after undoing merge(a, b) →
n, ``a`` has no descendants and ``n`` has no ancestors and is not current) until a redo brings them back.

Storage and crash safety: see :mod:`connectomix.proofread.versions`. Edits are serialised by the database:
each runs in one transaction that first locks the log's row (``BEGIN IMMEDIATE`` on SQLite,
``SELECT … FOR UPDATE`` on PostgreSQL), so edits from several processes never interleave. Reads do not take
the edit lock; a read of the current version that races an edit may see the chunks of that edit partly
written.

Coordinates: user points are ``(x, y, z)`` voxels in the volume's global coordinates; boxes and arrays are
``(z, y, x)``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import zarr
from sqlalchemy.engine import Connection

from connectomix.errors import ConflictError, CorruptDataError, InputError, NotFoundError
from connectomix.proofread.db import Database, open_database
from connectomix.proofread.edit_store import (
    Change,
    Edit,
    EditStore,
    Lineage,
    Operation,
    Plan,
    State,
    edit_from_row,
    find_row,
    insert_log,
    log_version,
)
from connectomix.proofread.split import CONTEXT_VOXELS, boundary_landscape, raw_landscape, seeded_split
from connectomix.proofread.versions import (
    MAX_ID,
    MIGRATIONS,
    Grid,
    Triple,
    change_blob,
    check_id,
    chunk_changes,
    chunks_at,
    decode_chunk,
    edits,
    id_to_db,
    latest_changes,
    lineage,
    write_version0,
)
from connectomix.volume.base import Volume
from connectomix.volume.box import Box, xyz_to_zyx, zyx_to_xyz
from connectomix.volume.url import open_volume, parse_url

#: The operations that change segments (undo reverts the latest of them; redo only until the next one).
EDITS = ("merge", "split", "paint")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class EditLog:
    """The edit log of one segmentation: files under ``<workspace>/<name>/``, rows in the database."""

    def __init__(self, db: Database, workspace: Path, row: sa.Row[Any]) -> None:
        self.db = db
        self.workspace = Path(workspace)
        self.name: str = row.name
        self.log_id: int = int(row.id)
        self.segmentation_url: str = row.segmentation_url
        self.raw_url: str | None = row.raw_url
        self.boundary_url: str | None = row.boundary_url
        self.grid = Grid.from_json(row.geometry)
        self.store = EditStore(db, self.log_id, self.name, self.grid, self.workspace / self.name)
        self.files = self.store.files
        self._signal_volume: Volume | None = None
        self._owns_db = False

    # -- creation -------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        db: Database | str | Path | None,
        workspace: Path,
        segmentation_url: str,
        *,
        raw_url: str | None = None,
        boundary_url: str | None = None,
        name: str = "seg",
        chunks_zyx: Sequence[int] = (64, 64, 64),
        progress: bool = False,
    ) -> EditLog:
        """Import ``segmentation_url`` as version 0 of a new log ``name`` (zarr v3 uint64, ``chunks_zyx``
        voxels per chunk, the source's resolution and voxel offset). ``raw_url`` / ``boundary_url``: the EM
        image or a boundary map (same shape) that splits follow. ConflictError if the name is taken."""
        database = open_database(db)
        database.ensure_schema("edits", MIGRATIONS)
        if not isinstance(name, str) or not _NAME.match(name):
            raise InputError(f"edit log name must be letters, digits, '_', '-' or '.', got {name!r}")
        source = open_volume(segmentation_url)
        if source.dtype.kind not in "iu":
            raise InputError(f"{segmentation_url}: expected an integer label volume, found {source.dtype}")
        for what, url in (("raw", raw_url), ("boundary", boundary_url)):
            if url is not None and open_volume(url).shape != source.shape:
                raise InputError(
                    f"{what} {url} has shape {open_volume(url).shape} (z, y, x), expected the "
                    f"segmentation's {source.shape}"
                )
        if find_row(database, name) is not None:
            raise ConflictError(f"an edit log named {name!r} already exists in {database.safe_url}")
        workspace = Path(workspace)
        root = workspace / name
        if root.exists():
            raise ConflictError(f"{root} already exists; remove it or choose another name")
        chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks_zyx, source.shape, strict=True))
        grid = Grid(source.shape, chunks, source.voxel_offset, source.resolution)  # type: ignore[arg-type]
        tmp = workspace / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        renamed = False
        try:
            index_rows, max_id = write_version0(source, tmp, grid, progress=progress)
            with database.begin() as connection:
                insert_log(
                    connection,
                    name=name,
                    workspace=workspace,
                    urls=(segmentation_url, raw_url, boundary_url),
                    grid=grid,
                    next_id=max_id + 1,
                    index_rows=index_rows,
                )
                tmp.rename(root)
                renamed = True
        except sa.exc.IntegrityError:
            if renamed:
                shutil.rmtree(root, ignore_errors=True)
            raise ConflictError(f"an edit log named {name!r} already exists in {database.safe_url}") from None
        except BaseException:
            if renamed:
                shutil.rmtree(root, ignore_errors=True)
            raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log = cls.open(database, workspace, name)
        log._owns_db = not isinstance(db, Database)
        return log

    @classmethod
    def open(cls, db: Database | str | Path | None, workspace: Path, name: str = "seg") -> EditLog:
        """The existing log ``name`` (NotFoundError if the database or the workspace lacks it)."""
        database = open_database(db)
        database.ensure_schema("edits", MIGRATIONS)
        row = find_row(database, name)
        if row is None:
            if not isinstance(db, Database):
                database.dispose()
            raise NotFoundError(
                f"no edit log named {name!r} in {database.safe_url}; create one with `cx proofread init`"
            )
        log = cls(database, Path(workspace), row)
        if not (log.files.v0_path / "zarr.json").is_file():
            raise NotFoundError(f"edit log {name!r}: its volumes are missing under {log.files.root}")
        log._owns_db = not isinstance(db, Database)
        return log

    def close(self) -> None:
        """Release the database connections if this log opened the database itself."""
        if self._owns_db:
            self.db.dispose()

    def __enter__(self) -> EditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties -----------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The current version (0 = the imported segmentation)."""
        with self.db.engine.connect() as connection:
            return log_version(connection, self.log_id)

    @property
    def current_url(self) -> str:
        """zarr URL of the current version, kept materialised (rewritten chunk by chunk by each edit)."""
        return f"zarr://{self.files.current_path}"

    @property
    def v0_url(self) -> str:
        return f"zarr://{self.files.v0_path}"

    @property
    def chunk_writes(self) -> int:
        """Chunks of current.zarr this object has written (each edit writes only the chunks it changed)."""
        return self.files.chunk_writes

    # -- operations -----------------------------------------------------------------------------------
    def merge(self, a: int, b: int, *, user: str, points_xyz: Sequence[Sequence[int]] = ()) -> Edit:
        """Replace segments ``a`` and ``b`` by one new id. ``points_xyz`` (optional): a point in ``a`` then
        one in ``b`` (voxels, x, y, z), checked and recorded."""
        a, b, user = check_id(a, "segment a"), check_id(b, "segment b"), _check_user(user)
        if a == b:
            raise InputError(f"merge needs two different segments, got {a} twice")
        points = [self._local_point(p, "merge") for p in points_xyz]
        if points and len(points) != 2:
            raise InputError(f"merge points: expected 2 (one in each segment), got {len(points)}")

        def build(connection: Connection, state: State) -> Plan:
            indices = set(self.store.chunks_of(connection, a, state)) | set(
                self.store.chunks_of(connection, b, state)
            )
            for point, expected in zip(points, (a, b), strict=False):
                self._expect_at(point, expected, "merge")
            new = _allocate(state.next_id, 1)
            changes = []
            for index in sorted(indices):
                before = self.files.read_current_chunk(index)
                after = before.copy()
                after[(before == a) | (before == b)] = new
                changes.append(Change(index, before, after))
            inputs = {"segment_ids": [str(a), str(b)], "points_xyz": [_xyz(self, p) for p in points]}
            return Plan("merge", inputs, (new,), (a, b), changes, new + 1, [(a, new), (b, new)])

        return self.store.apply(build, user)

    def split(
        self,
        segment: int,
        sources_xyz: Sequence[Sequence[int]],
        sinks_xyz: Sequence[Sequence[int]],
        *,
        user: str,
    ) -> Edit:
        """Cut ``segment`` into two new ids: the first holds the sources, the second the sinks (points in
        voxels, x, y, z, all inside the segment). See :mod:`connectomix.proofread.split` for the method."""
        segment, user = check_id(segment, "segment"), _check_user(user)
        sources = [self._local_point(p, "split source") for p in sources_xyz]
        sinks = [self._local_point(p, "split sink") for p in sinks_xyz]
        if not sources or not sinks:
            raise InputError("a split needs at least one source and at least one sink point")
        both = set(sources) & set(sinks)
        if both:
            raise InputError(f"split point {_xyz(self, min(both))} (x, y, z) is both a source and a sink")

        def build(connection: Connection, state: State) -> Plan:
            indices = self.store.chunks_of(connection, segment, state)
            for point, kind in [(p, "source") for p in sources] + [(p, "sink") for p in sinks]:
                self._expect_at(point, segment, f"split {kind}")
            before = {index: self.files.read_current_chunk(index) for index in indices}
            region = _union(self.grid.chunk_box(i) for i in indices)
            labels = np.zeros(region.shape, np.uint64)
            for index, data in before.items():
                labels[self.grid.chunk_box(index).to_slices(region.start)] = data
            mask = labels == segment
            tight = _bbox(mask).translate(region.start)
            mask_t = mask[tight.to_slices(region.start)]
            landscape, signal = self._landscape(tight, mask_t)
            sides = seeded_split(
                mask_t,
                landscape,
                [tuple(p - s for p, s in zip(q, tight.start, strict=True)) for q in sources],
                [tuple(p - s for p, s in zip(q, tight.start, strict=True)) for q in sinks],
                self.grid.resolution,
            )
            n1 = _allocate(state.next_id, 2)
            n2 = n1 + 1
            view = labels[tight.to_slices(region.start)]
            view[mask_t] = np.where(sides[mask_t] == 1, np.uint64(n1), np.uint64(n2))
            changes = [
                Change(i, data, labels[self.grid.chunk_box(i).to_slices(region.start)].copy())
                for i, data in before.items()
            ]
            inputs = {
                "segment_id": str(segment),
                "sources_xyz": [_xyz(self, p) for p in sources],
                "sinks_xyz": [_xyz(self, p) for p in sinks],
                "signal": signal,
            }
            return Plan(
                "split", inputs, (n1, n2), (segment,), changes, n2 + 1, [(segment, n1), (segment, n2)]
            )

        return self.store.apply(build, user)

    def paint(
        self,
        segment: int,
        box_zyx: Box,
        mask: np.ndarray,
        *,
        user: str,
        point_xyz: Sequence[int] | None = None,
    ) -> Edit:
        """Give the *unassigned* voxels of ``mask`` to ``segment``, as one new id for the segment and them.

        ``box_zyx`` is a global (z, y, x) box inside the volume and ``mask`` a bool array of its shape; only
        voxels that are 0 now change (assigned voxels are never overwritten), and at least one must. The
        segment's other voxels get the new id too (ids are never reused: lineage segment→new).
        ``point_xyz`` (optional): the place the proofreader looked at, recorded with the edit.
        """
        segment, user = check_id(segment, "segment"), _check_user(user)
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != tuple(box_zyx.shape):
            raise InputError(
                f"paint mask must be a bool array of the box's shape {tuple(box_zyx.shape)}, "
                f"got {mask.dtype} {mask.shape}"
            )
        local = box_zyx.translate([-o for o in self.grid.offset])
        if not self.grid.local_bounds.contains(local):
            raise InputError(f"paint box {box_zyx} (z, y, x) lies outside the volume {self.grid.bounds}")
        point = [self._local_point(point_xyz, "paint")] if point_xyz is not None else []

        def build(connection: Connection, state: State) -> Plan:
            indices = set(self.store.chunks_of(connection, segment, state))
            if not indices:
                raise InputError(f"segment {segment} is not in the current version")
            painted = {i for i in self.grid.chunks_in(local)}
            new = _allocate(state.next_id, 1)
            changes, count = [], 0
            for index in sorted(indices | painted):
                before = self.files.read_current_chunk(index)
                after = before.copy()
                after[before == segment] = new
                chunk = self.grid.chunk_box(index)
                overlap = chunk.intersect(local)
                if overlap.size:
                    view = after[overlap.to_slices(chunk.start)]
                    fill = mask[overlap.to_slices(local.start)] & (
                        before[overlap.to_slices(chunk.start)] == 0
                    )
                    view[fill] = new
                    count += int(fill.sum())
                if not np.array_equal(before, after):
                    changes.append(Change(index, before, after))
            if count == 0:
                raise InputError("paint changes nothing: the mask holds no unassigned voxel")
            inputs = {
                "segment_id": str(segment),
                "box_zyx": [list(box_zyx.start), list(box_zyx.stop)],
                "voxels": count,
                "points_xyz": [_xyz(self, p) for p in point],
            }
            return Plan("paint", inputs, (new,), (segment,), changes, new + 1, [(segment, new)])

        return self.store.apply(build, user)

    def undo(self, *, user: str) -> Edit:
        """Revert the latest merge, split or paint still in effect (ConflictError if there is none)."""
        user = _check_user(user)

        def build(connection: Connection, state: State) -> Plan:
            c = edits.c
            row = connection.execute(
                sa.select(edits)
                .where(c.log_id == self.log_id, c.operation.in_(EDITS), sa.not_(c.undone))
                .order_by(c.version.desc())
                .limit(1)
            ).first()
            if row is None:
                raise ConflictError("nothing to undo: no merge or split is in effect")
            target = edit_from_row(row)
            changes = self.store.target_changes(connection, target, restore="before")
            inputs = {"edit": target.id, "operation": target.operation, "version": target.version}
            return Plan(
                "undo", inputs, target.parent_ids, target.new_ids, changes, state.next_id, [], target.id, True
            )

        return self.store.apply(build, user)

    def redo(self, *, user: str) -> Edit:
        """Re-apply the most recently undone edit, with the same new ids; ConflictError if nothing was undone
        or a merge or split was made since."""
        user = _check_user(user)

        def build(connection: Connection, state: State) -> Plan:
            c = edits.c
            last_new = connection.execute(
                sa.select(sa.func.max(c.version)).where(c.log_id == self.log_id, c.operation.in_(EDITS))
            ).scalar()
            target_edit = edits.alias("target")
            row = connection.execute(
                sa.select(target_edit)
                .select_from(edits.join(target_edit, c.target_id == target_edit.c.id))
                .where(
                    c.log_id == self.log_id,
                    c.operation == "undo",
                    c.version > (last_new or 0),
                    target_edit.c.undone,
                )
                .order_by(c.version.desc())
                .limit(1)
            ).first()
            if row is None:
                raise ConflictError("nothing to redo: no undo since the last merge or split")
            target = edit_from_row(row)
            changes = self.store.target_changes(connection, target, restore="after")
            inputs = {"edit": target.id, "operation": target.operation, "version": target.version}
            return Plan(
                "redo",
                inputs,
                target.new_ids,
                target.parent_ids,
                changes,
                state.next_id,
                [],
                target.id,
                False,
            )

        return self.store.apply(build, user)

    # -- queries --------------------------------------------------------------------------------------
    def edits(self) -> list[Edit]:
        """Every entry of the log, oldest first."""
        with self.db.engine.connect() as connection:
            rows = connection.execute(
                sa.select(edits).where(edits.c.log_id == self.log_id).order_by(edits.c.version)
            )
            return [edit_from_row(row) for row in rows]

    def changed_chunks(self, edit_id: int) -> list[Triple]:
        """Chunk indices (z, y, x) that edit ``edit_id`` rewrote."""
        c = chunk_changes.c
        with self.db.engine.connect() as connection:
            rows = connection.execute(
                sa.select(c.cz, c.cy, c.cx).where(c.edit_id == int(edit_id), c.log_id == self.log_id)
            ).all()
        return sorted((int(z), int(y), int(x)) for z, y, x in rows)

    def lineage(self, segment_id: int) -> Lineage:
        """Ancestors, descendants (transitively, over edits in effect) and whether the id is current."""
        sid = check_id(segment_id)
        with self.db.engine.connect() as connection:
            current = self.store.exists(connection, sid)
            known = current or (
                connection.execute(
                    sa.select(lineage.c.edit_id)
                    .where(
                        lineage.c.log_id == self.log_id,
                        sa.or_(lineage.c.parent == id_to_db(sid), lineage.c.child == id_to_db(sid)),
                    )
                    .limit(1)
                ).first()
                is not None
            )
            if not known:
                raise NotFoundError(f"segment {sid} is not in edit log {self.name!r} (never existed)")
            ancestors = self.store.walk(connection, sid, up=True)
            descendants = self.store.walk(connection, sid, up=False)
        return Lineage(sid, tuple(sorted(ancestors)), tuple(sorted(descendants)), current)

    def segment_at(self, point_xyz: Sequence[int]) -> int:
        """The id at voxel ``point_xyz`` (x, y, z) of the current version (0 = background)."""
        local = self._local_point(point_xyz, "query")
        box = Box.from_shape((1, 1, 1), tuple(p + o for p, o in zip(local, self.grid.offset, strict=True)))
        return int(self.read(box)[0, 0, 0])

    def read(self, box: Box | None = None, version: int | None = None) -> np.ndarray:
        """The ids in ``box`` (global voxels, z, y, x; default: everything) at ``version`` (default: the
        current one) as a uint64 ``(z, y, x)`` array."""
        box = self.grid.bounds if box is None else box
        if not self.grid.bounds.contains(box):
            raise InputError(f"box {box} lies outside the volume's bounds {self.grid.bounds}")
        local = box.translate(tuple(-o for o in self.grid.offset))
        with self.db.engine.connect() as connection:
            latest = log_version(connection, self.log_id)
            wanted = _check_version(version, latest)
            if wanted == latest and self.files.read_state() == (latest, []):
                return self.files.read_current(local)
            out = np.zeros(local.shape, np.uint64)
            indices = self.grid.chunks_in(local)
            for index, data in chunks_at(connection, self.files, self.log_id, indices, wanted):
                chunk = self.grid.chunk_box(index)
                part = chunk.intersect(local)
                out[part.to_slices(local.start)] = data[part.to_slices(chunk.start)]
        return out

    def materialise(self, version: int, out_url: str, *, overwrite: bool = False) -> str:
        """Write ``version`` as a new zarr volume at ``out_url``; returns its URL.

        Starts from version 0 (a copy of v0.zarr's compressed chunk files) and writes, for each chunk that an
        edit up to ``version`` changed, its content after the last such change: the same volume as applying
        every change in order, with each chunk written once. Written under a temporary name, then renamed.
        """
        parsed = parse_url(out_url)
        if parsed.scheme != "zarr":
            raise InputError(f"materialise writes zarr volumes: expected zarr://PATH, got {out_url!r}")
        path = Path(parsed.path)
        if path.exists() and not overwrite:
            raise InputError(f"{out_url}: already exists (pass overwrite to replace it)")
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.db.engine.connect() as connection:
                wanted = _check_version(version, log_version(connection, self.log_id))
                shutil.copytree(self.files.v0_path, tmp)
                array = zarr.open_array(str(tmp), mode="r+")
                for index, last in sorted(latest_changes(connection, self.log_id, wanted).items()):
                    chunk = self.grid.chunk_box(index)
                    blob = change_blob(connection, self.log_id, last, index)
                    array[chunk.to_slices()] = decode_chunk(blob, chunk.shape)
            if path.exists():
                shutil.rmtree(path)
            tmp.replace(path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return f"zarr://{path}"

    def _local_point(self, point_xyz: Sequence[int], what: str) -> Triple:
        """A user point (x, y, z, global voxels) as a local (z, y, x) index; InputError outside."""
        try:
            values = [int(v) for v in point_xyz]
        except (TypeError, ValueError):
            raise InputError(f"{what} point must be 3 integers x, y, z, got {point_xyz!r}") from None
        if len(values) != 3 or any(float(v) != float(w) for v, w in zip(values, point_xyz, strict=False)):
            raise InputError(f"{what} point must be 3 integers x, y, z, got {point_xyz!r}")
        local = tuple(p - o for p, o in zip(xyz_to_zyx(values), self.grid.offset, strict=True))
        if not self.grid.local_bounds.contains_point(local):
            bounds = self.grid.bounds
            raise InputError(
                f"{what} point {tuple(values)} (x, y, z) lies outside the volume "
                f"[{bounds.start_xyz}, {bounds.stop_xyz})"
            )
        return local  # type: ignore[return-value]

    def _expect_at(self, point: Triple, expected: int, what: str) -> None:
        found = int(np.asarray(self.files.current[point]))
        if found != expected:
            raise InputError(
                f"{what} point {_xyz(self, point)} (x, y, z) lies in segment {found}, not in {expected}"
            )

    def _landscape(self, box_local: Box, mask: np.ndarray) -> tuple[np.ndarray | None, str]:
        """The split landscape over ``box_local`` and which signal made it (boundary, raw or geodesic)."""
        url = self.boundary_url or self.raw_url
        if url is None:
            return None, "geodesic"
        if self._signal_volume is None:
            self._signal_volume = open_volume(url)
        volume = self._signal_volume
        if volume.shape != self.grid.shape:
            raise CorruptDataError(f"{url} has shape {volume.shape}, expected {self.grid.shape}")
        if self.boundary_url:
            return boundary_landscape(volume.read(box_local.translate(volume.voxel_offset))), "boundary"
        padded = box_local.pad(CONTEXT_VOXELS).intersect(self.grid.local_bounds)
        raw = volume.read(padded.translate(volume.voxel_offset))
        padded_mask = np.zeros(padded.shape, bool)
        padded_mask[box_local.to_slices(padded.start)] = mask
        landscape = raw_landscape(raw, self.grid.resolution, padded_mask)
        return landscape[box_local.to_slices(padded.start)], "raw"


# -- helpers ----------------------------------------------------------------------------------------------
def _check_version(version: int | None, latest: int) -> int:
    if version is None:
        return latest
    if not isinstance(version, int | np.integer) or not 0 <= int(version) <= latest:
        raise NotFoundError(f"version {version!r} does not exist: expected 0..{latest}")
    return int(version)


def _check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip() or len(user) > 256:
        raise InputError(f"user must be a non-empty name of at most 256 characters, got {user!r}")
    return user.strip()


def _allocate(next_id: int, count: int) -> int:
    if next_id + count - 1 > MAX_ID:
        raise ConflictError("no segment ids left below 2^64")
    return next_id


def _xyz(log: EditLog, local_zyx: Sequence[int]) -> list[int]:
    """A local (z, y, x) index as a global [x, y, z] point."""
    return [int(v) for v in zyx_to_xyz([p + o for p, o in zip(local_zyx, log.grid.offset, strict=True)])]


def _union(boxes: Any) -> Box:
    result: Box | None = None
    for box in boxes:
        result = box if result is None else result.union(box)
    if result is None:
        raise InputError("no chunks to edit")
    return result


def _bbox(mask: np.ndarray) -> Box:
    """The smallest local box holding every True voxel of ``mask``."""
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            raise CorruptDataError("segment index lists chunks that do not hold the segment")
        start.append(int(present[0]))
        stop.append(int(present[-1]) + 1)
    return Box(start, stop)


__all__ = ["Edit", "EditLog", "Lineage", "Operation"]
