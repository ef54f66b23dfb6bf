"""``cx plan``: figures consistent with their own inputs; the operations commands from the command line."""

from __future__ import annotations

import json
import math

import pytest

from connectomix.cli import main
from connectomix.errors import InputError
from connectomix.run.plan import PlanAssumptions, parse_device_values, plan_volume, presets


def test_plan_follows_from_its_assumptions():
    a = PlanAssumptions(
        steps_per_voxel=1e-3,
        ms_per_step={"gpu": 10.0, "cpu": 100.0},
        price_per_hour_usd={"gpu": 2.0},
        block_zyx=(100, 100, 100),
        overlap_zyx=(25, 25, 25),
    )
    plan = plan_volume((100.0, 100.0, 40.0), (8.0, 8.0, 40.0), a)
    voxels = (100_000 / 8) * (100_000 / 8) * (40_000 / 40)
    assert plan.voxels == pytest.approx(voxels)
    assert a.block_overhead == pytest.approx(1.5**3)
    assert plan.network_steps == pytest.approx(voxels * 1e-3 * 3.375)
    gpu, cpu = sorted(plan.devices, key=lambda d: d.ms_per_step)
    assert gpu.device_hours == pytest.approx(plan.network_steps * 0.010 / 3600)
    assert cpu.device_hours == pytest.approx(10 * gpu.device_hours)
    assert gpu.cost_usd == pytest.approx(2.0 * gpu.device_hours) and cpu.cost_usd is None
    assert plan.storage_bytes["segmentation"] == pytest.approx(voxels * 8 / a.segmentation_compression)
    assert plan.storage_bytes["raw"] == pytest.approx(voxels / a.raw_compression)
    # twice the size along one axis: twice everything
    double = plan_volume((200.0, 100.0, 40.0), (8.0, 8.0, 40.0), a)
    assert double.network_steps == pytest.approx(2 * plan.network_steps)
    assert double.storage_bytes["embeddings"] == pytest.approx(2 * plan.storage_bytes["embeddings"])


def test_presets_and_default_measurements():
    cube, brain = presets((8.0, 8.0, 40.0))
    assert cube.volume_mm3 == pytest.approx(1.0) and brain.volume_mm3 == pytest.approx(500.0)
    assert brain.network_steps == pytest.approx(500 * cube.network_steps)
    a = PlanAssumptions()
    assert a.steps_per_voxel == pytest.approx(25_799 / 250**3)  # Google's published FIB-25 run
    assert a.ms_per_step["p100"] == pytest.approx(308_000 / 25_799)
    assert a.block_overhead == pytest.approx((176 / 128) ** 3)


def test_bad_plan_inputs_are_refused():
    with pytest.raises(InputError, match="3 positive numbers"):
        plan_volume((1.0, 1.0), (8.0, 8.0, 40.0))
    with pytest.raises(InputError, match="positive"):
        plan_volume((1.0, -1.0, 1.0), (8.0, 8.0, 40.0))
    with pytest.raises(InputError, match="DEVICE=NUMBER"):
        parse_device_values(["h100"], "--ms-per-step")
    with pytest.raises(InputError, match="steps_per_voxel"):
        PlanAssumptions(steps_per_voxel=0.0)
    assert parse_device_values(["h100=2.5"], "x") == {"h100": 2.5}


def test_cx_plan_prints_assumptions_and_writes_consistent_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        [
            "plan",
            "--size-um",
            "500,500,100",
            "--resolution-nm",
            "8,8,40",
            "--ms-per-step",
            "h100=3",
            "--price",
            "h100=4",
            "--json",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "assumptions:" in captured.out and "steps per voxel" in captured.out
    plans = json.loads(out.read_text())["plans"]
    assert [p["name"] for p in plans] == ["requested", "1 mm³ cube", "whole mouse brain (500 mm³)"]
    requested = plans[0]
    assert requested["voxels"] == pytest.approx(500_000 / 8 * 500_000 / 8 * 100_000 / 40)
    h100 = next(d for d in requested["devices"] if d["device"] == "h100")
    assert h100["device_hours"] == pytest.approx(requested["network_steps"] * 0.003 / 3600)
    assert h100["cost_usd"] == pytest.approx(4 * h100["device_hours"])
    assert math.isclose(requested["volume_mm3"], 0.025)
    assert main(["plan", "--size-um", "1,2"]) == 1
    assert "--size-um must be 3" in capsys.readouterr().err


def test_cx_runs_and_metrics_serve(tmp_path, capsys):
    from connectomix.observe.store import store_values

    db = f"sqlite:///{tmp_path / 'cx.db'}"
    store_values(db, [("connectomix_arand", {"segmentation": "s"}, 0.5)])
    assert main(["metrics", "serve", "--port", "0", "--db", db, "--seconds", "0.2"]) == 0
    assert "serving metrics at http://127.0.0.1:" in capsys.readouterr().out
    assert main(["runs", "--db", db]) == 0
    assert main(["metrics", "serve", "--port", "99999", "--db", db, "--seconds", "0.1"]) == 1
    assert "port must be" in capsys.readouterr().err


def test_cx_segment_run_on_dask_matches_in_process(tmp_path, capsys):
    raw = "synthetic://raw?shape=48,64,64&seed=2"
    common = ["--model", "baseline", "--block", "32,32,32", "--overlap", "8,8,8"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert (
        main(["segment", "run", raw, *common, "--out", f"zarr://{tmp_path / 'a.zarr'}", "--json", str(a)])
        == 0
    )
    code = main(
        [
            "segment",
            "run",
            raw,
            *common,
            "--out",
            f"zarr://{tmp_path / 'b.zarr'}",
            "--json",
            str(b),
            "--executor",
            "dask",
            "--workers",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert rb["executor"] == "dask" and rb["workers"] == 2 and ra["executor"] == "inprocess"
    assert ra["objects"] == rb["objects"] and ra["links"] == rb["links"]
    assert (
        main(["segment", "run", raw, *common, "--out", f"zarr://{tmp_path / 'c.zarr'}", "--executor", "ray"])
        == 1
    )
    assert "unknown executor 'ray'" in capsys.readouterr().err
