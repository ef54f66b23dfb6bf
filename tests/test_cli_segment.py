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
    assert code == 1 and "fp32 or bf16" in err
