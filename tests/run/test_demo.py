"""``cx demo``: the end-to-end path on synthetic and real data writes volumes, a report and a figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.evaluate import evaluate
from connectomix.volume import open_volume


def test_demo_on_synthetic_volume(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--size", "64", "--seed", "1", "--no-loop"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "VI total" in captured.out
    report = json.loads((out / "report.json").read_text())
    assert report["shape_zyx"] == [64, 64, 64]
    scores = report["scores"]
    assert scores["vi"] == pytest.approx(scores["vi_split"] + scores["vi_merge"])
    # The stored volumes are what was scored: re-evaluating them gives the same numbers.
    seg = open_volume(f"zarr://{out / 'seg.zarr'}")
    gt = open_volume(f"zarr://{out / 'gt.zarr'}")
    again = evaluate(seg, gt)
    assert again.vi_split == pytest.approx(scores["vi_split"], abs=1e-12)
    assert again.arand == pytest.approx(scores["arand"], abs=1e-12)
    # A real segmentation, clearly better than calling everything one object.
    trivial = evaluate(np.ones(gt.shape, dtype=np.uint64), gt)
    assert scores["vi"] < 0.5 * trivial.vi
    assert report["n_segments"] > 1
    png = (out / "slice.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_demo_on_real_crop_reports_scores(testdata, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--data", "fib25-crop100", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["shape_zyx"] == [100, 100, 100]
    assert report["resolution_nm_zyx"] == [10.0, 10.0, 10.0]
    assert 0.0 < report["scores"]["arand"] < 1.0


def test_demo_rejects_unknown_data(tmp_path, capsys):
    code = main(["demo", "--data", "nowhere", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and "synthetic" in err


def test_demo_loop_starts_afresh_over_an_earlier_demo_workspace(tmp_path, monkeypatch):
    # A second `make demo` found the first one's edit log and failed; the demo now clears its own earlier
    # loop workspace (and only a directory that is one: it holds workspace.db) before the loop runs.
    import connectomix.learn.loop as loop_module
    import connectomix.learn.synthetic_loop as synthetic_loop
    from connectomix.run import demo

    seen: list[list[str]] = []

    def fake_run_loop(base, data, workdir, settings, **kwargs):  # the real loop takes minutes
        seen.append(sorted(p.name for p in workdir.iterdir()) if workdir.exists() else [])
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "workspace.db").write_bytes(b"earlier run")
        return {"vi_before": 1.0, "vi_after": 0.9}

    monkeypatch.setattr(loop_module, "run_loop", fake_run_loop)
    monkeypatch.setattr(synthetic_loop, "synthetic_loop_data", lambda seed, precision: (None, None, None))
    workdir = tmp_path / "loop"
    assert demo._demo_loop(workdir, 0, print) == {"loop": {"vi_before": 1.0, "vi_after": 0.9}}
    (workdir / "edits.zarr").mkdir()
    demo._demo_loop(workdir, 0, print)
    other = tmp_path / "not-a-workspace"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    demo._demo_loop(other, 0, print)
    assert seen == [[], [], ["keep.txt"]]
    assert (other / "keep.txt").read_text() == "user data"
