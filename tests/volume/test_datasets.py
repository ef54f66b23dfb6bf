"""Named datasets on the real data (skipped where ``shared/testdata`` is absent).

Decoded arrays are cached per process by ``connectomix.volume.datasets`` itself, so each layer is decoded once
for the whole module however many tests open it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fastremap
import numpy as np
import pytest

from connectomix.config import get_settings
from connectomix.errors import InputError, NotFoundError, UnsupportedError
from connectomix.volume import ArrayVolume, open_volume
from connectomix.volume.datasets import (
    DATASETS,
    data_dir,
    dataset_names,
    is_dataset_name,
    list_datasets,
    load_array,
)

# name -> (shape (z, y, x), dtype, resolution nm (z, y, x), kind)
EXPECTED: dict[str, tuple[tuple[int, int, int], str, tuple[float, float, float], str]] = {
    "fib25-ts2/raw": ((250, 250, 250), "uint8", (10, 10, 10), "image"),
    "fib25-ts2/gt": ((250, 250, 250), "uint64", (10, 10, 10), "segmentation"),
    "fib25-ts2/overseg": ((250, 250, 250), "uint64", (10, 10, 10), "segmentation"),
    "fib25-ts2/google-ffn": ((250, 250, 250), "uint64", (10, 10, 10), "segmentation"),
    "fib25-crop100/raw": ((100, 100, 100), "uint8", (10, 10, 10), "image"),
    "fib25-crop100/gt": ((100, 100, 100), "uint64", (10, 10, 10), "segmentation"),
    "fib25-crop100/overseg": ((100, 100, 100), "uint64", (10, 10, 10), "segmentation"),
    "gala-train/raw": ((50, 100, 200), "uint8", (10, 10, 10), "image"),
    "gala-train/gt": ((50, 100, 200), "uint64", (10, 10, 10), "segmentation"),
    "gala-train/boundary": ((50, 100, 200), "float32", (10, 10, 10), "image"),
    "gala-train/ws": ((50, 100, 200), "uint64", (10, 10, 10), "segmentation"),
    "gala-test/raw": ((50, 100, 200), "uint8", (10, 10, 10), "image"),
    "gala-test/gt": ((50, 100, 200), "uint64", (10, 10, 10), "segmentation"),
    "gala-test/boundary": ((50, 100, 200), "float32", (10, 10, 10), "image"),
    "gala-test/ws": ((50, 100, 200), "uint64", (10, 10, 10), "segmentation"),
    "pinky40/seg": ((512, 512, 512), "uint32", (40, 32, 32), "segmentation"),
    "snemi-mini/gt": ((32, 160, 160), "uint64", (30, 6, 6), "segmentation"),
    "snemi-mini/ws": ((32, 160, 160), "uint64", (30, 6, 6), "segmentation"),
    "snemi-mini/boundary": ((32, 160, 160), "float32", (30, 6, 6), "image"),
}
CROP = (slice(75, 175),) * 3


@pytest.fixture
def data(testdata: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point the library at the same data folder the ``testdata`` fixture found."""
    monkeypatch.setenv("CX_DATA_DIR", str(testdata))
    get_settings.cache_clear()
    yield testdata
    get_settings.cache_clear()


