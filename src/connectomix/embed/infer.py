"""Embedding every segment of a segmentation: skeletonise, sample nodes, cut, batch, embed — chunk by chunk.

The volume is processed in blocks (by default one block for volumes up to 256³ voxels). For a block:

1. its segments are skeletonised with kimimaro on the block grown by ``margin`` voxels (read through the
   volume and its chunk cache; segments with fewer than ``min_voxels`` voxels there get no skeleton), and
   only nodes inside the block are kept;
2. nodes are thinned to about one per ``spacing_nm``: space is cut into cubes of ``spacing_nm`` on a
   global grid and, per segment and cube, the node nearest the cube's centre is kept (a cube that straddles
   two blocks may keep one node on each side);
3. a cutout around each node is read from the EM and the segmentation (:mod:`connectomix.embed.cutouts`),
   cutouts are batched and embedded (bf16 autocast where the CPU/GPU has it natively, channels-last).

Rows are keyed by ``(segment id, node id)``; node ids are global voxel indices
(:func:`~connectomix.embed.pairs.node_ids_for`), so the same node gets the same key whichever block finds
it. Positions are global voxel coordinates, (x, y, z), as in SegCLR's CSV rows.

:class:`EmbeddingStore` is the streaming mode: a folder of Parquet part files, one per embedded block;
:meth:`EmbeddingStore.embed_chunk` embeds the segments whose skeleton nodes fall in a newly finished chunk
and skips every key already in the store, so calling it again (or after a crash) redoes nothing.
:func:`embed_volume` runs every block through a store and then writes the consolidated Parquet file and
the CSV-ZIP release (every segment's rows gathered into one member, as the format wants).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connectomix.embed.cutouts import read_cutouts
from connectomix.embed.model import SegCLREncoder
from connectomix.embed.pairs import DEFAULT_MIN_VOXELS, SkeletonGraph, skeletonize_segments
from connectomix.embed.records import Coordinates, EmbeddingTable
from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.segment.precision import Precision, resolve_precision
from connectomix.volume.base import Volume
from connectomix.volume.box import Box

log = logging.getLogger(__name__)

DEFAULT_SPACING_NM = 100.0
DEFAULT_BLOCK_ZYX = (256, 256, 256)
DEFAULT_MARGIN = 32
_PART = re.compile(r"^chunk-z(\d+)_y(\d+)_x(\d+)-(\d+)\.parquet$")


def sample_nodes(graph: SkeletonGraph, spacing_nm: float, within: Box | None = None) -> np.ndarray:
    """Indices of about one node per ``spacing_nm`` cube (global grid) per segment, among the nodes inside
    ``within`` (global voxel box, default all); sorted by (segment id, node id)."""
    if not spacing_nm > 0:
        raise InputError(f"spacing_nm must be positive, got {spacing_nm}")
    index = np.arange(graph.n_nodes)
    if within is not None:
        start, stop = np.asarray(within.start), np.asarray(within.stop)
        inside = np.all((graph.nodes_zyx >= start) & (graph.nodes_zyx < stop), axis=1)
        index = index[inside]
    if len(index) == 0:
        return index
    nm = graph.nodes_nm_zyx[index]
    cube = np.floor(nm / spacing_nm).astype(np.int64)
    off_centre = np.linalg.norm(nm - (cube + 0.5) * spacing_nm, axis=1)
    segment = graph.node_segment[index]
    order = np.lexsort((graph.node_ids[index], off_centre, cube[:, 2], cube[:, 1], cube[:, 0], segment))
    keys = np.column_stack([segment, cube])[order]
    first = np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)]
    chosen = index[order[first]]
    return chosen[np.lexsort((graph.node_ids[chosen], graph.node_segment_ids[chosen]))]


@dataclass
class Embedder:
    """An encoder bound to an EM and a segmentation volume: cutouts in, embeddings out.

    ``precision`` ``auto`` runs bf16 autocast only where it is native (see
    :func:`~connectomix.segment.precision.resolve_precision`); weights stay fp32. ``batch_size`` cutouts are
    read and embedded at a time.
    """

    model: SegCLREncoder
    raw: Volume
    seg: Volume
    batch_size: int = 32
    precision: Precision = "auto"
    device: str | torch.device = "cpu"
    stats: dict[str, float] = field(default_factory=lambda: {"cutouts": 0, "read_s": 0.0, "embed_s": 0.0})

    def __post_init__(self) -> None:
        if self.raw.shape != self.seg.shape or self.raw.voxel_offset != self.seg.voxel_offset:
            raise InputError(
                f"EM {self.raw.shape} at {self.raw.voxel_offset} and segmentation {self.seg.shape} at "
                f"{self.seg.voxel_offset} must cover the same voxels (z, y, x)"
            )
        if self.seg.kind != "segmentation" and self.seg.dtype.kind not in "iu":
            raise InputError(f"{self.seg.url}: expected a segmentation (integer ids), got {self.seg.dtype}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be ≥ 1, got {self.batch_size}")
        device = torch.device(self.device)
        self.device = device
        self.resolved = resolve_precision(self.precision, device)
        self.model = self.model.to(self.device, memory_format=torch.channels_last_3d).eval()  # type: ignore[call-overload]

    @torch.inference_mode()
    def embed_array(self, cutouts: np.ndarray) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of network inputs ``(N, C, z, y, x)``."""
        out = []
        for start in range(0, len(cutouts), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(cutouts[start : start + self.batch_size]))
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last_3d)
            with torch.autocast(
                torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.resolved == "bf16"
            ):
                out.append(self.model(batch).float().cpu().numpy())
        dim = self.model.config.embedding_dim
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def embed_nodes(
        self, centres_zyx: np.ndarray, segment_ids: np.ndarray, progress: bool = False
    ) -> np.ndarray:
        """Embeddings ``(N, D)`` of nodes at ``centres_zyx`` (global voxels, (z, y, x)) of ``segment_ids``."""
        centres = np.asarray(centres_zyx, dtype=np.int64).reshape(-1, 3)
        ids = np.asarray(segment_ids, dtype=np.uint64).reshape(-1)
        parts = []
        starts = range(0, len(ids), self.batch_size)
        for start in track(starts, "embedding nodes", total=len(starts), enabled=progress):
            stop = start + self.batch_size
            t0 = time.perf_counter()
            cutouts = read_cutouts(
                self.raw, self.seg, centres[start:stop], ids[start:stop], self.model.config
            )
            t1 = time.perf_counter()
            parts.append(self.embed_array(cutouts))
            self.stats["read_s"] += t1 - t0
            self.stats["embed_s"] += time.perf_counter() - t1
            self.stats["cutouts"] += len(cutouts)
        dim = self.model.config.embedding_dim
        return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

    @property
    def coordinates(self) -> Coordinates:
        return Coordinates("voxel", self.seg.resolution_xyz)

    def embed_box(
        self,
        box: Box,
        *,
        spacing_nm: float = DEFAULT_SPACING_NM,
        min_voxels: int = DEFAULT_MIN_VOXELS,
        margin: int = DEFAULT_MARGIN,
        skip: set[tuple[int, int]] | None = None,
        segment_ids: Iterable[int] | None = None,
        skeleton_params: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> EmbeddingTable:
        """Embed the sampled skeleton nodes that lie inside ``box`` (global voxels), except the
        ``(segment id, node id)`` keys in ``skip`` and, if ``segment_ids`` is given, other segments."""
        box = box.intersect(self.seg.bounds)
        if box.empty:
            return EmbeddingTable.empty(self.model.config.embedding_dim)
        graph = skeletonize_segments(
            self.seg, box=box.pad(margin), min_voxels=min_voxels, skeleton_params=skeleton_params
        )
        return self.embed_graph(
            graph, box, spacing_nm=spacing_nm, skip=skip, segment_ids=segment_ids, progress=progress
        )

    def embed_graph(
        self,
        graph: SkeletonGraph,
        box: Box | None = None,
        *,
        spacing_nm: float = DEFAULT_SPACING_NM,
        skip: set[tuple[int, int]] | None = None,
        segment_ids: Iterable[int] | None = None,
        progress: bool = False,
    ) -> EmbeddingTable:
        """Embed the nodes of ``graph`` (skeletons of ``self.seg``) sampled every ``spacing_nm`` inside
        ``box`` (default: all), minus the keys in ``skip`` and segments not in ``segment_ids`` (if given);
        rows sorted by (segment id, node id)."""
        chosen = sample_nodes(graph, spacing_nm, within=box)
        ids = graph.node_segment_ids[chosen]
        nodes = graph.node_ids[chosen]
        keep = np.ones(len(chosen), dtype=bool)
        if segment_ids is not None:
            keep &= np.isin(ids, np.fromiter((int(s) for s in segment_ids), dtype=np.uint64))
        if skip:
            keep &= np.array(
                [(int(s), int(n)) not in skip for s, n in zip(ids, nodes, strict=True)], dtype=bool
            )
        chosen, ids, nodes = chosen[keep], ids[keep], nodes[keep]
        centres = graph.nodes_zyx[chosen]
        embeddings = self.embed_nodes(centres, ids, progress=progress)
        return EmbeddingTable(ids, nodes.astype(np.int64), centres[:, ::-1].astype(np.float64), embeddings)


def _read_keys(path: Path) -> set[tuple[int, int]]:
    import pyarrow.parquet as pq

    columns = pq.read_table(path, columns=["segment_id", "node_id"])
    segments = columns.column("segment_id").to_numpy()
    nodes = columns.column("node_id").to_numpy()
    return set(zip(segments.tolist(), nodes.tolist(), strict=True))


class EmbeddingStore:
    """A folder of Parquet part files ``chunk-z…_y…_x…-N.parquet`` (streaming mode; see the module docstring).

    Keys already stored are read from the parts when the store opens, so a new process continues where the
    last one stopped. Each part is written atomically (temporary name, rename).
    """

    def __init__(self, folder: Path | str, embedder: Embedder) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self.keys: set[tuple[int, int]] = set()
        for path in self.parts():
            self.keys |= _read_keys(path)

    def parts(self) -> list[Path]:
        """The part files, in name order."""
        return sorted(p for p in self.folder.iterdir() if _PART.match(p.name))

    def embed_chunk(self, box: Box, **options: Any) -> int:
        """Embed the segments whose sampled skeleton nodes fall in the chunk ``box`` (global voxels), skipping
        keys already stored; writes one new part file if anything was new. Returns the number of new rows.
        ``options`` as :meth:`Embedder.embed_box` (``spacing_nm``, ``min_voxels``, ``margin`` …)."""
        from connectomix.embed.table import write_parquet

        table = self.embedder.embed_box(box, skip=self.keys, **options)
        if len(table) == 0:
            return 0
        z, y, x = box.start
        taken = {
            int(m.group(4))
            for p in self.parts()
            if (m := _PART.match(p.name)) and m.groups()[:3] == (str(z), str(y), str(x))
        }
        name = f"chunk-z{z}_y{y}_x{x}-{max(taken, default=-1) + 1}.parquet"
        write_parquet(self.folder / name, [table], self.embedder.coordinates)
        self.keys |= set(zip(table.segment_ids.tolist(), table.node_ids.tolist(), strict=True))
        return len(table)

    def read_all(self) -> EmbeddingTable:
        """Every stored row, sorted by (segment id, node id) so each segment's rows are contiguous."""
        from connectomix.embed.table import read_parquet

        tables = [read_parquet(p) for p in self.parts()]
        if not tables:
            return EmbeddingTable.empty(self.embedder.model.config.embedding_dim)
        table = EmbeddingTable.concat(tables)
        order = np.lexsort((table.node_ids, table.segment_ids))
        return EmbeddingTable(
            table.segment_ids[order],
            table.node_ids[order],
            table.positions_xyz[order],
            table.embeddings[order],
        )


def iter_blocks(bounds: Box, block_zyx: tuple[int, int, int]) -> Iterator[Box]:
    """The blocks of ``block_zyx`` voxels tiling ``bounds`` (clipped), in z, y, x order."""
    if any(b < 1 for b in block_zyx):
        raise InputError(f"block size must be positive, got {block_zyx}")
    yield from bounds.iter_chunks(block_zyx, bounds.start, clip=True)


@dataclass
class RunSummary:
    """What :func:`embed_volume` did."""

    n_rows: int
    n_segments: int
    n_blocks: int
    new_rows: int
    seconds: float
    parquet: Path | None
    csvzip: Path | None
    precision: str
    stats: dict[str, float]


def embed_volume(
    embedder: Embedder,
    out_dir: Path | str,
    *,
    spacing_nm: float = DEFAULT_SPACING_NM,
    min_voxels: int = DEFAULT_MIN_VOXELS,
    block_zyx: tuple[int, int, int] = DEFAULT_BLOCK_ZYX,
    margin: int = DEFAULT_MARGIN,
    num_shards: int = 10_000,
    bytewidth: int = 8,
    write_csvzip: bool = True,
    progress: bool = True,
) -> RunSummary:
    """Embed every segment of ``embedder.seg`` (those of at least ``min_voxels`` voxels per block).

    Writes ``out_dir/parts/`` (the resumable store), then ``out_dir/embeddings.parquet`` and, with
    ``write_csvzip``, the CSV-ZIP release ``out_dir/csvzip/`` (``num_shards`` shards, md5 ``bytewidth``
    8 or 64; see :mod:`connectomix.embed.csvzip`). Re-running after an interruption skips finished rows.
    """
    from connectomix.embed.csvzip import CsvZipWriter
    from connectomix.embed.table import write_parquet

    out = Path(out_dir)
    started = time.perf_counter()
    store = EmbeddingStore(out / "parts", embedder)
    blocks = list(iter_blocks(embedder.seg.bounds, block_zyx))
    new = 0
    for block in track(blocks, "embedding blocks", total=len(blocks), enabled=progress):
        new += store.embed_chunk(block, spacing_nm=spacing_nm, min_voxels=min_voxels, margin=margin)
    table = store.read_all()
    parquet = out / "embeddings.parquet"
    write_parquet(parquet, [table], embedder.coordinates, overwrite=True)
    csvzip = None
    if write_csvzip:
        csvzip = out / "csvzip"
        with CsvZipWriter(csvzip, num_shards=num_shards, bytewidth=bytewidth, overwrite=True) as writer:
            writer.write_table(table)
    return RunSummary(
        n_rows=len(table),
        n_segments=len(np.unique(table.segment_ids)),
        n_blocks=len(blocks),
        new_rows=new,
        seconds=time.perf_counter() - started,
        parquet=parquet,
        csvzip=csvzip,
        precision=embedder.resolved,
        stats=dict(embedder.stats),
    )
