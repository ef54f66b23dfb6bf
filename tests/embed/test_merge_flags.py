"""Merge flags from an embedding store (``connectomix.embed.merge_flags``) and ``cx embed flag``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.embed.csvzip import write_csvzip
from connectomix.embed.merge_flags import embedding_moments, flag_merges
from connectomix.embed.records import Coordinates, EmbeddingTable, SegmentEmbeddings
from connectomix.embed.table import write_parquet
from connectomix.errors import InputError
from connectomix.proofread.queue import TaskQueue

VOXELS = Coordinates("voxel", (8.0, 8.0, 8.0))
MERGED = 7  # the segment that is two bodies


def store_segments(seed: int = 0) -> list[SegmentEmbeddings]:
    """Ten single bodies (one embedding cluster, nodes along a line) and one merge of two bodies: two
    embedding clusters whose nodes lie on two lines meeting near x = 100 (voxels)."""
    rng = np.random.default_rng(seed)
    segments = []
    for segment_id in range(1, 12):
        n = 24
        centre = rng.normal(scale=0.5, size=16)
        embeddings = centre + rng.normal(scale=1.0, size=(n, 16))
        positions = np.column_stack([np.linspace(0, 200, n), np.full(n, 10.0 * segment_id), np.zeros(n)])
        if segment_id == MERGED:
            half = n // 2
            embeddings[:half] += 4.0  # body a
            embeddings[half:] -= 4.0  # body b
            positions[:half, 0] = np.linspace(0, 95, half)
            positions[half:, 0] = np.linspace(105, 200, n - half)
        segments.append(SegmentEmbeddings(segment_id, np.arange(n), positions, embeddings.astype(np.float32)))
    segments.append(  # too few nodes to score
        SegmentEmbeddings(99, np.arange(3), np.eye(3), rng.normal(size=(3, 16)).astype(np.float32))
    )
    return segments


def as_table(segments: list[SegmentEmbeddings]) -> EmbeddingTable:
    return EmbeddingTable.concat(
        EmbeddingTable(
            np.full(len(s), s.segment_id, dtype=np.uint64), s.node_ids, s.positions_xyz, s.embeddings
        )
        for s in segments
    )


def batches(segments: list[SegmentEmbeddings], size: int):
    return lambda: iter([as_table(segments[i : i + size]) for i in range(0, len(segments), size)])


def test_the_merged_segment_is_flagged_first_with_a_point_between_its_bodies() -> None:
    flags = flag_merges(batches(store_segments(), 4), VOXELS, top_k=3)
    assert flags.segments_read == 12 and flags.segments_scored == 11 and flags.rows == 11 * 24 + 3
    assert [t.kind for t in flags.tasks] == ["split"] * 3
    first = flags.tasks[0]
    assert first.segment_ids == (MERGED,) and first.score > 0.6 > flags.tasks[1].score
    assert [t.score for t in flags.tasks] == sorted((t.score for t in flags.tasks), reverse=True)
    # the suggested source and sink are the closest nodes of the two bodies, either side of x = 100
    xs = sorted([first.evidence["sources_xyz"][0][0], first.evidence["sinks_xyz"][0][0]])
    assert xs[0] <= 95 and xs[1] >= 105 and xs[1] - xs[0] <= 12
    assert first.evidence["cluster_sizes"] == [12, 12] and first.point_nm_xyz[0] == 8.0 * first.point_xyz[0]


def test_scores_do_not_depend_on_batching_and_threshold_and_top_k_select() -> None:
    segments = store_segments(seed=3)
    one = flag_merges(batches(segments, 12), VOXELS, top_k=None)
    many = flag_merges(batches(segments, 1), VOXELS, top_k=None)
    # the same segments in the same order, the same scores up to the rounding of the store's moments
    assert [t.segment_ids for t in one.tasks] == [t.segment_ids for t in many.tasks]
    assert [t.score for t in one.tasks] == pytest.approx([t.score for t in many.tasks], rel=1e-9)
    assert len(one.tasks) == 11
    top = flag_merges(batches(segments, 5), VOXELS, top_k=4)
    assert [t.key for t in top.tasks] == [t.key for t in one.tasks[:4]]
    cut = (one.tasks[2].score + one.tasks[3].score) / 2
    above = flag_merges(batches(segments, 5), VOXELS, threshold=cut, top_k=None)
    assert [t.key for t in above.tasks] == [t.key for t in one.tasks[:3]]


def test_moments_match_numpy_with_a_large_offset() -> None:
    rng = np.random.default_rng(1)
    values = (1e4 + rng.normal(size=(500, 8))).astype(np.float32)
    ids, nodes, positions = np.full(100, 1, np.uint64), np.arange(100), np.zeros((100, 3))
    parts = [EmbeddingTable(ids, nodes, positions, values[k * 100 : (k + 1) * 100]) for k in range(5)]
    mean, std, rows = embedding_moments(parts)
    assert rows == 500
    np.testing.assert_allclose(mean, values.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.astype(np.float64).std(axis=0), rtol=1e-6)


def test_nm_store_needs_a_resolution_and_points_become_voxels() -> None:
    segments = store_segments()
    in_nm = [
        SegmentEmbeddings(s.segment_id, s.node_ids, s.positions_xyz * 8.0, s.embeddings) for s in segments
    ]
    with pytest.raises(InputError, match="positions are in nm"):
        flag_merges(batches(in_nm, 4), Coordinates("nm"))
    got = flag_merges(batches(in_nm, 4), Coordinates("nm"), resolution_nm_xyz=(8.0, 8.0, 8.0), top_k=1)
    want = flag_merges(batches(segments, 4), VOXELS, top_k=1)
    assert got.tasks[0].point_xyz == want.tasks[0].point_xyz and got.tasks[0].segment_ids == (MERGED,)
    with pytest.raises(InputError, match="misplace"):
        flag_merges(batches(segments, 4), VOXELS, resolution_nm_xyz=(4.0, 4.0, 4.0))
    with pytest.raises(InputError, match="no rows"):
        flag_merges(lambda: iter([]), VOXELS)


def run_cx(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_enqueues_split_tasks_once(tmp_path, capsys) -> None:
    segments = store_segments()
    write_parquet(tmp_path / "e.parquet", [as_table(segments)], VOXELS)
    db = tmp_path / "queue.db"
    args = ["embed", "flag", f"parquet://{tmp_path / 'e.parquet'}", "--queue", str(db), "--top-k", "2"]
    code, out, err = run_cx(capsys, *args, "--json", str(tmp_path / "flags.json"))
    assert code == 0, err
    assert "scored 11 of 12 segments (267 rows); 2 split tasks" in out and "2 new in the queue" in out
    queue = TaskQueue(f"sqlite:///{db}")
    try:
        assert queue.depth() == 2
        claimed = queue.claim("ann")  # the highest R² first
        assert claimed is not None and claimed.kind == "split"
        assert claimed.payload["segment_ids"] in ([MERGED], [str(MERGED)])
    finally:
        queue.dispose()
    report = json.loads((tmp_path / "flags.json").read_text())
    assert report["new_in_queue"] == 2 and len(report["tasks"]) == 2
    code, out, err = run_cx(capsys, *args)  # the same flags again: nothing new
    assert code == 0 and "0 new in the queue" in out

    write_csvzip(tmp_path / "rel", segments, num_shards=3, bytewidth=8)
    url = f"csvzip://{tmp_path / 'rel'}?num_shards=3&bytewidth=8&resolution=8,8,8"
    code, out, err = run_cx(capsys, "embed", "flag", url, "--queue", str(tmp_path / "q2.db"), "--top-k", "1")
    assert code == 0 and "1 new in the queue" in out, err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["parquet://{tmp}/e.parquet", "--threshold", "2"], "threshold must be an R² in [0, 1]"),
        (["parquet://{tmp}/e.parquet", "--top-k", "0"], "top_k must be an integer >= 1"),
        (["parquet://{tmp}/e.parquet", "--resolution", "8,8"], "resolution must be 3"),
        (["parquet://{tmp}/missing.parquet"], "missing.parquet"),
        (["csvzip://{tmp}/rel?num_shards=3&bytewidth=8"], "does not record its coordinate unit"),
        (["zarr://{tmp}/x"], "unknown embedding URL scheme"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, fragment) -> None:
    segments = store_segments()
    write_parquet(tmp_path / "e.parquet", [as_table(segments)], VOXELS)
    write_csvzip(tmp_path / "rel", segments, num_shards=3, bytewidth=8)
    db = tmp_path / "queue.db"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cx(capsys, "embed", "flag", *argv, "--queue", str(db))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
