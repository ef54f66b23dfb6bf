"""TensorFlow tensor-bundle checkpoints: writer round trips, Google's FIB-25 checkpoint, corruption."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from connectomix.errors import CorruptDataError, NotFoundError, UnsupportedError
from connectomix.tfcheckpoint import (
    TensorBundle,
    _block_entries,
    _crc,
    _encode_entry,
    _read_block,
    _varint,
    _write_table,
    mask_crc,
    unmask_crc,
    write_tensor_bundle,
)

CKPT = "reference/google_ffn_fib25/model.ckpt-27465036"


@pytest.fixture(scope="module")
def google(testdata: Path) -> Path:
    return testdata / CKPT


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {
        "scalar/f32": np.array(1.5, np.float32),
        "scalar/i64": np.array(-(2**40), np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "bool": rng.random((2, 3)) > 0.5,
        "f16": rng.standard_normal(5).astype(np.float16),
    }
    for dtype in (
        "float32",
        "float64",
        "int32",
        "int64",
        "uint8",
        "int8",
        "int16",
        "uint16",
        "uint32",
        "uint64",
    ):
        tensors[f"{dtype}/a"] = (rng.random((3, 4, 5)) * 100).astype(dtype)
    for i in range(30):  # many keys sharing prefixes: several restart points and data blocks
        tensors[f"layer{i}/weights"] = rng.standard_normal((2, 3, 1, i % 4 + 1)).astype(np.float32)
    return tensors


def _index_layout(prefix: Path) -> tuple[int, list[int]]:
    """(number of data blocks, restart counts of the data blocks) of an index file."""
    file = f"{prefix}.index"
    data = Path(file).read_bytes()
    footer = data[-48:]
    pos, handle = 0, []
    for _ in range(4):
        value, pos = _varint(footer, pos)
        handle.append(value)
    restarts = []
    for _, value in _block_entries(_read_block(file, data, handle[2], handle[3])):
        offset, p = _varint(value, 0)
        size, _ = _varint(value, p)
        block = _read_block(file, data, offset, size)
        restarts.append(struct.unpack_from("<I", block, len(block) - 4)[0])
    return len(restarts), restarts


@pytest.mark.parametrize("num_shards", [1, 2])
def test_round_trip(tmp_path: Path, num_shards: int) -> None:
    tensors = _tensors()
    prefix = write_tensor_bundle(tmp_path / "ckpt" / "model.ckpt-7", tensors, num_shards, block_size=800)
    bundle = TensorBundle(prefix)
    assert bundle.names() == sorted(tensors)
    assert bundle.num_shards == num_shards and len(bundle) == len(tensors)
    assert {bundle.entry(n).shard for n in tensors} == set(range(num_shards))
    for name, expected in tensors.items():
        got = bundle.read(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected)
    assert "layer3/weights" in bundle and "nope" not in bundle
    n_blocks, restarts = _index_layout(prefix)
    assert n_blocks > 1 and max(restarts) > 1
    filtered = bundle.read_all(lambda n: n.startswith("layer1"))
    assert sorted(filtered) == sorted(n for n in tensors if n.startswith("layer1"))
    assert not list(tmp_path.glob("ckpt/.*.tmp"))


def test_one_block_restarts_every_16(tmp_path: Path) -> None:
    tensors = {f"t{i:02d}": np.full(3, i, np.int32) for i in range(40)}
    prefix = write_tensor_bundle(tmp_path / "m", tensors)
    assert _index_layout(prefix) == (1, [3])  # 41 keys (header included): restarts at 0, 16, 32


def test_bfloat16_and_string(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    prefix = tmp_path / "bf"
    Path(f"{prefix}.data-00000-of-00001").write_bytes(bits + b"xx")
    items = [
        (b"", b"\x08\x01\x1a\x02\x08\x01"),
        (b"bf", _encode_entry("bfloat16", (3,), 0, 0, 6, mask_crc(_crc(bits)))),
        (b"sliced", _encode_entry("float32", (4,), 0, 0, 0, 0) + b"\x3a\x00"),  # field 7: slices
        (b"str", _encode_entry("string", (), 0, 6, 2, mask_crc(_crc(b"xx")))),
    ]
    _write_table(Path(f"{prefix}.index"), items)
    bundle = TensorBundle(prefix)
    got = bundle.read("bf")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, values)
    with pytest.raises(UnsupportedError, match="str has dtype string"):
        bundle.read("str")
    assert bundle.entry("sliced").sliced
    with pytest.raises(UnsupportedError, match="sliced is a partitioned"):
        bundle.read("sliced")


def test_crc_mask_inverse() -> None:
    for crc in (0, 1, 0xFFFFFFFF, 0x12345678, 1734229946):
        assert unmask_crc(mask_crc(crc)) == crc


def test_google_checkpoint(google: Path) -> None:
    bundle = TensorBundle(google)
    names = bundle.names()
    assert len(names) == 54
    assert "seed_update/conv11_b/weights" in bundle and "seed_update/conv12_a/weights" not in bundle
    entry = bundle.entry("seed_update/conv0_a/weights")
    assert (entry.dtype, entry.shape, entry.shard) == ("float32", (3, 3, 3, 2, 32), 0)
    weights = bundle.read("seed_update/conv0_a/weights")
    assert weights.dtype == np.float32 and weights.shape == (3, 3, 3, 2, 32)
    assert bundle.read("seed_update/conv_lom/weights").shape == (1, 1, 1, 32, 1)
    step = bundle.read("global_step")
    assert step.shape == () and step.dtype == np.int32 and int(step) == 27465036
    assert bundle.read("filter_out_bounds_coordinates/fraction").tolist() == [7072, 454]
    model = bundle.read_all(lambda n: n.startswith("seed_update/"))
    assert sum(a.size for a in model.values()) == 638_433
    # the stored tensor crc is the *masked* crc32c of the tensor's bytes
    raw = (google.parent / f"{google.name}.data-00000-of-00001").read_bytes()[48:52]
    assert bundle.entry("global_step").crc32c == mask_crc(_crc(raw)) != _crc(raw)
    # other spellings of the same checkpoint
    assert TensorBundle(f"{google}.index").prefix == bundle.prefix
    assert TensorBundle(f"{google}.data-00000-of-00001").prefix == bundle.prefix
    assert TensorBundle(google.parent).prefix == bundle.prefix


def test_writer_reproduces_google_files(google: Path, tmp_path: Path) -> None:
    tensors = TensorBundle(google).read_all()
    prefix = write_tensor_bundle(tmp_path / google.name, tensors)
    for suffix in (".index", ".data-00000-of-00001"):
        assert Path(f"{prefix}{suffix}").read_bytes() == Path(f"{google}{suffix}").read_bytes(), suffix


def _copy(google: Path, tmp_path: Path) -> Path:
    for suffix in (".index", ".data-00000-of-00001"):
        shutil.copy(f"{google}{suffix}", tmp_path / f"{google.name}{suffix}")
    return tmp_path / google.name


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_corrupt_tensor_data(google: Path, tmp_path: Path) -> None:
    prefix = _copy(google, tmp_path)
    entry = TensorBundle(prefix).entry("seed_update/conv3_a/weights")
    _flip(Path(f"{prefix}.data-00000-of-00001"), entry.offset + entry.size // 2)
    bundle = TensorBundle(prefix)
    with pytest.raises(
        CorruptDataError,
        match=r"crc32c mismatch for tensor seed_update/conv3_a/weights in .*data-00000-of-00001",
    ):
        bundle.read("seed_update/conv3_a/weights")
    assert bundle.read("seed_update/conv3_b/weights").shape == (3, 3, 3, 32, 32)


def test_corrupt_index(google: Path, tmp_path: Path) -> None:
    prefix = _copy(google, tmp_path)
    index = Path(f"{prefix}.index")
    _flip(index, 300)  # inside the data block
    with pytest.raises(CorruptDataError, match=r"crc32c mismatch in the SSTable block"):
        TensorBundle(prefix)
    shutil.copy(f"{google}.index", index)
    _flip(index, index.stat().st_size - 3)  # the magic
    with pytest.raises(CorruptDataError, match="bad SSTable magic"):
        TensorBundle(prefix)
    index.write_bytes(Path(f"{google}.index").read_bytes()[-100:])  # truncated at the front
    with pytest.raises(CorruptDataError, match=r"model\.ckpt-27465036\.index"):
        TensorBundle(prefix)


def test_missing_files(google: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no TensorFlow checkpoint index .*nothing\.index"):
        TensorBundle(tmp_path / "nothing")
    prefix = _copy(google, tmp_path)
    Path(f"{prefix}.data-00000-of-00001").unlink()
    bundle = TensorBundle(prefix)  # the index alone is readable
    with pytest.raises(NotFoundError, match=r"missing checkpoint data file .*data-00000-of-00001"):
        bundle.read("global_step")
    with pytest.raises(NotFoundError, match="not in checkpoint"):
        bundle.entry("seed_update/conv99_a/weights")
