"""VI, ARAND, the contingency table and the split/merge lists, checked against scikit-image 0.26."""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import fastremap
import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from connectomix.errors import CxError, InputError
from connectomix.evaluate import (
    Contingency,
    adapted_rand,
    contingency,
    evaluate,
    merging_segments,
    split_bodies,
)
from connectomix.evaluate import variation_of_information as our_vi
from connectomix.volume import ArrayVolume, open_volume

contingency_module = sys.modules["connectomix.evaluate.contingency"]
TOL = 1e-9


def skimage_scores(seg: np.ndarray, gt: np.ndarray) -> tuple[float, float, float, float, float]:
    """(vi_split, vi_merge, arand, precision, recall) from scikit-image, ids renumbered densely first.

    scikit-image sizes its sparse table by the largest id, so ids above a few million (and all uint64 ids
    beyond 2**53) must be renumbered; renumbering keeps 0 as 0 and changes no score. Its precision and
    recall are swapped relative to the standard definitions (scikit-image issue #6485).
    """
    seg_dense, _ = fastremap.renumber(np.ascontiguousarray(seg), preserve_zero=True)
    gt_dense, _ = fastremap.renumber(np.ascontiguousarray(gt), preserve_zero=True)
    seg_dense, gt_dense = seg_dense.astype(np.int64), gt_dense.astype(np.int64)
    split, merge = variation_of_information(gt_dense, seg_dense)
    arand, sk_precision, sk_recall = adapted_rand_error(gt_dense, seg_dense, ignore_labels=(0,))
    return float(split), float(merge), float(arand), float(sk_recall), float(sk_precision)


def assert_matches_skimage(seg: np.ndarray, gt: np.ndarray) -> None:
    scores = evaluate(seg, gt, min_overlap=1)
    expected = skimage_scores(seg, gt)
    ours = (scores.vi_split, scores.vi_merge, scores.arand, scores.arand_precision, scores.arand_recall)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    assert scores.vi == pytest.approx(scores.vi_split + scores.vi_merge)


def brute_force_table(seg: np.ndarray, gt: np.ndarray) -> dict[tuple[int, int], int]:
    pairs, counts = np.unique(
        np.stack([seg.ravel().astype(np.uint64), gt.ravel().astype(np.uint64)]), axis=1, return_counts=True
    )
    return {(int(s), int(g)): int(c) for (s, g), c in zip(pairs.T, counts, strict=True)}


def as_dict(table: Contingency) -> dict[tuple[int, int], int]:
    return {
        (int(s), int(g)): int(c)
        for s, g, c in zip(table.seg_ids.tolist(), table.gt_ids.tolist(), table.counts.tolist(), strict=True)
    }


# -- against scikit-image --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_random_labels_match_skimage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (6 + seed, 9, 13)
    gt = rng.integers(0, 5 + 3 * seed, size=shape).astype(np.uint32)
    seg = rng.integers(0, 4 + 5 * seed, size=shape).astype(np.int16)
    assert_matches_skimage(seg, gt)


@pytest.mark.parametrize("seed", range(3))
def test_blocky_labels_match_skimage(seed: int) -> None:
    """Piecewise-constant labels (long runs, like real segmentations) with background on both sides."""
    rng = np.random.default_rng(100 + seed)
    gt = np.kron(rng.integers(0, 6, size=(4, 5, 6)), np.ones((3, 4, 5), dtype=np.int64)).astype(np.uint64)
    seg = gt.copy()
    seg[:, :, 12:] += 7  # split every body crossing x = 12
    seg[seg == 3] = 2  # merge two bodies
    seg[rng.random(seg.shape) < 0.05] = 0  # some unsegmented voxels
    assert_matches_skimage(seg, gt)


def test_huge_uint64_ids_match_relabelled_skimage() -> None:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 6, size=(8, 10, 12))
    gt = np.where(base > 0, np.uint64(2**63) + base.astype(np.uint64), 0).astype(np.uint64)
    seg = (np.uint64(2**60 + 12345) * rng.integers(0, 4, size=base.shape).astype(np.uint64)).astype(np.uint64)
    assert seg.max() > 2**53 and gt.max() > 2**63
    assert_matches_skimage(seg, gt)
    table = contingency(seg, gt)
    assert table.seg_ids.dtype == np.uint64 and table.gt_ids.dtype == np.uint64
    assert as_dict(table) == brute_force_table(seg, gt)


