"""``cx model list|lineage|rollback``, ``cx segment run --model registry:…``, ``cx loop``'s input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from connectomix.cli import main
from connectomix.learn.lora import LoRAConfig, add_lora, extract_adapter, lora_parameters
from connectomix.learn.registry import WeightsRegistry
from connectomix.segment.models import FFNConfig, build_model
from connectomix.volume import open_volume

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))
RAW = "synthetic://raw?shape=24,32,32&seed=3"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def workspace(tmp_path):
    """A registry with a base (v1) and two gated adapters: v2 promoted, v3 promoted after it."""
    torch.manual_seed(0)
    base = build_model(CONFIG).eval()
    registry = WeightsRegistry(f"sqlite:///{tmp_path / 'connectomix.db'}", tmp_path, user="test")
    base_entry = registry.add_base(base, name="tiny")
    entries = []
    for seed, score in ((1, 0.5), (2, 0.25)):
        model = build_model(CONFIG)
        model.load_state_dict(base.state_dict())
        add_lora(model, LoRAConfig(rank=2, alpha=2.0), seed=seed)
        with torch.no_grad():
            for p in lora_parameters(model):
                p.normal_(0.0, 0.2)
        entry = registry.add_adapter(
            extract_adapter(model),
            base=base_entry,
            trained_on_tasks=[f"task-{seed}"],
            trained_on_edits=[seed],
        )
        registry.gate(entry, score, baseline_score=1.0 if not entries else 0.5, region="test box")
        entries.append(entry)
    registry.dispose()
    return tmp_path


def test_model_list_lineage_and_rollback(workspace, capsys) -> None:
    ws = ["--workspace", str(workspace), "--db", str(workspace / "connectomix.db")]
    code, out, err = run(capsys, "model", "list", *ws)
    assert code == 0, err
    assert "tiny:v1" in out and "tiny:v3" in out and "promoted" in out
    code, out, err = run(capsys, "model", "lineage", "tiny:v3", "--json", str(workspace / "l.json"), *ws)
    assert code == 0, err
    lineage = json.loads((workspace / "l.json").read_text())
    assert lineage["tasks"] == ["task-2"] and lineage["edits"] == [2] and lineage["kind"] == "adapter"
    code, out, err = run(capsys, "model", "rollback", "tiny", *ws)
    assert code == 0, err
    assert "tiny:v2" in out
    code, _, err = run(capsys, "model", "lineage", "tiny:v9", *ws)
    assert code == 1 and err.startswith("error: ") and "version 9" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "model", "rollback", "tiny", "--to", "tiny:v3", "--to-bad", *ws)
    assert code == 2


def test_segment_run_serves_the_promoted_version_unless_told(workspace, tmp_path, capsys) -> None:
    ws = ["--workspace", str(workspace), "--db", str(workspace / "connectomix.db")]
    common = ["segment", "run", RAW, "--precision", "fp32", "--min-size", "10", "--block", "24,32,32"]
    outputs = {}
    for ref in ("registry:tiny", "registry:tiny:v3", "registry:tiny:v1"):
        out = tmp_path / f"{ref.replace(':', '_')}.zarr"
        code, _, err = run(capsys, *common, "--model", ref, "--out", f"zarr://{out}", *ws)
        assert code == 0, err
        outputs[ref] = open_volume(f"zarr://{tmp_path / (out.stem + '-probability.zarr')}").read()
    # v3 is served (promoted last): the default equals v3 and differs from the base
    np.testing.assert_array_equal(outputs["registry:tiny"], outputs["registry:tiny:v3"])
    assert not np.array_equal(outputs["registry:tiny"], outputs["registry:tiny:v1"])
    code, _, err = run(
        capsys, *common, "--model", "registry:nope", "--out", f"zarr://{tmp_path / 'x.zarr'}", *ws
    )
    assert code == 1 and "nope" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--data", "mnist"], "--data must be one of fib25-ts2, synthetic"),
        (["--precision", "fp8"], "fp32, bf16 or auto"),
        (["--corrections", "0"], "corrections must be an integer >= 1"),
        (["--curve", "10,x"], "comma-separated task counts"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--top-fraction", "1.5"], "--top-fraction must be in (0, 1)"),
        (["--nms-radius", "-1"], "--nms-radius must be >= 0 voxels"),
        (["--context", "-2"], "--context must be >= 0 voxels"),
        (["--lr", "0"], "--lr must be a learning rate in (0, 1)"),
        (["--centre-sampling", "random"], "--centre-sampling must be balanced or uniform"),
        (["--anchor-weight", "-1"], "--anchor-weight must be a number >= 0"),
        (["--region-c", "1,2:3,4,5"], "--region-c must look like X0,Y0,Z0:X1,Y1,Z1"),
        (["--region-b", "5,5,5:5,9,9"], "--region-b is empty"),
        (["--region-c", "0,0,500:48,64,600"], "lies outside the volume"),
        (["--region-a", "0,0,0:8,8,8", "--region-c", "4,4,4:12,12,12"], "regions A and C overlap"),
    ],
)
def test_loop_bad_input_is_one_line(tmp_path, capsys, args, fragment) -> None:
    code, _, err = run(capsys, "loop", *args, "--json", str(tmp_path / "loop.json"))
    assert code == 1, err
    assert err.startswith("error: ") and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "loop.json").exists()
