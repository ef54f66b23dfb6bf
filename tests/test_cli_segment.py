"""``cx model`` and ``cx segment`` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from connectomix.cli import main
from connectomix.segment.models import count_parameters, load_model


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is fastest and avoids oversubscription
    yield
    torch.set_num_threads(previous)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_tf_fib25_checkpoint(testdata, tmp_path, capsys):
    checkpoint = testdata / "reference" / "google_ffn_fib25" / "model.ckpt-27465036"
    out = tmp_path / "fib25.safetensors"
    code, stdout, err = run(capsys, "model", "import-tf", str(checkpoint), "--out", str(out))
    assert code == 0, err
    assert "638,433 parameters" in stdout
    model = load_model(out)
    assert count_parameters(model) == 638_433
    code, stdout, err = run(capsys, "model", "info", str(out), "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert (
        info["fov_zyx"] == [33, 33, 33] and info["deltas_zyx"] == [8, 8, 8] and info["parameters"] == 638_433
    )


def test_import_tf_depth_mismatch_is_one_line(testdata, tmp_path, capsys):
    checkpoint = testdata / "reference" / "google_ffn_fib25"
    code, _, err = run(
        capsys, "model", "import-tf", str(checkpoint), "--depth", "9", "--out", str(tmp_path / "m")
    )
    assert code == 1 and err.startswith("error: ") and "depth 9" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_model_info_rejects_a_non_model_file(tmp_path, capsys):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    code, _, err = run(capsys, "model", "info", str(path))
    assert code == 1 and "safetensors" in err and "Traceback" not in err


def test_train_then_resume(tmp_path, capsys):
    common = [
        "segment", "train", "synthetic://raw?size=40&seed=1", "synthetic://gt?size=40&seed=1",
        "--out", str(tmp_path / "m.safetensors"), "--depth", "2", "--width", "8", "--fov", "9,9,9",
        "--deltas", "2,2,2", "--optimizer", "adam", "--checkpoint-dir", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    code, stdout, err = run(capsys, *common, "--steps", "6")
    assert code == 0, err
    code, stdout, err = run(capsys, *common, "--steps", "10")
    assert code == 0, err
    assert "resumed from step 6" in stdout
    model = load_model(tmp_path / "m.safetensors")
    assert model.config.fov_zyx == (9, 9, 9)


def test_train_rejects_unknown_precision(capsys):
    code, _, err = run(
        capsys, "segment", "train", "synthetic://raw?size=32", "synthetic://gt?size=32",
        "--out", "x.safetensors", "--precision", "fp8",
    )  # fmt: skip
    assert code == 1 and "fp32, bf16 or auto" in err


@pytest.fixture
def tiny_model(tmp_path):
    from connectomix.segment.models import FFNConfig, build_model, save_model

    torch.manual_seed(0)
    config = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(2, 2, 2))
    return save_model(build_model(config), tmp_path / "tiny.safetensors")


def test_segment_run_ffn_blockwise_writes_segmentation_and_report(tmp_path, capsys, tiny_model):
    from connectomix.volume import open_volume

    out = tmp_path / "seg.zarr"
    report_path = tmp_path / "run.json"
    code, _, err = run(
        capsys, "segment", "run", "synthetic://raw?shape=24,40,40&seed=3", "--model", str(tiny_model),
        "--out", f"zarr://{out}", "--block", "24,20,20", "--precision", "fp32", "--min-size", "10",
        "--json", str(report_path),
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["blocks"] == 4 and report["blocks_resumed"] == 0
    assert report["steps"] > 0 and report["voxels_per_second"] > 0
    seg = open_volume(f"zarr://{out}")
    assert seg.dtype == "uint64" and seg.shape == (24, 40, 40)
    assert open_volume(f"zarr://{tmp_path / 'seg-probability.zarr'}").dtype == "uint8"
    # A second run refuses to replace the finished output unless asked to.
    code, _, err = run(
        capsys, "segment", "run", "synthetic://raw?shape=24,40,40&seed=3", "--model", str(tiny_model),
        "--out", f"zarr://{out}", "--block", "24,20,20", "--precision", "fp32",
    )  # fmt: skip
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_segment_run_consensus_reports_both_runs(tmp_path, capsys, tiny_model):
    common = ["segment", "run", "synthetic://raw?shape=24,40,40&seed=3", "--model", str(tiny_model),
              "--block", "24,40,40", "--precision", "fp32", "--min-size", "10"]  # fmt: skip
    reports = {}
    for name, extra in (("plain", []), ("consensus", ["--consensus"])):
        path = tmp_path / f"{name}.json"
        code, _, err = run(
            capsys, *common, "--out", f"zarr://{tmp_path / name}.zarr", "--json", str(path), *extra
        )
        assert code == 0, err
        reports[name] = json.loads(path.read_text())
    assert reports["consensus"]["consensus"] is True and reports["plain"]["consensus"] is False
    # The forward run is repeated in reverse seed order: strictly more network steps.
    assert reports["consensus"]["steps"] > reports["plain"]["steps"] > 0


def test_segment_run_baseline_on_real_crop(testdata, tmp_path, capsys):
    from connectomix.evaluate import evaluate
    from connectomix.volume import open_volume

    out = f"zarr://{tmp_path / 'base.zarr'}"
    code, _, err = run(capsys, "segment", "run", "fib25-crop100/raw", "--model", "baseline", "--out", out,
                       "--block", "64,64,64")  # fmt: skip
    assert code == 0, err
    scores = evaluate(open_volume(out), open_volume("fib25-crop100/gt"))
    assert scores.vi < 2.0 and scores.arand < 0.2  # measured: VI 1.57, ARAND 0.099


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--precision", "fp16"], "fp32, bf16 or auto"),
        (["--box", "0,0,0:100,10,10"], "outside"),
        (["--box", "0,0,0"], "X0,Y0,Z0:X1,Y1,Z1"),
        (["--block", "8,8"], "--block"),
        (["--device", "tpu"], "device"),
        (["--seed-policy", "reverse-peaks"], "unknown seed policy"),
    ],
)
def test_segment_run_bad_input_is_one_line(tmp_path, capsys, tiny_model, extra, fragment):
    code, _, err = run(
        capsys, "segment", "run", "synthetic://raw?shape=24,40,40", "--model", str(tiny_model),
        "--out", f"zarr://{tmp_path / 'o.zarr'}", *extra,
    )  # fmt: skip
    assert code != 0 and err.startswith("error: ") and fragment in err and "Traceback" not in err
    assert not (tmp_path / "o.zarr").exists()


def test_segment_run_baseline_rejects_ffn_only_flags(tmp_path, capsys):
    code, _, err = run(
        capsys, "segment", "run", "synthetic://raw?shape=24,40,40", "--model", "baseline",
        "--out", f"zarr://{tmp_path / 'o.zarr'}", "--consensus",
    )  # fmt: skip
    assert code == 1 and "FFN models" in err and not (tmp_path / "o.zarr").exists()


def test_segment_run_rejects_a_model_whose_fov_exceeds_the_volume(tmp_path, capsys):
    from connectomix.segment.models import FFNConfig, build_model, save_model

    big = save_model(
        build_model(FFNConfig(depth=1, width=4, fov_zyx=(33, 33, 33))), tmp_path / "big.safetensors"
    )
    code, _, err = run(
        capsys, "segment", "run", "synthetic://raw?shape=16,40,40", "--model", str(big),
        "--out", f"zarr://{tmp_path / 'o.zarr'}", "--block", "16,40,40",
    )  # fmt: skip
    assert code != 0 and err.startswith("error: ") and "Traceback" not in err