def test_identical_segmentations_score_zero() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 10, size=(10, 10, 10)).astype(np.uint64)
    scores = evaluate(gt, gt)
    assert scores.vi_split == 0.0 and scores.vi_merge == 0.0 and scores.vi == 0.0
    assert scores.arand == pytest.approx(0.0, abs=1e-15)
    assert scores.n_split_bodies == 0 and scores.n_merging_segments == 0
    assert_matches_skimage(gt, gt)


def test_one_segment_against_many_bodies() -> None:
    gt = np.arange(4 * 5 * 6, dtype=np.uint64).reshape(4, 5, 6) // 10 + 1  # 12 bodies of 10 voxels
    seg = np.ones_like(gt)
    assert_matches_skimage(seg, gt)
    scores = evaluate(seg, gt, min_overlap=1)
    assert scores.vi_split == 0.0
    assert scores.vi_merge == pytest.approx(np.log2(12))  # equal bodies: H(GT|SEG) = log2(#bodies)
    assert scores.arand_recall == 1.0  # nothing split
    assert scores.n_merging_segments == 1 and len(scores.merging_segments[1]) == 12
    assert_matches_skimage(gt, seg)  # and the other way round: pure over-segmentation


def test_ignore_gt_background_matches_skimage_ignore_labels() -> None:
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(7, 8, 9))
    seg = rng.integers(0, 6, size=(7, 8, 9))
    expected = variation_of_information(gt, seg, ignore_labels=(0,))
    ours = our_vi(contingency(seg, gt), ignore_gt_background=True)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOL)
    assert ours != our_vi(contingency(seg, gt))


def test_arand_precision_and_recall_have_standard_meaning() -> None:
    gt = np.array([[[1, 1, 2, 2, 3, 3]]])
    merged = np.ones_like(gt)  # one segment: merges everything, splits nothing
    arand, precision, recall = adapted_rand(contingency(merged, gt))
    assert recall == 1.0 and precision < 1.0
    gt = np.array([[[1, 1, 1, 1, 2, 2, 2, 2]]])
    split = np.array([[[1, 1, 2, 2, 3, 3, 4, 4]]])  # every body cut in two: splits only
    arand, precision, recall = adapted_rand(contingency(split, gt))
    assert precision == 1.0 and recall == pytest.approx(1 / 3) and arand == pytest.approx(0.5)
    singletons = np.arange(8).reshape(gt.shape) + 1  # no pair of voxels shares a segment: precision 0/0
    assert np.isnan(adapted_rand(contingency(singletons, gt))[1])


def test_arand_undefined_without_labelled_gt_is_nan() -> None:
    gt = np.zeros((2, 3, 4), dtype=np.uint8)
    scores = evaluate(np.ones_like(gt), gt)
    assert np.isnan(scores.arand)
    assert scores.to_dict()["arand"] is None


# -- the table -------------------------------------------------------------------------------------------
def test_table_equals_brute_force_and_is_sorted() -> None:
    rng = np.random.default_rng(11)
    gt = rng.integers(0, 30, size=(9, 11, 13)).astype(np.int32)
    seg = rng.integers(0, 50, size=(9, 11, 13)).astype(np.uint8)
    table = contingency(seg, gt)
    assert as_dict(table) == brute_force_table(seg, gt)
    assert table.n_voxels == seg.size == int(table.counts.sum())
    order = np.lexsort((table.gt_ids, table.seg_ids))
    assert np.array_equal(order, np.arange(len(table)))
    ids, sizes = table.gt_sizes()
    assert np.array_equal(sizes, np.bincount(gt.ravel())[ids.astype(np.int64)])


def test_memory_layouts_give_the_same_table() -> None:
    rng = np.random.default_rng(5)
    gt = rng.integers(0, 8, size=(6, 7, 8)).astype(np.uint64)
    seg = rng.integers(0, 8, size=(6, 7, 8)).astype(np.uint32)
    expected = as_dict(contingency(seg, gt))
    assert as_dict(contingency(np.asfortranarray(seg), np.asfortranarray(gt))) == expected
    assert as_dict(contingency(np.asfortranarray(seg), gt)) == expected
    assert as_dict(contingency(seg[:, ::-1], gt[:, ::-1])) == expected  # strided views
    assert as_dict(contingency(ArrayVolume(seg), gt)) == expected  # a Volume with an array
    assert as_dict(contingency(seg.reshape(6, 56), gt.reshape(6, 56))) == expected  # any ndim for arrays


