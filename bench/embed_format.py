"""Benchmark: reading a SegCLR CSV-ZIP release, connectomix's reader vs plain per-file readers.

A release is generated in a temporary directory (default 2,000 segments × 50 nodes, 64-float embeddings,
``num_shards=10``, i.e. 200 members per shard, about what the public releases hold; ``bytewidth=64`` like
the public H01/MICrONS releases; positions are integer voxels, embeddings N(0, 1) float32 written with
``%.9g``) and read back, every variant returning the same arrays
(asserted bit-exact). Variants:

* ``connectomix stream``: :meth:`CsvZipReader.iter_shards`, each zip opened once and all its members
  parsed by one ``numpy.loadtxt`` call;
* ``connectomix read_many``: random access to every id at once (grouped by shard, one open per shard);
* ``connectomix per-id``: ``reader[id]`` for every id (opens a zip per id, vectorised parse);
* ``plain csv`` (the peer): per id, compute the shard, reopen its zip, read ``{id}.csv`` and parse it with
  the ``csv`` module and ``float()`` (the shape of Google's ``connectomics.segclr.reader``);
* ``plain loadtxt``: per id, reopen the zip and ``numpy.loadtxt`` the member.

Reported: best wall time of ``--repeats``, rows/s and MB/s of uncompressed CSV text, speed-up over
``plain csv``, and the write time of the release (:func:`write_csvzip`). Run from the repository root:
``.venv/bin/python bench/embed_format.py`` (``--quick``: 200 segments, 1 repeat, a few seconds).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine

REPO = Path(__file__).resolve().parents[1]
BYTEWIDTH = 64


def make_release(
    directory: Path, n_segments: int, n_nodes: int, num_shards: int, seed: int
) -> tuple[list[int], float]:
    """Write a generated release; returns its segment ids and the seconds the write took."""
    from connectomix.embed.csvzip import write_csvzip
    from connectomix.embed.records import SegmentEmbeddings

    rng = np.random.default_rng(seed)
    ids = [int(v) for v in rng.choice(2**62, size=n_segments, replace=False)]
    segments = [
        SegmentEmbeddings(
            segment_id,
            np.arange(n_nodes),
            rng.choice(10**6, size=(n_nodes, 3), replace=False),
            rng.normal(size=(n_nodes, 64)).astype(np.float32),
        )
        for segment_id in ids
    ]
    start = time.perf_counter()
    write_csvzip(directory, segments, num_shards=num_shards, bytewidth=BYTEWIDTH)
    return ids, time.perf_counter() - start


# -- the peers: plain per-file readers --------------------------------------------------------------------
def plain_shard(segment_id: int, num_shards: int) -> int:
    digest = hashlib.md5(segment_id.to_bytes(BYTEWIDTH, "little")).digest()
    return int.from_bytes(digest, "little") % num_shards


def plain_member(directory: Path, segment_id: int, num_shards: int) -> bytes:
    with zipfile.ZipFile(directory / f"{plain_shard(segment_id, num_shards)}.zip") as archive:
        return archive.read(f"{segment_id}.csv")


def plain_csv(
    directory: Path, ids: list[int], num_shards: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for segment_id in ids:
        text = plain_member(directory, segment_id, num_shards).decode()
        rows = list(csv.reader(io.StringIO(text)))
        nodes = np.array([int(r[0]) for r in rows], dtype=np.int64)
        positions = np.array([[float(v) for v in r[1:4]] for r in rows])
        embeddings = np.array([[float(v) for v in r[4:]] for r in rows], dtype=np.float32)
        out[segment_id] = (nodes, positions, embeddings)
    return out


def plain_loadtxt(
    directory: Path, ids: list[int], num_shards: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for segment_id in ids:
        values = np.loadtxt(
            io.BytesIO(plain_member(directory, segment_id, num_shards)), delimiter=",", ndmin=2
        )
        out[segment_id] = (values[:, 0].astype(np.int64), values[:, 1:4], values[:, 4:].astype(np.float32))
    return out


# -- ours -------------------------------------------------------------------------------------------------
def _reader(directory: Path, num_shards: int):
    from connectomix.embed.csvzip import CsvZipReader

    return CsvZipReader(directory, num_shards=num_shards, bytewidth=BYTEWIDTH)


def ours_stream(
    directory: Path, ids: list[int], num_shards: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {s.segment_id: (s.node_ids, s.positions_xyz, s.embeddings) for s in _reader(directory, num_shards)}


def ours_read_many(
    directory: Path, ids: list[int], num_shards: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    found = _reader(directory, num_shards).read_many(ids)
    return {k: (s.node_ids, s.positions_xyz, s.embeddings) for k, s in found.items()}


def ours_per_id(
    directory: Path, ids: list[int], num_shards: int
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    reader = _reader(directory, num_shards)
    out = {}
    for segment_id in ids:
        s = reader[segment_id]
        out[segment_id] = (s.node_ids, s.positions_xyz, s.embeddings)
    return out


VARIANTS: dict[str, Callable[[Path, list[int], int], dict]] = {
    "connectomix stream": ours_stream,
    "connectomix read_many": ours_read_many,
    "connectomix per-id": ours_per_id,
    "plain csv": plain_csv,
    "plain loadtxt": plain_loadtxt,
}
PEER = "plain csv"


def csv_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*.zip"):
        with zipfile.ZipFile(path) as archive:
            total += sum(info.file_size for info in archive.infolist())
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--segments", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=50, help="rows per segment")
    parser.add_argument("--shards", type=int, default=10, help="num_shards of the generated release")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="200 segments in 1 shard, 1 repeat (checks the script)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "embed_format.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.segments, args.shards, args.repeats = 200, 1, 1

    with tempfile.TemporaryDirectory(prefix="cx-embed-bench-") as tmp:
        directory = Path(tmp) / "release"
        ids, write_seconds = make_release(directory, args.segments, args.nodes, args.shards, args.seed)
        n_rows = len(ids) * args.nodes
        text_bytes = csv_bytes(directory)
        zip_bytes = sum(p.stat().st_size for p in directory.glob("*.zip"))
        reference: dict[int, Any] | None = None
        results: dict[str, dict[str, float]] = {}
        for name, function in VARIANTS.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                got = function(directory, ids, args.shards)
                best = min(best, time.perf_counter() - start)
            if reference is None:
                reference = got
            assert set(got) == set(reference), name
            for segment_id, arrays in reference.items():
                for a, b in zip(arrays, got[segment_id], strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"{name} differs on {segment_id}")
            results[name] = {
                "seconds": best,
                "rows_per_second": n_rows / best,
                "mb_per_second": text_bytes / best / 1e6,
            }
    for values in results.values():
        values["speedup_vs_plain_csv"] = results[PEER]["seconds"] / values["seconds"]

    print(
        f"CSV-ZIP read: {len(ids):,} segments × {args.nodes} rows = {n_rows:,} rows, 64-d, "
        f"{args.shards} shards, bytewidth {BYTEWIDTH}; {text_bytes / 1e6:.1f} MB CSV, "
        f"{zip_bytes / 1e6:.1f} MB zipped; "
        f"best of {args.repeats}"
    )
    print(f"{'variant':<24}{'seconds':>9}{'rows/s':>12}{'MB/s':>8}{'× plain csv':>13}")
    for name, r in results.items():
        print(
            f"{name:<24}{r['seconds']:>9.3f}{r['rows_per_second']:>12,.0f}{r['mb_per_second']:>8.1f}"
            f"{r['speedup_vs_plain_csv']:>13.1f}"
        )
    print(
        f"write (connectomix write_csvzip, zlib level 1): {write_seconds:.2f} s, "
        f"{n_rows / write_seconds:,.0f} rows/s"
    )

    report = {
        "benchmark": "embed_format",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "quick": args.quick,
        "release": {
            "segments": len(ids),
            "rows_per_segment": args.nodes,
            "rows": n_rows,
            "dim": 64,
            "num_shards": args.shards,
            "bytewidth": BYTEWIDTH,
            "csv_bytes": text_bytes,
            "zip_bytes": zip_bytes,
            "seed": args.seed,
        },
        "repeats": args.repeats,
        "peer": PEER,
        "read": results,
        "write": {"seconds": write_seconds, "rows_per_second": n_rows / write_seconds},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2) + "\n")
    tmp_json.replace(args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
