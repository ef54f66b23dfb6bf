"""The ``cx`` command end to end: real sub-commands on real files, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from connectomix.cli import main
from connectomix.volume import open_volume


def run_cx(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def write_h5(path: Path, array: np.ndarray, name: str = "stack") -> str:
    with h5py.File(path, "w") as handle:
        handle.create_dataset(name, data=array)
    return f"h5://{path}#{name}"


def write_zarr(path: Path, array: np.ndarray) -> str:
    url = f"zarr://{path}"
    volume = open_volume(url, "w", shape=array.shape, dtype=array.dtype, chunks=(8, 8, 8))
    volume.write(volume.bounds, array)
    return url


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 5, size=(12, 16, 20)).astype(np.uint64)


# -- happy paths --------------------------------------------------------------------------------------
def test_evaluate_identical_volumes_writes_json(tmp_path, capsys, labels):
    seg = write_zarr(tmp_path / "seg.zarr", labels)
    gt = write_h5(tmp_path / "gt.h5", labels.astype(np.int32))
    code, out, err = run_cx(capsys, "evaluate", seg, gt, "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["vi_split"] == pytest.approx(0.0, abs=1e-12)
    assert report["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert report["arand"] == pytest.approx(0.0, abs=1e-12)
    assert report["n_split_bodies"] == 0 and report["n_merging_segments"] == 0
    assert "vi_split" in out


def test_evaluate_google_ffn_reproduces_published_numbers(testdata, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, _, err = run_cx(capsys, "evaluate", "fib25-ts2/google-ffn", "fib25-ts2/gt", "--json", str(out_json))
    assert code == 0, err
    report = json.loads(out_json.read_text())
    assert report["vi_split"] == pytest.approx(0.899, abs=1e-3)
    assert report["vi_merge"] == pytest.approx(0.919, abs=1e-3)
    assert report["vi"] == pytest.approx(report["vi_split"] + report["vi_merge"])
    assert report["arand"] == pytest.approx(0.157, abs=1e-3)


def test_data_list_and_info(testdata, capsys):
    code, out, err = run_cx(capsys, "data", "list")
    assert code == 0, err
    for name in ("fib25-ts2/raw", "fib25-ts2/gt", "fib25-ts2/google-ffn", "gala-train/boundary"):
        assert name in out
    code, out, err = run_cx(capsys, "data", "info", "fib25-ts2/raw", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["shape_zyx"] == [250, 250, 250]
    assert info["dtype"] == "uint8"
    assert info["resolution_nm_zyx"] == [10.0, 10.0, 10.0]


def test_data_import_copies_exactly_and_refuses_to_overwrite(testdata, tmp_path, capsys):
    destination = f"zarr://{tmp_path / 'raw.zarr'}"
    code, _, err = run_cx(capsys, "data", "import", "fib25-crop100/raw", destination, "--chunks", "32,32,32")
    assert code == 0, err
    imported = open_volume(destination)
    assert imported.chunks == (32, 32, 32)
    assert imported.resolution == (10.0, 10.0, 10.0)
    np.testing.assert_array_equal(imported.read(), open_volume("fib25-crop100/raw").read())
    before = sorted(p.name for p in (tmp_path / "raw.zarr").rglob("*"))
    code, _, err = run_cx(capsys, "data", "import", "fib25-crop100/gt", destination)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert sorted(p.name for p in (tmp_path / "raw.zarr").rglob("*")) == before
    assert not any(p.name.startswith(".raw.zarr.tmp") for p in tmp_path.iterdir())


# -- bad input: one line, non-zero, nothing written -----------------------------------------------------
def test_missing_file(tmp_path, capsys):
    code, _, err = run_cx(capsys, "data", "info", f"zarr://{tmp_path / 'nope.zarr'}")
    assert_one_line_error(code, err, "nope.zarr")


def test_missing_h5_file(tmp_path, capsys):
    code, _, err = run_cx(capsys, "data", "info", f"h5://{tmp_path / 'nope.h5'}#stack")
    assert_one_line_error(code, err, "nope.h5")


def test_unknown_dataset(capsys):
    code, _, err = run_cx(capsys, "data", "info", "fib25-ts2/nonsense")
    assert_one_line_error(code, err, "nonsense", "fib25-ts2/raw")


def test_unknown_scheme(capsys):
    code, _, err = run_cx(capsys, "data", "info", "s4://bucket/volume")
    assert_one_line_error(code, err, "s4://", "zarr://")


def test_float_labels(tmp_path, capsys, labels):
    seg = write_h5(tmp_path / "seg.h5", labels.astype(np.float32))
    gt = write_zarr(tmp_path / "gt.zarr", labels)
    code, _, err = run_cx(capsys, "evaluate", seg, gt)
    assert_one_line_error(code, err, "integer", "float32")


def test_negative_labels(tmp_path, capsys, labels):
    negative = labels.astype(np.int64)
    negative[0, 0, 0] = -3
    seg = write_h5(tmp_path / "seg.h5", negative)
    gt = write_zarr(tmp_path / "gt.zarr", labels)
    code, _, err = run_cx(capsys, "evaluate", seg, gt)
    assert_one_line_error(code, err, "negative")


def test_shape_mismatch(tmp_path, capsys, labels):
    seg = write_zarr(tmp_path / "seg.zarr", labels)
    gt = write_zarr(tmp_path / "gt.zarr", labels[:, :, :10].copy())
    json_out = tmp_path / "r.json"
    code, _, err = run_cx(capsys, "evaluate", seg, gt, "--json", str(json_out))
    assert_one_line_error(code, err, "shape", "(12, 16, 20)", "(12, 16, 10)")
    assert not json_out.exists()


def test_corrupt_hdf5(tmp_path, capsys):
    path = tmp_path / "broken.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    code, _, err = run_cx(capsys, "data", "info", f"h5://{path}#stack")
    assert_one_line_error(code, err, "broken.h5")


def test_corrupt_zarr(tmp_path, capsys):
    path = tmp_path / "broken.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("{ this is not json")
    code, _, err = run_cx(capsys, "data", "info", f"zarr://{path}")
    assert_one_line_error(code, err, "broken.zarr")


def test_corrupt_png(tmp_path, capsys):
    from connectomix.volume.imagestack import write_pngstack

    stack = tmp_path / "stack"
    write_pngstack(stack, np.zeros((3, 8, 8), dtype=np.uint8))
    broken = sorted(stack.glob("*.png"))[1]
    broken.write_bytes(broken.read_bytes()[:20])
    code, _, err = run_cx(capsys, "data", "import", f"pngstack://{stack}", f"zarr://{tmp_path / 'o.zarr'}")
    assert_one_line_error(code, err, broken.name)
    assert not (tmp_path / "o.zarr").exists()
    assert not any(p.name.startswith(".o.zarr") for p in tmp_path.iterdir())


def test_empty_volume(tmp_path, capsys):
    seg = write_h5(tmp_path / "seg.h5", np.zeros((0, 4, 4), dtype=np.uint32))
    gt = write_h5(tmp_path / "gt.h5", np.zeros((0, 4, 4), dtype=np.uint32))
    code, _, err = run_cx(capsys, "evaluate", seg, gt)
    assert_one_line_error(code, err, "empty")


def test_bad_option_value(capsys):
    code, _, err = run_cx(capsys, "data", "import", "a.zarr", "zarr://b.zarr", "--chunks", "1,2")
    assert_one_line_error(code, err, "--chunks", "Z,Y,X")


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "connectomix.cli", "data", "info", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_evaluate_with_erl_on_synthetic_volume(tmp_path, capsys):
    from connectomix.volume.synthetic import make_synthetic

    volume = make_synthetic((32, 48, 48), seed=2)
    gt = write_zarr(tmp_path / "gt.zarr", volume.gt)
    code, out, err = run_cx(capsys, "evaluate", gt, gt, "--erl", "--json", str(tmp_path / "r.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    erl = report["erl"]
    assert erl["n_skeletons"] > 0
    assert erl["erl_nm"] == pytest.approx(erl["max_erl_nm"])  # a perfect segmentation keeps every run whole
    assert "erl_nm" in out