def _zarr(path: Path, array: np.ndarray, chunks: tuple[int, int, int]):
    volume = open_volume(f"zarr://{path}", "w", shape=array.shape, dtype=array.dtype, chunks=chunks)
    volume.write(volume.bounds, array)
    return open_volume(f"zarr://{path}")


def test_chunked_volumes_equal_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    gt = np.kron(rng.integers(0, 9, size=(5, 6, 7)), np.ones((4, 5, 6), dtype=np.uint64)).astype(np.uint64)
    seg = gt.copy()
    seg[:, 13:, :] += 20
    seg[rng.random(seg.shape) < 0.1] = rng.integers(0, 40)
    seg_volume = _zarr(tmp_path / "seg.zarr", seg, (8, 8, 8))
    gt_volume = _zarr(tmp_path / "gt.zarr", gt, (16, 16, 16))
    reference = contingency(seg, gt)
    monkeypatch.setattr(contingency_module, "_PENDING_PAIRS", 50)  # force intermediate reductions
    chunked = contingency(seg_volume, gt_volume, block_shape=(7, 9, 11))
    for field in ("seg_ids", "gt_ids", "counts"):
        assert np.array_equal(getattr(chunked, field), getattr(reference, field)), field
    assert chunked.n_voxels == reference.n_voxels
    assert evaluate(seg_volume, gt_volume, block_shape=(7, 9, 11)) == evaluate(seg, gt)

    monkeypatch.setattr(contingency_module, "_SLAB_VOXELS", 1000)  # arrays in many flat slabs
    assert as_dict(contingency(seg, gt)) == as_dict(reference)


def test_progress_bar_is_quiet_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    gt = np.arange(1000, dtype=np.uint32).reshape(10, 10, 10) // 100
    scores = evaluate(ArrayVolume(gt), gt, block_shape=(2, 10, 10), progress=True)
    assert scores.vi == 0.0
    assert capsys.readouterr().err == ""


# -- split and merge lists -------------------------------------------------------------------------------
def test_error_lists_find_the_constructed_split_and_merge() -> None:
    gt = np.zeros((10, 20, 30), dtype=np.uint64)
    gt[:, :10, :10] = 1
    gt[:, :10, 10:20] = 2
    gt[:, 10:, :20] = 3
    gt[:, :, 20:] = 4
    seg = np.zeros_like(gt)
    seg[gt == 1] = 100
    seg[gt == 2] = 100  # segment 100 merges bodies 1 and 2
    seg[gt == 3] = 200
    seg[:, 10:, 15:20] = 201  # body 3 split into 200 and 201
    seg[gt == 4] = 300
    seg[0, 0, 20] = 999  # a 1-voxel sliver of body 4: below min_overlap, not a split
    seg[0, 0, 21] = 100  # a 1-voxel touch of segment 100 into body 4: not a merge
    scores = evaluate(seg, gt, min_overlap=10)
    assert scores.split_bodies == {3: [(200, 1500), (201, 500)]}
    assert scores.merging_segments == {100: [(1, 1000), (2, 1000)]}
    assert (scores.n_split_bodies, scores.n_merging_segments) == (1, 1)
    assert scores.n_seg_ids == 5 and scores.n_gt_ids == 4
    # With min_overlap=1 the slivers count too.
    table = contingency(seg, gt)
    assert sorted(split_bodies(table, 1)) == [3, 4]
    assert merging_segments(table, 1)[100] == [(1, 1000), (2, 1000), (4, 1)]


def test_to_dict_is_json_ready_with_string_ids() -> None:
    gt = np.zeros((4, 4, 8), dtype=np.uint64)
    gt[:, :, :4] = 2**62 + 1
    gt[:, :, 4:] = 2**62 + 2
    seg = np.full_like(gt, 2**63 + 9)
    data = json.loads(json.dumps(evaluate(seg, gt, min_overlap=1).to_dict()))
    for key in ("vi_split", "vi_merge", "vi", "arand", "n_split_bodies", "n_merging_segments"):
        assert key in data
    assert isinstance(data["vi"], float)
    assert data["merging_segments"] == {
        str(2**63 + 9): [{"gt_id": str(2**62 + 1), "voxels": 64}, {"gt_id": str(2**62 + 2), "voxels": 64}]
    }


