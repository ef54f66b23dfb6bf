"""Embedding store URLs and conversion between SegCLR CSV-ZIP and Parquet, streaming.

URL forms (paths may be relative)::

    csvzip://DIR?num_shards=N&bytewidth=B[&unit=nm | &unit=voxel&resolution=X,Y,Z]
    parquet://FILE

``num_shards`` and ``bytewidth`` (8 or 64) are required on every ``csvzip://`` URL, so a write is never
ambiguous. A CSV-ZIP release does not record what its positions mean; ``unit`` (``nm`` or ``voxel``, the
latter with ``resolution`` in nm, x, y, z order, like the volume URLs) says it, and is required when a
CSV-ZIP release is converted to Parquet (whose metadata records it). ``resolution`` alone implies
``unit=voxel``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

from connectomix.embed.records import Coordinates, EmbeddingTable
from connectomix.errors import InputError

_EXAMPLES = "csvzip://DIR?num_shards=10000&bytewidth=64 or parquet://FILE.parquet"


@dataclass(frozen=True)
class CsvZipUrl:
    """A parsed ``csvzip://`` URL."""

    url: str
    directory: Path
    num_shards: int
    bytewidth: int
    coordinates: Coordinates | None = None


@dataclass(frozen=True)
class ParquetUrl:
    """A parsed ``parquet://`` URL."""

    url: str
    path: Path


EmbeddingUrl = CsvZipUrl | ParquetUrl


def parse_embedding_url(url: str) -> EmbeddingUrl:
    """Split an embedding store URL; :class:`InputError` with the expected forms on anything else."""
    if not isinstance(url, str) or "://" not in url:
        raise InputError(f"expected an embedding URL such as {_EXAMPLES}, got {url!r}")
    scheme, rest = url.split("://", 1)
    body, _, query_text = rest.partition("?")
    if not body:
        raise InputError(f"{url}: the URL names no path (expected {_EXAMPLES})")
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        raise InputError(f"{url}: cannot parse the query {query_text!r} (expected key=value&…)") from None
    query = dict(pairs)
    if len(query) != len(pairs):
        raise InputError(f"{url}: a query parameter is given twice")
    scheme = scheme.lower()
    if scheme == "parquet":
        if query:
            raise InputError(f"{url}: parquet:// URLs take no query parameters, got {', '.join(query)}")
        return ParquetUrl(url, Path(body))
    if scheme != "csvzip":
        raise InputError(f"{url}: unknown embedding URL scheme {scheme + '://'!r}; expected {_EXAMPLES}")
    unknown = sorted(set(query) - {"num_shards", "bytewidth", "unit", "resolution"})
    if unknown:
        raise InputError(
            f"{url}: unknown query parameter {unknown[0]!r}; expected num_shards, bytewidth, unit, resolution"
        )
    for key in ("num_shards", "bytewidth"):
        if key not in query:
            raise InputError(
                f"{url}: {key} is required (public H01/MICrONS releases: num_shards=10000&bytewidth=64; "
                "newer exports bytewidth=8)"
            )
    num_shards = _int(url, "num_shards", query["num_shards"])
    bytewidth = _int(url, "bytewidth", query["bytewidth"])
    if num_shards < 1:
        raise InputError(f"{url}: num_shards must be a positive integer, got {num_shards}")
    if bytewidth not in (8, 64):
        raise InputError(f"{url}: bytewidth must be 8 or 64, got {bytewidth}")
    return CsvZipUrl(url, Path(body), num_shards, bytewidth, _coordinates(url, query))


