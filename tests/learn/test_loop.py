"""``cx loop``: the closed loop on a (small) synthetic volume with Google's FIB-25 model, end to end.

The regions are shrunk so the test runs in a minute or two; the loop is the one ``make demo`` runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import connectomix.learn.synthetic_loop as synthetic_loop
from connectomix.cli import main
from connectomix.errors import InputError
from connectomix.learn.loop import LoopRegions, LoopSettings, curve_points
from connectomix.learn.registry import WeightsRegistry
from connectomix.volume.box import Box

SMALL_SHAPE = (50, 50, 150)  # 50³ regions: just above one training example of Google's model (49³)
SMALL_REGIONS = LoopRegions(
    a=Box((0, 0, 0), (50, 50, 50)), b=Box((0, 0, 50), (50, 50, 100)), c=Box((0, 0, 100), (50, 50, 150))
)


def test_regions_must_be_disjoint_and_curve_points_parse() -> None:
    with pytest.raises(InputError, match="overlap"):
        LoopRegions(
            a=Box((0, 0, 0), (10, 10, 10)), b=Box((5, 5, 5), (15, 15, 15)), c=Box((20,) * 3, (30,) * 3)
        )
    assert curve_points("10, 20,40") == (10, 20, 40)
    with pytest.raises(InputError, match=">= 1"):
        curve_points("0,5")
    for radius in (-1, 2.5, True):
        with pytest.raises(InputError, match="replay_avoid_radius"):
            LoopSettings(replay_avoid_radius=radius)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="centre_sampling must be 'balanced' or 'uniform'"):
        LoopSettings(centre_sampling="random")
    for weight in (-0.5, float("inf"), True):
        with pytest.raises(InputError, match="anchor_weight must be a number >= 0"):
            LoopSettings(anchor_weight=weight)  # type: ignore[arg-type]


def test_cx_loop_on_synthetic_data(testdata, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(synthetic_loop, "SYNTHETIC_SHAPE", SMALL_SHAPE)
    monkeypatch.setattr(synthetic_loop, "SYNTHETIC_REGIONS", SMALL_REGIONS)
    threads = torch.get_num_threads()
    out = tmp_path / "loop.json"
    try:
        code = main(
            ["loop", "--data", "synthetic", "--corrections", "4", "--curve", "2,4", "--epochs", "1",
             "--precision", "fp32", "--centre-sampling", "uniform", "--anchor-weight", "0.5",
             "--json", str(out), "--workdir", str(tmp_path / "ws")]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "VI on C" in captured.out
    report = json.loads(out.read_text())
    for key in ("vi_before", "vi_after", "corrections", "regions", "curve", "served", "edits"):
        assert key in report
    assert report["regions"] == SMALL_REGIONS.to_dict()
    assert report["settings"]["centre_sampling"] == "uniform" and report["settings"]["anchor_weight"] == 0.5
    assert report["regions"]["A"] == {"start_zyx": [0, 0, 0], "stop_zyx": [50, 50, 50]}
    assert report["context_voxels_zyx"] == [synthetic_loop.SYNTHETIC_CONTEXT] * 3
    assert 1 <= report["corrections"] <= 4 and report["tasks_flagged"] >= report["corrections"]
    curve = report["curve"]
    assert curve[0]["corrections"] == 0 and curve[0]["vi_c_served"] == report["vi_before"]
    fitted = curve[1:]
    assert fitted and [r["corrections"] for r in fitted] == sorted(r["corrections"] for r in fitted)
    # the gate decides on B alone; the served VI on C is the candidate's exactly when it was promoted
    for row in fitted:
        assert row["promoted"] == (row["vi_b_candidate"] < row["vi_b_served_before"])
    assert report["vi_after"] == curve[-1]["vi_c_served"]
    assert report["vi_drop_fraction"] == pytest.approx(1 - report["vi_after"] / report["vi_before"])

    # the workspace holds the registry: every adapter's lineage names the tasks proofread in A
    registry = WeightsRegistry(f"sqlite:///{tmp_path / 'ws' / 'workspace.db'}", tmp_path / "ws")
    try:
        adapters = registry.history("loop", kind="adapter")
        assert len(adapters) == len(fitted)
        lineage = registry.lineage(adapters[-1])
        assert lineage["all_tasks"] and len(lineage["all_tasks"]) <= report["corrections"]
        served = registry.promoted("loop")
        assert served is not None and served.label == report["served"]
        registry.verify(adapters[-1])
        # each fit builds on the adapter served when it started, never on a rejected candidate
        by_label = {e.label: e for e in adapters}
        served_id = None
        for row in fitted:
            entry = by_label[row["entry"]]
            assert list(entry.parents) == ([] if served_id is None else [served_id])
            if row["promoted"]:
                served_id = entry.id
    finally:
        registry.dispose()


def _tiny_model():  # type: ignore[no-untyped-def]
    """A small random ConvStack3D (field of view 9³): cheap, and its floods spread over many steps."""
    from connectomix.segment.models import ConvStack3D, FFNConfig

    torch.manual_seed(0)
    model = ConvStack3D(FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3)))
    with torch.no_grad():
        model.conv_lom.weight.mul_(10.0)
        model.conv_lom.bias.fill_(5.0)
    return model.eval()


def test_regions_are_segmented_with_context_and_cut_back(one_torch_thread) -> None:
    """A region is flood-filled inside its box padded by the context (clipped to the volume) and cut back."""
    from connectomix.learn.loop import LoopData, RegionSegmenter
    from connectomix.segment.inference import InferenceOptions, segment_subvolume
    from connectomix.volume.synthetic import make_synthetic

    volume = make_synthetic((40, 40, 40), seed=3)
    regions = LoopRegions(
        a=Box((10, 10, 10), (30, 30, 30)), b=Box((0, 0, 30), (20, 20, 40)), c=Box((30, 30, 0), (40, 40, 10))
    )
    data = LoopData("t", volume.raw, volume.gt, (10.0, 10.0, 10.0), regions)
    model, options = _tiny_model(), InferenceOptions(min_segment_size=10)
    with_context = RegionSegmenter(data, options, (4, 4, 4))
    seg, prob = with_context.segment(model, regions.a)
    padded = segment_subvolume(volume.raw[6:34, 6:34, 6:34], model, options)
    np.testing.assert_array_equal(seg, padded.segmentation[4:-4, 4:-4, 4:-4])
    np.testing.assert_array_equal(prob, padded.probability[4:-4, 4:-4, 4:-4])
    # at the volume's faces the context is clipped: B gets 4 voxels of image on its inner sides only
    seg_b, _ = with_context.segment(model, regions.b)
    clipped = segment_subvolume(volume.raw[0:24, 0:24, 26:40], model, options)
    np.testing.assert_array_equal(seg_b, clipped.segmentation[0:20, 0:20, 4:14])
    assert with_context.voxels == 28**3 + 24 * 24 * 14 and with_context.runs == 2
    bare, _ = RegionSegmenter(data, options, (0, 0, 0)).segment(model, regions.a)
    np.testing.assert_array_equal(
        bare, segment_subvolume(volume.raw[10:30, 10:30, 10:30], model, options).segmentation
    )
    with pytest.raises(InputError, match="context"):
        LoopSettings(context=-1)
