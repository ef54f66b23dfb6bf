"""Inference: node sampling, cutouts, streaming chunks (idempotent), Parquet + CSV-ZIP, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from connectomix.cli import main
from connectomix.embed.csvzip import CsvZipReader
from connectomix.embed.infer import Embedder, EmbeddingStore, embed_volume, sample_nodes
from connectomix.embed.model import EncoderConfig, save_encoder
from connectomix.embed.pairs import skeletonize_segments
from connectomix.embed.table import read_coordinates, read_parquet
from connectomix.embed.train import build_encoder
from connectomix.segment.precision import native_bf16
from connectomix.volume import Box, open_volume

TINY = EncoderConfig(
    input_size_zyx=(9, 9, 9), downsample_zyx=(2, 2, 2), channels=(4, 8, 8, 8), inputs=("em", "masked_em")
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volumes(testdata):
    return open_volume("fib25-crop100/raw"), open_volume("fib25-crop100/gt")


@pytest.fixture
def embedder(volumes) -> Embedder:
    raw, gt = volumes
    return Embedder(build_encoder(TINY, 0), raw, gt, batch_size=16, precision="fp32")


def test_sample_nodes_keeps_one_node_per_cube(volumes):
    _, gt = volumes
    graph = skeletonize_segments(gt, box=Box((0, 0, 0), (50, 100, 100)))
    chosen = sample_nodes(graph, 100.0)
    assert 0 < len(chosen) < graph.n_nodes / 4
    cubes = np.floor(graph.nodes_nm_zyx[chosen] / 100.0).astype(int)
    keys = {(int(s), *c) for s, c in zip(graph.node_segment[chosen], cubes, strict=True)}
    assert len(keys) == len(chosen)
    all_cubes = {
        (int(s), *c)
        for s, c in zip(graph.node_segment, np.floor(graph.nodes_nm_zyx / 100.0).astype(int), strict=True)
    }
    assert keys == all_cubes  # every occupied cube keeps exactly one node
    # a box aligned with the cube grid (300 nm = 30 voxels) keeps exactly the chosen nodes inside it
    inside = sample_nodes(graph, 100.0, within=Box((0, 0, 0), (30, 100, 100)))
    assert set(inside.tolist()) == {i for i in chosen.tolist() if graph.nodes_zyx[i, 0] < 30}


def test_embed_box_rows_are_nodes_of_their_segments(embedder, volumes):
    _, gt = volumes
    table = embedder.embed_box(Box((0, 0, 0), (50, 100, 100)), spacing_nm=150.0)
    assert len(table) > 20 and table.embeddings.shape[1] == 64
    labels = gt.read()
    x, y, z = table.positions_xyz.astype(int).T
    assert np.array_equal(labels[z, y, x], table.segment_ids)
    assert np.all(z < 50)
    assert np.array_equal(table.node_ids, np.ravel_multi_index((z, y, x), gt.shape))
    assert np.all(np.diff(table.segment_ids.astype(np.float64)) >= 0)  # rows of a segment are contiguous
    assert embedder.stats["cutouts"] == len(table)


def test_streaming_chunks_are_idempotent_and_match_one_pass(embedder, tmp_path: Path):
    store = EmbeddingStore(tmp_path / "parts", embedder)
    a, b = Box((0, 0, 0), (50, 100, 100)), Box((50, 0, 0), (100, 100, 100))
    first = store.embed_chunk(a, spacing_nm=150.0)
    assert first > 0 and len(store.parts()) == 1
    assert store.embed_chunk(a, spacing_nm=150.0) == 0 and len(store.parts()) == 1
    reopened = EmbeddingStore(tmp_path / "parts", embedder)
    assert len(reopened.keys) == first
    assert reopened.embed_chunk(a, spacing_nm=150.0) == 0
    second = reopened.embed_chunk(b, spacing_nm=150.0)
    assert second > 0 and len(reopened.parts()) == 2
    rows = reopened.read_all()
    keys = list(zip(rows.segment_ids.tolist(), rows.node_ids.tolist(), strict=True))
    assert len(keys) == len(set(keys)) == first + second
    # the same node has the same embedding however the volume was cut into chunks
    whole = embedder.embed_box(Box((0, 0, 0), (100, 100, 100)), spacing_nm=150.0)
    index = {
        k: i for i, k in enumerate(zip(whole.segment_ids.tolist(), whole.node_ids.tolist(), strict=True))
    }
    common = [(i, index[k]) for i, k in enumerate(keys) if k in index]
    assert len(common) > len(keys) / 2
    ours, theirs = zip(*common, strict=True)
    np.testing.assert_allclose(
        rows.embeddings[list(ours)], whole.embeddings[list(theirs)], rtol=1e-5, atol=1e-5
    )


def test_embed_volume_writes_parquet_and_csvzip_and_resumes(embedder, tmp_path: Path):
    summary = embed_volume(
        embedder, tmp_path / "out", spacing_nm=200.0, block_zyx=(64, 100, 100), num_shards=7, progress=False
    )
    assert summary.n_blocks == 2 and summary.new_rows == summary.n_rows > 0
    table = read_parquet(summary.parquet)
    assert len(table) == summary.n_rows
    coords = read_coordinates(summary.parquet)
    assert coords.unit == "voxel" and coords.resolution_nm_xyz == (10.0, 10.0, 10.0)
    reader = CsvZipReader(summary.csvzip, num_shards=7, bytewidth=8)
    segment = next(iter(table.segments()))
    back = reader[segment.segment_id]
    np.testing.assert_array_equal(back.node_ids, segment.node_ids)
    np.testing.assert_allclose(back.embeddings, segment.embeddings, rtol=1e-6)
    assert sorted(reader.segment_ids()) == sorted(set(table.segment_ids.tolist()))
    again = embed_volume(
        embedder, tmp_path / "out", spacing_nm=200.0, block_zyx=(64, 100, 100), num_shards=7, progress=False
    )
    assert again.new_rows == 0 and again.n_rows == summary.n_rows


@pytest.mark.skipif(not native_bf16("cpu"), reason="bf16 is not native on this CPU")
def test_bf16_embeddings_are_close_to_fp32(volumes):
    raw, gt = volumes
    model = build_encoder(EncoderConfig(input_size_zyx=(17, 17, 17), channels=(8, 16, 16, 16)), 1)
    fp32 = Embedder(model, raw, gt, precision="fp32")
    bf16 = Embedder(model, raw, gt, precision="bf16")
    box = Box((0, 0, 0), (40, 100, 100))
    a, b = fp32.embed_box(box, spacing_nm=300.0), bf16.embed_box(box, spacing_nm=300.0)
    assert bf16.resolved == "bf16" and np.array_equal(a.node_ids, b.node_ids)
    cos = (
        np.sum(a.embeddings * b.embeddings, 1)
        / np.linalg.norm(a.embeddings, axis=1)
        / np.linalg.norm(b.embeddings, axis=1)
    )
    assert cos.min() > 0.98


def test_cli_train_and_run(tmp_path: Path, testdata, capsys):
    model = tmp_path / "enc.safetensors"
    code = main(
        [
            "embed", "train", "gala-train/raw", "gala-train/gt", "--out", str(model),
            "--box", "0,0,0:120,100,50",
            "--input-size", "9,9,9", "--channels", "4,8,8,8", "--steps", "2", "--batch-pairs", "4",
        ]
    )  # fmt: skip
    assert code == 0 and model.is_file() and (tmp_path / "enc.safetensors.ckpt" / "step-00000002").is_dir()
    out = tmp_path / "emb"
    code = main(
        [
            "embed", "run", "fib25-crop100/gt", "fib25-crop100/raw", "--model", str(model), "--out", str(out),
            "--spacing-nm", "300", "--num-shards", "5", "--precision", "fp32",
            "--json", str(tmp_path / "s.json"),
        ]
    )  # fmt: skip
    assert code == 0 and (out / "embeddings.parquet").is_file() and any((out / "csvzip").glob("*.zip"))
    assert len(read_parquet(out / "embeddings.parquet")) > 10
    capsys.readouterr()
    assert (
        main(
            [
                "embed",
                "run",
                "fib25-crop100/gt",
                "fib25-crop100/raw",
                "--model",
                str(tmp_path / "no.safetensors"),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "error:" in capsys.readouterr().err
    assert (
        main(
            [
                "embed",
                "run",
                "fib25-crop100/gt",
                "fib25-crop100/raw",
                "--model",
                str(model),
                "--out",
                str(out),
                "--bytewidth",
                "7",
            ]
        )
        == 1
    )


def test_tf_checkpoint_model_for_run(tmp_path: Path, volumes):
    from connectomix.cli.embed_model import _load_model
    from connectomix.embed.tf_import import export_segclr_checkpoint

    model = build_encoder(EncoderConfig(channels=(4, 8, 8, 8)), 3)
    prefix = export_segclr_checkpoint(model, tmp_path / "tf" / "model.ckpt-1")
    loaded = _load_model(str(prefix), "9,9,9", "2,2,2", None)
    assert loaded.config.input_size_zyx == (9, 9, 9) and loaded.config.downsample_zyx == (2, 2, 2)
    save_encoder(model, tmp_path / "m.safetensors")
    assert _load_model(str(tmp_path / "m.safetensors"), None, None, None).config == model.config