def _int(url: str, key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{url}: {key} must be an integer, got {text!r}") from None


def parse_resolution(text: str, what: str) -> tuple[float, float, float]:
    """``"X,Y,Z"`` → three positive floats (nm)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what}: resolution must be 3 numbers X,Y,Z in nm, got {text!r}") from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise InputError(f"{what}: resolution must be 3 positive numbers X,Y,Z in nm, got {text!r}")
    return values  # type: ignore[return-value]


def _coordinates(url: str, query: dict[str, str]) -> Coordinates | None:
    unit = query.get("unit")
    resolution = query.get("resolution")
    if unit is None and resolution is None:
        return None
    if unit is None:
        unit = "voxel"
    if unit == "nm":
        if resolution is not None:
            raise InputError(f"{url}: unit=nm takes no resolution (resolution is the voxel size)")
        return Coordinates("nm")
    if unit == "voxel":
        if resolution is None:
            raise InputError(f"{url}: unit=voxel needs resolution=X,Y,Z (voxel size in nm)")
        return Coordinates("voxel", parse_resolution(resolution, url))
    raise InputError(f"{url}: unit must be 'nm' or 'voxel', got {unit!r}")


@dataclass(frozen=True)
class ConversionSummary:
    """What :func:`convert` did."""

    source: str
    destination: str
    n_segments: int
    n_rows: int
    dim: int | None
    coordinates: Coordinates | None
    seconds: float

    def line(self) -> str:
        """One-line summary for the CLI."""
        coords = self.coordinates.describe() if self.coordinates else "unit not recorded"
        rate = self.n_rows / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"converted {self.n_segments:,} segments, {self.n_rows:,} rows ({self.dim or '?'}-d, {coords}) "
            f"{self.source} → {self.destination} in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        )


def convert(
    source: str,
    destination: str,
    *,
    coordinates: Coordinates | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ConversionSummary:
    """Copy embeddings between CSV-ZIP and Parquet (either direction, or to a resharded CSV-ZIP), streaming.

    Parameters
    ----------
    source, destination
        Embedding URLs (see the module docstring).
    coordinates
        Overrides the coordinate unit of the source (needed for CSV-ZIP → Parquet unless the source URL
        states ``unit``).
    overwrite
        Replace an existing destination (atomically: a Parquet file is renamed into place when complete,
        CSV-ZIP shards one by one).
    progress
        Show a progress bar on a terminal.
    """
    src, dst = parse_embedding_url(source), parse_embedding_url(destination)
    if _same_place(src, dst):
        raise InputError(f"source and destination are the same place: {source}")
    start = time.perf_counter()
    tables, coords = open_store(src, coordinates, progress)
    if isinstance(dst, ParquetUrl):
        from connectomix.embed.table import ParquetEmbeddingWriter

        if coords is None:
            raise InputError(
                f"{source}: a CSV-ZIP release does not record its coordinate unit; add unit=nm or "
                "unit=voxel&resolution=X,Y,Z to the URL (or --unit/--resolution)"
            )
        n_segments = 0
        with ParquetEmbeddingWriter(dst.path, coords, overwrite=overwrite) as parquet:
            for table in tables:
                parquet.write(table)
                n_segments += len(table.run_starts()) - 1 if len(table) else 0
        n_rows, dim = parquet.n_rows, parquet.dim
    else:
        from connectomix.embed.csvzip import CsvZipWriter

        with CsvZipWriter(
            dst.directory, num_shards=dst.num_shards, bytewidth=dst.bytewidth, overwrite=overwrite
        ) as csvzip:
            for table in tables:
                csvzip.write_table(table)
        n_segments, n_rows, dim = csvzip.n_segments, csvzip.n_rows, csvzip.dim
    return ConversionSummary(
        source, destination, n_segments, n_rows, dim, coords, time.perf_counter() - start
    )


def _same_place(src: EmbeddingUrl, dst: EmbeddingUrl) -> bool:
    a = src.directory if isinstance(src, CsvZipUrl) else src.path
    b = dst.directory if isinstance(dst, CsvZipUrl) else dst.path
    return a.resolve() == b.resolve()


def open_store(
    src: EmbeddingUrl, coordinates: Coordinates | None, progress: bool
) -> tuple[Iterator[EmbeddingTable], Coordinates | None]:
    """Tables of the store ``src``, each holding whole segments (a fresh pass per call), and its coordinate
    unit: ``coordinates`` where given, else what the URL or the Parquet metadata records (None: unknown)."""
    if isinstance(src, CsvZipUrl):
        from connectomix.embed.csvzip import CsvZipReader

        reader = CsvZipReader(src.directory, num_shards=src.num_shards, bytewidth=src.bytewidth)
        return reader.iter_shards(progress=progress), coordinates or src.coordinates
    from connectomix.embed.table import count_rows, iter_parquet_segments, read_coordinates

    recorded = read_coordinates(src.path)
    total = count_rows(src.path)
    return _segment_batches(iter_parquet_segments(src.path), total, progress), coordinates or recorded


def _segment_batches(segments: Iterator, total_rows: int, progress: bool) -> Iterator[EmbeddingTable]:
    """Group streamed segments into tables of about 64k rows, with a row-count progress bar."""
    from rich.progress import Progress

    from connectomix.progress import is_terminal

    def batches() -> Iterator[EmbeddingTable]:
        pending: list = []
        rows = 0
        for segment in segments:
            pending.append(segment)
            rows += len(segment)
            if rows >= 1 << 16:
                yield EmbeddingTable.from_segments(pending)
                pending, rows = [], 0
        if pending:
            yield EmbeddingTable.from_segments(pending)

    if not (progress and is_terminal()):
        yield from batches()
        return
    with Progress(transient=True) as bar:
        task = bar.add_task("converting rows", total=total_rows)
        for table in batches():
            yield table
            bar.advance(task, len(table))