@pytest.fixture
def empty_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CX_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour (inside the array) of a different label."""
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        differs = a[1:] != a[:-1]
        m[1:] |= differs
        m[:-1] |= differs
    return mask


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if ``b`` is ``a`` up to a one-to-one relabelling."""
    pairs = np.unique(np.stack([a.ravel().astype(np.uint64), b.ravel().astype(np.uint64)]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


# -- every layer --------------------------------------------------------------------------------------------
def test_registry_matches_expectations() -> None:
    assert sorted(dataset_names()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_layer_opens(data: Path, name: str) -> None:
    shape, dtype, resolution, kind = EXPECTED[name]
    volume = open_volume(name)
    assert isinstance(volume, ArrayVolume)
    assert volume.url == name
    assert volume.shape == shape
    assert volume.dtype == np.dtype(dtype)
    assert volume.resolution == tuple(float(r) for r in resolution)
    assert volume.kind == kind
    assert volume.chunks == tuple(min(64, s) for s in shape)
    assert not volume.writable
    array = load_array(name)
    assert not array.flags.writeable  # the shared decoded copy cannot be changed by a caller
    assert array.flags.c_contiguous


def test_list_datasets_all_available(data: Path) -> None:
    infos = list_datasets()
    assert [i.name for i in infos] == dataset_names()
    assert all(i.available for i in infos)
    by_name = {i.name: i for i in infos}
    assert by_name["pinky40/seg"].resolution_nm_zyx == (40.0, 32.0, 32.0)
    assert "CC BY" in by_name["fib25-ts2/gt"].source
    assert "10 nm isotropic" in by_name["gala-test/raw"].description


# -- facts from testdata/README.md --------------------------------------------------------------------------
def test_fib25_gt_bodies(data: Path) -> None:
    gt = load_array("fib25-ts2/gt")
    ids, counts = np.unique(gt, return_counts=True)
    # "526 bodies" counts the body id 0 of the transforms table: 525 non-zero bodies plus 0 (250 voxels).
    assert len(ids) == 526
    assert ids[0] == 0 and counts[0] == 250


def test_fib25_raw_aligns_with_bodies(data: Path) -> None:
    raw = load_array("fib25-ts2/raw")
    boundary = boundary_mask(load_array("fib25-ts2/gt"))
    assert raw[boundary].mean() == pytest.approx(99.3, abs=1.0)
    assert raw[~boundary].mean() == pytest.approx(134.4, abs=1.0)
    # Transposed labels would not align (README: 128-130).
    assert 125 < raw[boundary.transpose(2, 1, 0)].mean() < 133


def test_fib25_overseg_mapped_through_transforms(data: Path) -> None:
    overseg = load_array("fib25-ts2/overseg")
    assert len(fastremap.unique(overseg)) == 3051  # 3,337 supervoxels merged to 3,051 by its transforms
    assert same_partition(overseg[CROP], load_array("fib25-crop100/overseg"))


def test_crop100_is_a_crop_of_ts2(data: Path) -> None:
    assert np.array_equal(load_array("fib25-crop100/raw"), load_array("fib25-ts2/raw")[CROP])
    crop_gt = load_array("fib25-crop100/gt")
    assert same_partition(crop_gt, load_array("fib25-ts2/gt")[CROP])
    assert len(np.unique(crop_gt[crop_gt != 0])) == 40


def test_google_ffn_zero_fraction(data: Path) -> None:
    seg = load_array("fib25-ts2/google-ffn")
    assert np.count_nonzero(seg == 0) / seg.size == pytest.approx(0.113, abs=0.001)


@pytest.mark.parametrize(("split", "on_boundary", "inside"), [("train", 88.9, 162.6), ("test", 85.5, 161.2)])
def test_gala_raw_and_boundary_align(data: Path, split: str, on_boundary: float, inside: float) -> None:
    raw = load_array(f"gala-{split}/raw")
    mask = boundary_mask(load_array(f"gala-{split}/gt"))
    assert raw[mask].mean() == pytest.approx(on_boundary, abs=1.0)
    assert raw[~mask].mean() == pytest.approx(inside, abs=1.0)
    probability = load_array(f"gala-{split}/boundary")
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert probability[mask].mean() > probability[~mask].mean() + 0.5


def test_snemi_boundary_is_high_on_label_boundaries(data: Path) -> None:
    mask = boundary_mask(load_array("snemi-mini/gt"))
    probability = load_array("snemi-mini/boundary")
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert probability[mask].mean() > probability[~mask].mean() + 0.2
    fragments = load_array("snemi-mini/ws")
    assert not set(np.unique(fragments[0]).tolist()) & set(np.unique(fragments[1]).tolist())


def test_pinky40_labels_and_axis_order(data: Path) -> None:
    seg = load_array("pinky40/seg")
    labels = fastremap.unique(seg)
    assert len(labels) == 2524 and labels[0] == 0  # README's 2,524 labels include 0
    # z (axis 0) is the 40 nm section axis: labels change most often between neighbours along it.
    change = [
        np.count_nonzero(np.diff(seg[::2, ::2, ::2], axis=a)) / seg[::2, ::2, ::2].size for a in range(3)
    ]
    assert change[0] > 1.5 * max(change[1], change[2])


# -- opening ------------------------------------------------------------------------------------------------
def test_bare_and_scheme_names_open_the_same_data(data: Path) -> None:
    bare = open_volume("fib25-crop100/gt")
    schemed = open_volume("dataset://fib25-crop100/gt")
    assert np.array_equal(bare.read(), schemed.read())
    assert bare._array is schemed._array  # decoded once, shared


def test_decoded_once(data: Path) -> None:
    from connectomix.volume.datasets import _decode

    open_volume("gala-test/ws")
    before = _decode.cache_info()
    open_volume("gala-test/ws")
    after = _decode.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_resolution_override(data: Path) -> None:
    volume = open_volume("dataset://pinky40/seg?resolution=8,8,40")  # x, y, z
    assert volume.resolution == (40.0, 8.0, 8.0)


def test_is_dataset_name() -> None:
    assert is_dataset_name("fib25-ts2/raw")
    assert is_dataset_name("fib25-ts2/no-such-layer")  # routed, then a helpful error
    assert not is_dataset_name("fib25-ts2")
    assert not is_dataset_name("fib25-ts2/")
    assert not is_dataset_name("some/dir/of/pngs")
    assert set(DATASETS) >= {"fib25-ts2", "pinky40"}


def test_unknown_dataset(data: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        open_volume("dataset://no-such/raw")
    message = str(info.value)
    assert "no-such/raw" in message and "fib25-ts2/raw" in message and "pinky40/seg" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="cx data list"):  # bare unknown names cannot be told from paths
        open_volume("no-such/raw")


def test_unknown_layer(data: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        open_volume("fib25-ts2/nope")
    message = str(info.value)
    assert "'nope'" in message and "fib25-ts2/raw" in message and "fib25-ts2/google-ffn" in message
    assert "pinky40" not in message


@pytest.mark.parametrize("mode", ["r+", "a", "w"])
def test_write_mode_unsupported(data: Path, mode: str) -> None:
    with pytest.raises(UnsupportedError, match="cx data import"):
        open_volume("fib25-crop100/raw", mode, shape=(4, 4, 4), dtype="uint8")


def test_opened_dataset_is_read_only(data: Path) -> None:
    from connectomix.volume import Box

    volume = open_volume("fib25-crop100/raw")
    with pytest.raises(UnsupportedError):
        volume.write(Box((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.uint8))


def test_missing_data_dir(empty_data_dir: Path) -> None:
    assert data_dir() is None
    with pytest.raises(NotFoundError, match="CX_DATA_DIR"):
        open_volume("fib25-ts2/raw")
    assert not any(info.available for info in list_datasets())


def test_data_dir_defaults_without_env(
    testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CX_DATA_DIR", raising=False)
    monkeypatch.setenv("CX_CONFIG", str(tmp_path / "none.toml"))  # no cx.toml from the working directory
    get_settings.cache_clear()
    try:
        beside_repo = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
        monkeypatch.chdir(
            tmp_path
        )  # ../shared/testdata from here does not exist: falls back to the repo root
        found = data_dir()
        if (beside_repo / "README.md").is_file():
            assert found is not None and found.resolve() == beside_repo.resolve()
        else:
            assert found is None
    finally:
        get_settings.cache_clear()
