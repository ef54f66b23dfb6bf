"""Synapse tables: CAVE and navis imports, attaching to a segmentation (xyz positions, zyx volumes), and
keeping ids current through the edit log's merges and splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from connectomix.analyze.graph import ConnectivityGraph
from connectomix.analyze.lookup import lookup_ids, segment_volumes
from connectomix.analyze.synapses import (
    CANONICAL_COLUMNS,
    attach_segments,
    normalise_synapses,
    read_synapses,
    remap_synapses,
    write_synapses,
)
from connectomix.errors import InputError
from connectomix.proofread.edits import EditLog
from connectomix.volume import open_volume

RESOLUTION_ZYX = (40.0, 8.0, 8.0)
OFFSET_ZYX = (0, 0, 100)


def block_labels() -> np.ndarray:
    """(z, y, x) = (32, 64, 96): 10 (x < 32, y < 32), 20 (x < 32, y ≥ 32), 30 (32 ≤ x < 64), 40 (x ≥ 64)."""
    labels = np.zeros((32, 64, 96), np.uint64)
    labels[:, :32, :32] = 10
    labels[:, 32:, :32] = 20
    labels[:, :, 32:64] = 30
    labels[:, :, 64:] = 40
    return labels


@pytest.fixture
def segmentation(tmp_path) -> str:
    url = f"zarr://{tmp_path / 'seg.zarr'}"
    volume = open_volume(
        url,
        "w",
        shape=(32, 64, 96),
        dtype=np.uint64,
        chunks=(16, 16, 16),
        resolution=RESOLUTION_ZYX,
        voxel_offset=OFFSET_ZYX,
    )
    volume.write(volume.bounds, block_labels())
    return url


def voxel_xyz(x: int, y: int, z: int) -> list[int]:
    """Global voxel (x, y, z) of local voxel (x, y, z): the volume starts at x = 100."""
    return [x + OFFSET_ZYX[2], y + OFFSET_ZYX[1], z + OFFSET_ZYX[0]]


#: (pre local voxel x, y, z), (post local voxel x, y, z): 10→30, 20→30, 10→40, 30→20
SITES = [
    ((5, 5, 3), (40, 5, 3)),
    ((5, 50, 3), (40, 50, 3)),
    ((20, 20, 9), (70, 20, 9)),
    ((50, 60, 1), (10, 40, 1)),
]


def cave_frame(ids=(1, 2, 3, 4)) -> pd.DataFrame:
    """CAVE-style rows with stale root ids (999) and positions as text '[x y z]' in global voxels."""
    return pd.DataFrame(
        {
            "id": list(ids),
            "pre_pt_root_id": ["999"] * 4,
            "post_pt_root_id": ["999"] * 4,
            "pre_pt_position": [f"[{' '.join(map(str, voxel_xyz(*p)))}]" for p, _ in SITES],
            "post_pt_position": [str(voxel_xyz(*q)) for _, q in SITES],
            "size": [120.0, 80.0, 50.0, 10.0],
        }
    )


def test_cave_csv_attach_and_graph(tmp_path, segmentation) -> None:
    path = tmp_path / "synapses.csv"
    cave_frame().to_csv(path, index=False)
    table = read_synapses(path)
    assert list(table.columns[: len(CANONICAL_COLUMNS)]) == list(CANONICAL_COLUMNS)
    assert table.loc[0, ["pre_x", "pre_y", "pre_z"]].tolist() == [105.0, 5.0, 3.0]  # x, y, z as given
    attached = attach_segments(table, open_volume(segmentation))
    assert attached["pre_id"].tolist() == [10, 20, 10, 30]
    assert attached["post_id"].tolist() == [30, 30, 40, 20]
    graph = ConnectivityGraph.from_synapses(attached)
    assert graph.edge_list()[["pre_id", "post_id", "synapses"]].values.tolist() == [
        [10, 30, 1],
        [10, 40, 1],
        [20, 30, 1],
        [30, 20, 1],
    ]
    # node attributes from the volume: segment sizes in nm³
    cells = segment_volumes(open_volume(segmentation))[["node_id", "volume_nm3"]]
    sized = ConnectivityGraph.from_synapses(attached, nodes=cells)
    assert sized.node_ids.tolist() == [10, 20, 30, 40] and sized.n_synapses == 4
    assert sized.nodes["volume_nm3"].tolist()[0] == 32**3 * 40 * 8 * 8
    assert sized.edges["size_sum"].tolist() == [120.0, 50.0, 80.0, 10.0]
    # the same positions in nm (8 × 8 × 40 nm voxels) land on the same segments
    nm = table.copy()
    for side in ("pre", "post"):
        nm[[f"{side}_x", f"{side}_y", f"{side}_z"]] *= np.array([8.0, 8.0, 40.0])
    in_nm = attach_segments(nm, open_volume(segmentation), voxel_size_nm_xyz=(1, 1, 1))
    assert in_nm["pre_id"].tolist() == attached["pre_id"].tolist()


def test_parquet_list_positions_round_trip(tmp_path, segmentation) -> None:
    frame = cave_frame()
    frame["pre_pt_root_id"] = np.full(4, 2**64 - 5, np.uint64)  # ids above 2^63 keep every digit
    frame["pre_pt_position"] = [voxel_xyz(*p) for p, _ in SITES]
    frame["post_pt_position"] = [np.array(voxel_xyz(*q)) for _, q in SITES]
    frame.to_parquet(tmp_path / "cave.parquet")
    table = read_synapses(tmp_path / "cave.parquet")
    assert table["pre_id"].tolist() == [2**64 - 5] * 4 and table["pre_id"].dtype == np.uint64
    write_synapses(table, tmp_path / "canonical.parquet")
    again = read_synapses(tmp_path / "canonical.parquet")
    pd.testing.assert_frame_equal(again, table)


def test_navis_connectors_from_hemibrain(testdata) -> None:
    path = testdata / "morphology" / "navis_hemibrain_DA1_lPN" / "synapses" / "1734350788.csv"
    raw = pd.read_csv(path)
    table = read_synapses(path, neuron_id=1734350788)
    outputs = table["pre_id"] == 1734350788
    assert int(outputs.sum()) == int((raw["type"] == "pre").sum()) > 0
    assert int((table["post_id"] == 1734350788).sum()) == int((raw["type"] == "post").sum()) > 0
    assert (table.loc[outputs, "post_id"] == 0).all()  # partners unknown until attached
    np.testing.assert_array_equal(table.loc[outputs, "pre_x"], raw.loc[raw["type"] == "pre", "x"])
    assert table["post_x"][outputs].isna().all()
    assert {"node_id", "roi", "confidence"} <= set(table.columns)
    assert table["synapse_id"].tolist() == raw["connector_id"].tolist()


def test_bad_tables_give_clear_errors(tmp_path, segmentation) -> None:
    frame = cave_frame()
    with pytest.raises(InputError, match="post_pt_position"):
        normalise_synapses(frame.drop(columns="post_pt_position"))
    with pytest.raises(InputError, match="unrecognised synapse table"):
        normalise_synapses(pd.DataFrame({"a": [1]}))
    bad = frame.assign(pre_pt_root_id=["12", "x7", "3", "4"])
    with pytest.raises(InputError, match=r"pre_pt_root_id.*'x7'"):
        normalise_synapses(bad)
    with pytest.raises(InputError, match="non-negative integers"):
        normalise_synapses(frame.assign(post_pt_root_id=[1.5, 2.0, 3.0, 4.0]))
    with pytest.raises(InputError, match="3 coordinates"):
        normalise_synapses(frame.assign(pre_pt_position=["[1 2]"] * 4))
    path = tmp_path / "navis.csv"
    pd.DataFrame({"connector_id": [0], "type": ["both"], "x": [1], "y": [2], "z": [3]}).to_csv(
        path, index=False
    )
    with pytest.raises(InputError, match=r"navis.csv.*pre or post"):
        read_synapses(path)
    table = normalise_synapses(frame)
    table.loc[2, "post_x"] = 5000.0
    with pytest.raises(InputError, match=r"1 postsynaptic positions lie outside"):
        attach_segments(table, open_volume(segmentation))
    kept = attach_segments(table, open_volume(segmentation), outside="background")
    assert kept["post_id"].tolist() == [30, 30, 0, 20]


def test_lookup_and_segment_volumes(segmentation) -> None:
    volume = open_volume(segmentation)
    ids = lookup_ids(volume, np.array([[0, 0, 100], [31, 63, 195], [0, 40, 110]]))
    assert ids.tolist() == [10, 40, 20]
    sizes = segment_volumes(volume)
    assert sizes["node_id"].tolist() == [10, 20, 30, 40]
    assert sizes["voxels"].tolist() == [32 * 32 * 32, 32 * 32 * 32, 32 * 64 * 32, 32 * 64 * 32]
    assert sizes["volume_nm3"].iloc[0] == 32**3 * 40 * 8 * 8
    with pytest.raises(InputError, match="outside"):
        lookup_ids(volume, np.array([[0, 0, 0]]))


def test_remap_after_merge_and_split(tmp_path, segmentation) -> None:
    log = EditLog.create(
        f"sqlite:///{tmp_path / 'cx.db'}", tmp_path / "ws", segmentation, chunks_zyx=(16, 32, 32)
    )
    with log:
        table = attach_segments(normalise_synapses(cave_frame()), log)
        assert table["pre_id"].tolist() == [10, 20, 10, 30]
        merge = log.merge(10, 20, user="ann")
        (merged,) = merge.new_ids
        after_merge = remap_synapses(table, log)
        assert after_merge.table["pre_id"].tolist() == [merged, merged, merged, 30]
        assert after_merge.table["post_id"].tolist() == [30, 30, 40, merged]
        assert (after_merge.by_lineage, after_merge.by_position, after_merge.unresolved) == (4, 0, 0)

        # split the merged segment back along y = 32 (global x, y, z points)
        split = log.split(merged, [voxel_xyz(16, 16, 8)], [voxel_xyz(16, 47, 8)], user="bob")
        top, bottom = split.new_ids
        expected_pre = [top, bottom, top, 30]
        for stale in (table, after_merge.table):  # from version 0 ids or from the merged ids alike
            result = remap_synapses(stale, log)
            assert result.table["pre_id"].tolist() == expected_pre
            assert result.table["post_id"].tolist() == [30, 30, 40, bottom]
            assert result.by_position == 4 and result.unresolved == 0

        # a synapse whose position is not in any descendant is unresolved (id 0), not guessed
        odd = table.copy()
        odd.loc[0, ["pre_x", "pre_y", "pre_z"]] = voxel_xyz(40, 5, 3)  # inside segment 30
        result = remap_synapses(odd, log)
        assert result.table["pre_id"].iloc[0] == 0 and result.unresolved == 1

        # undo the split: the merged id is current again, and ids from the undone split map back to it
        split_ids = remap_synapses(table, log).table
        log.undo(user="bob")
        back = remap_synapses(split_ids, log)
        assert back.table["pre_id"].tolist() == [merged, merged, merged, 30]
        assert back.table["post_id"].tolist() == [30, 30, 40, merged]
        assert (back.by_lineage, back.unresolved) == (4, 0)