# -- bad input --------------------------------------------------------------------------------------------
def test_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"SEG shape \(2, 3, 4\) does not match GT shape \(2, 3, 5\)"):
        evaluate(np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8))
    with pytest.raises(InputError, match="does not match GT shape"):
        evaluate(ArrayVolume(np.zeros((2, 3, 4), np.uint8)), np.zeros((2, 3, 5), np.uint8))


def test_different_bounds_are_rejected() -> None:
    a = ArrayVolume(np.zeros((2, 3, 4), np.uint8))
    b = ArrayVolume(np.zeros((2, 3, 4), np.uint8), voxel_offset=(1, 0, 0))
    with pytest.raises(InputError, match="bounds"):
        contingency(a, b)


def test_float_labels() -> None:
    with pytest.raises(InputError, match="SEG: expected integer labels, got float32"):
        evaluate(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(InputError, match="GT: expected integer labels, got float64"):
        evaluate(ArrayVolume(np.zeros((2, 2, 2), np.uint8)), np.zeros((2, 2, 2)))


def test_negative_labels() -> None:
    gt = np.zeros((2, 2, 2), np.int32)
    gt[1, 1, 1] = -3
    with pytest.raises(InputError, match="GT: labels must be non-negative, found -3"):
        evaluate(np.zeros((2, 2, 2), np.int64), gt)
    assert evaluate(gt.clip(0), np.abs(gt)).vi > 0  # non-negative signed ints are fine


def test_empty_volume() -> None:
    with pytest.raises(InputError, match="empty"):
        evaluate(np.zeros((0, 3, 3), np.uint8), np.zeros((0, 3, 3), np.uint8))


def test_bad_min_overlap_and_types() -> None:
    gt = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(InputError, match="min_overlap"):
        evaluate(gt, gt, min_overlap=0)
    with pytest.raises(InputError, match="expected a Volume or a numpy array"):
        evaluate([[[0]]], gt)  # type: ignore[arg-type]


# -- real data: Google's FFN on FIB-25 training_sample2 -----------------------------------------------------
@pytest.fixture(scope="module")
def fib25(testdata: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(seg, gt) of FIB-25 ts2: the named datasets where they work, else decoded here from the files."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("CX_DATA_DIR", str(testdata))
    try:
        from connectomix.config import get_settings

        get_settings.cache_clear()
        gt = open_volume("fib25-ts2/gt").read()
        seg = open_volume("fib25-ts2/google-ffn").read()
    except (ImportError, CxError, KeyError):
        import h5py

        raw = gzip.decompress((testdata / "em/neuroproof_fib_medulla_ts2/groundtruth.h5.gz").read_bytes())
        with h5py.File(io.BytesIO(raw), "r") as f:
            stack, transforms = f["stack"][...], f["transforms"][...]
        lut = np.arange(stack.max() + 1)
        lut[transforms[:, 0]] = transforms[:, 1]
        gt = lut[stack]
        npz = testdata / "reference/google_ffn_fib25/sample-training2.npz"
        seg = np.load(npz, allow_pickle=False)["segmentation"]
    yield seg, gt
    monkeypatch.undo()
    from connectomix.config import get_settings

    get_settings.cache_clear()


def test_google_ffn_on_fib25_matches_published_and_skimage(fib25: tuple[np.ndarray, np.ndarray]) -> None:
    seg, gt = fib25
    assert seg.shape == gt.shape == (250, 250, 250)
    scores = evaluate(seg, gt)
    # Google's result as published (shared/testdata/README.md), scikit-image 0.26 definitions.
    assert scores.vi_split == pytest.approx(0.899, abs=1e-3)
    assert scores.vi_merge == pytest.approx(0.919, abs=1e-3)
    assert scores.arand == pytest.approx(0.157, abs=1e-3)
    assert np.count_nonzero(seg == 0) / seg.size == pytest.approx(0.113, abs=1e-3)
    split, merge = variation_of_information(gt, seg)
    arand = adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
    np.testing.assert_allclose(
        [scores.vi_split, scores.vi_merge, scores.arand], [split, merge, arand], atol=TOL
    )
    assert scores.n_gt_ids == 525 and scores.n_voxels == 250**3
