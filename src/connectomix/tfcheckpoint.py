"""TensorFlow tensor-bundle checkpoints (``PREFIX.index`` + ``PREFIX.data-SSSSS-of-NNNNN``), no TensorFlow.

The format, as written by TensorFlow's ``tensor_bundle.cc`` (checked byte for byte on Google's FIB-25 FFN
checkpoint):

* ``PREFIX.index`` is a LevelDB-format SSTable mapping keys (bytes, sorted bytewise) to values:

  - **Footer** (last 48 bytes): the metaindex block handle and the index block handle (each a varint64 offset
    and a varint64 size), zero padding to 40 bytes, then the magic ``0xdb4775248b80fb57`` as a little-endian
    uint64.
  - **Index block**: one entry per data block; its key is ≥ every key of that block and < every key of the
    next, its value the data block's handle. TensorFlow's metaindex block is empty.
  - **Block**: entries ``varint32 shared, varint32 non_shared, varint32 value_length, key[shared:], value``,
    each key prefix-compressed against the previous one (``shared`` = 0 at every restart point), then the
    restart offsets (uint32 each) and their count (uint32). Each block is followed by a 5-byte trailer: the
    compression type (0 none, 1 snappy) and the **masked** crc32c of the block bytes plus the type byte.
  - The empty key holds a ``BundleHeaderProto`` (num_shards 1, endianness 2, version 3); every other key is a
    tensor name whose value is a ``BundleEntryProto`` (dtype 1, shape 2, shard_id 3, offset 4, size 5,
    crc32c 6 as fixed32, slices 7).

* ``PREFIX.data-SSSSS-of-NNNNN`` holds the tensors' raw bytes (little-endian, C order) at ``offset`` /
  ``size``. A tensor's ``crc32c`` field is the **masked** crc32c (LevelDB's ``Mask``) of exactly those bytes.

Protocol buffers are decoded by hand (varint, fixed64, length-delimited and fixed32 wire types); there is no
TensorFlow or protobuf dependency. Numeric tensors are supported; bfloat16 is returned widened to float32
(exactly); string tensors and partitioned (sliced) variables raise :class:`UnsupportedError`.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np

from connectomix.errors import CorruptDataError, InputError, NotFoundError, UnsupportedError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two handles of at most 10 + 10 bytes, padded to 40, then the 8-byte magic
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_DATA_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")

# TensorFlow DataType enum → numpy dtype (little-endian). bfloat16 is widened to float32 on reading.
_DTYPES: dict[int, str] = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    7: "string",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
}
_ENUMS: dict[str, int] = {name: code for code, name in _DTYPES.items()}


def mask_crc(crc: int) -> int:
    """LevelDB/TensorFlow ``crc32c::Mask``: rotate right by 15 bits and add a constant (mod 2³²)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    """The inverse of :func:`mask_crc`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def _crc(data: bytes | bytearray | memoryview) -> int:
    return int(google_crc32c.value(bytes(data)))


# ----------------------------------------------------------------------------------------------- protobuf


def _varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; returns (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _put_varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 values are encoded as their two's complement
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class _Message:
    """A decoded protobuf message: field number → values (ints for wire types 0/1/5, bytes for 2)."""

    def __init__(self, buf: bytes) -> None:
        self.fields: dict[int, list[int | bytes]] = {}
        pos = 0
        while pos < len(buf):
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            value: int | bytes
            if wire == 0:
                value, pos = _varint(buf, pos)
            elif wire == 1:
                (value,) = struct.unpack_from("<Q", buf, pos)
                pos += 8
            elif wire == 5:
                (value,) = struct.unpack_from("<I", buf, pos)
                pos += 4
            elif wire == 2:
                length, pos = _varint(buf, pos)
                value = bytes(buf[pos : pos + length])
                if len(value) != length:
                    raise ValueError("truncated length-delimited field")
                pos += length
            else:
                raise ValueError(f"unsupported protobuf wire type {wire}")
            self.fields.setdefault(number, []).append(value)

    def scalar(self, number: int, default: int = 0) -> int:
        """The scalar field ``number`` (the last occurrence wins, as in protobuf), or ``default``."""
        value = self.fields.get(number, [default])[-1]
        if not isinstance(value, int):
            raise ValueError(f"field {number} is length-delimited, expected a number")
        return value

    def messages(self, number: int) -> list[_Message]:
        """The embedded messages of repeated field ``number``."""
        values = self.fields.get(number, [])
        if not all(isinstance(v, bytes) for v in values):
            raise ValueError(f"field {number} is a number, expected a message")
        return [_Message(v) for v in values if isinstance(v, bytes)]


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


# ------------------------------------------------------------------------------------------------ entries


@dataclass(frozen=True)
class BundleEntry:
    """Where and what one tensor is: ``dtype`` a numpy name (or ``"string"``/``"bfloat16"``), ``shape`` as
    stored (TensorFlow order), ``crc32c`` the masked checksum as stored."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int
    sliced: bool = False  # a partitioned variable: its data lives in slice entries (unsupported)


def _parse_entry(name: str, value: bytes) -> BundleEntry:
    """Decode a BundleEntryProto (dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6, slices 7)."""
    entry = _Message(value)
    shape = entry.messages(2) or [_Message(b"")]  # TensorShapeProto: dim 2 (each with size 1), unknown_rank 3
    if shape[-1].scalar(3):
        raise UnsupportedError(f"tensor {name} has an unknown rank in the checkpoint")
    dims = tuple(_int64(dim.scalar(1)) for dim in shape[-1].messages(2))
    code = entry.scalar(1)
    dtype = _DTYPES.get(code, f"tf-dtype-{code}")
    shard, offset, size, crc = (entry.scalar(n) for n in (3, 4, 5, 6))
    return BundleEntry(name, dtype, dims, shard, offset, size, crc, sliced=7 in entry.fields)


def _encode_entry(dtype: str, shape: tuple[int, ...], shard: int, offset: int, size: int, crc: int) -> bytes:
    sizes = (b"\x08" + _put_varint(n) if n else b"" for n in shape)  # proto3: a zero size is omitted
    dims = b"".join(b"\x12" + _put_varint(len(d)) + d for d in sizes)
    out = b"\x08" + _put_varint(_ENUMS[dtype]) + b"\x12" + _put_varint(len(dims)) + dims
    if shard:
        out += b"\x18" + _put_varint(shard)
    if offset:
        out += b"\x20" + _put_varint(offset)
    if size:
        out += b"\x28" + _put_varint(size)
    return out + b"\x35" + struct.pack("<I", crc)


# ------------------------------------------------------------------------------------------------- reader


def resolve_prefix(path: Path | str) -> Path:
    """The checkpoint prefix for a prefix, a ``.index`` path, a ``.data-…`` path, or a directory holding
    exactly one ``.index`` file. Raises :class:`NotFoundError` when ``PREFIX.index`` does not exist."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise NotFoundError(
                f"{path} holds {len(indexes)} TensorFlow checkpoint index files; expected one, "
                "or pass the checkpoint prefix (e.g. DIR/model.ckpt-1000)"
            )
        path = indexes[0]
    text = str(path)
    if text.endswith(".index"):
        text = text[: -len(".index")]
    text = _DATA_RE.sub("", text)
    prefix = Path(text)
    if not Path(f"{prefix}.index").is_file():
        raise NotFoundError(
            f"no TensorFlow checkpoint index {prefix}.index "
            "(expected PREFIX.index and PREFIX.data-00000-of-0000N)"
        )
    return prefix


def _read_block(file: str, data: bytes, offset: int, size: int) -> bytes:
    """The contents of the block at ``offset``/``size``, crc-checked and decompressed."""
    if offset + size + 5 > len(data):
        raise CorruptDataError(f"{file}: truncated SSTable (block at {offset} of {size} bytes past the end)")
    block = data[offset : offset + size]
    kind = data[offset + size]
    (stored,) = struct.unpack_from("<I", data, offset + size + 1)
    if unmask_crc(stored) != _crc(data[offset : offset + size + 1]):
        raise CorruptDataError(f"{file}: crc32c mismatch in the SSTable block at offset {offset}")
    if kind == 0:
        return block
    if kind == 1:
        return _snappy_decompress(file, block)
    raise CorruptDataError(f"{file}: unknown block compression type {kind} at offset {offset}")


def _snappy_decompress(file: str, block: bytes) -> bytes:
    decompress: Callable[[bytes], bytes]
    try:
        import cramjam  # type: ignore[import-not-found]

        decompress = lambda b: bytes(cramjam.snappy.decompress_raw(b))  # noqa: E731
    except ImportError:
        try:
            import snappy  # type: ignore[import-not-found]

            decompress = lambda b: bytes(snappy.uncompress(b))  # noqa: E731
        except ImportError:
            raise UnsupportedError(
                f"{file} has snappy-compressed blocks: install python-snappy or cramjam to read it"
            ) from None
    try:
        return decompress(block)
    except Exception as exc:  # each library raises its own error type
        raise CorruptDataError(f"{file}: a snappy block does not decompress ({exc})") from None


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) of an SSTable block, undoing the prefix compression."""
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * num_restarts
    if end < 0:
        raise ValueError("bad restart count")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_length > end:
            raise ValueError("entry runs past the block")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_length]
        pos += value_length


def _read_table(file: str) -> dict[bytes, bytes]:
    """Every (key, value) of a LevelDB-format SSTable file, checking the magic, block crcs and key order."""
    data = Path(file).read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CorruptDataError(f"{file}: too short for an SSTable ({len(data)} bytes, footer needs 48)")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != TABLE_MAGIC:
        raise CorruptDataError(f"{file}: not a TensorFlow checkpoint index (bad SSTable magic {magic:#x})")
    try:
        pos = 0
        handles = []
        for _ in range(4):
            number, pos = _varint(footer, pos)
            handles.append(number)
        _read_block(file, data, handles[0], handles[1])  # metaindex: empty in TF, crc-checked anyway
        table: dict[bytes, bytes] = {}
        last: bytes | None = None
        for _, handle in _block_entries(_read_block(file, data, handles[2], handles[3])):
            offset, hpos = _varint(handle, 0)
            size = _varint(handle, hpos)[0]
            for key, value in _block_entries(_read_block(file, data, offset, size)):
                if last is not None and key <= last:
                    raise ValueError(f"keys out of order ({last!r} then {key!r})")
                table[key] = value
                last = key
    except (ValueError, struct.error, IndexError) as exc:
        raise CorruptDataError(f"{file}: malformed SSTable ({exc})") from None
    return table


class TensorBundle:
    """A read-only TensorFlow checkpoint (tensor bundle).

    ``TensorBundle(path)`` accepts the prefix (``…/model.ckpt-1000``), the ``.index`` file, a ``.data-…``
    file, or a directory with one ``.index``. The index is read and checked at once; tensor data only on
    :meth:`read`. Arrays come back in TensorFlow's layout (e.g. conv kernels ``[kz, ky, kx, in, out]``).
    """

    def __init__(self, path: Path | str) -> None:
        self.prefix = resolve_prefix(path)
        self.index_path = Path(f"{self.prefix}.index")
        table = _read_table(str(self.index_path))
        header = table.pop(b"", None)
        if header is None:
            raise CorruptDataError(f"{self.index_path}: no bundle header (empty key) in the index")
        try:  # BundleHeaderProto: num_shards 1, endianness 2 (0 little, 1 big), version 3 (producer 1)
            fields = _Message(header)
            self.num_shards = fields.scalar(1, 1)
            self.big_endian = fields.scalar(2) == 1
            self.version = ([*fields.messages(3), _Message(b"")])[0].scalar(1)
        except (ValueError, struct.error) as exc:
            raise CorruptDataError(f"{self.index_path}: malformed bundle header ({exc})") from None
        self._entries: dict[str, BundleEntry] = {}
        for key, value in table.items():
            name = key.decode("utf-8", "replace")
            try:
                entry = _parse_entry(name, value)
            except (ValueError, struct.error) as exc:
                raise CorruptDataError(f"{self.index_path}: malformed entry for {name} ({exc})") from None
            if not 0 <= entry.shard < self.num_shards:
                raise CorruptDataError(
                    f"{self.index_path}: tensor {name} is in shard {entry.shard} of {self.num_shards}"
                )
            self._entries[name] = entry

    def data_path(self, shard: int) -> Path:
        """``PREFIX.data-SSSSS-of-NNNNN`` for ``shard``."""
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")

    def names(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> BundleEntry:
        """The index record of tensor ``name``; :class:`NotFoundError` if absent."""
        try:
            return self._entries[name]
        except KeyError:
            raise NotFoundError(f"tensor {name!r} is not in checkpoint {self.prefix}") from None

    def read(self, name: str) -> np.ndarray:
        """Tensor ``name`` as a writable, native-endian numpy array of its stored shape (bfloat16 widened to
        float32). Raises :class:`CorruptDataError` on a crc32c or size mismatch, naming the tensor."""
        entry = self.entry(name)
        if entry.sliced:
            raise UnsupportedError(
                f"tensor {name} is a partitioned (sliced) variable, which is not supported"
            )
        if entry.dtype in ("string",) or entry.dtype.startswith("tf-dtype"):
            raise UnsupportedError(f"tensor {name} has dtype {entry.dtype}, which cannot be read")
        path = self.data_path(entry.shard)
        if not path.is_file():
            raise NotFoundError(f"missing checkpoint data file {path} (holds tensor {name})")
        raw = bytearray(entry.size)
        with path.open("rb") as handle:
            handle.seek(entry.offset)
            got = handle.readinto(raw)
        if got != entry.size:
            raise CorruptDataError(
                f"{path} is truncated: tensor {name} needs bytes {entry.offset}+{entry.size}"
            )
        if unmask_crc(entry.crc32c) != _crc(raw):
            raise CorruptDataError(f"crc32c mismatch for tensor {name} in {path}")
        stored = np.dtype("uint16" if entry.dtype == "bfloat16" else entry.dtype)
        count = int(np.prod(entry.shape, dtype=np.int64))
        if count * stored.itemsize != entry.size:
            raise CorruptDataError(
                f"{path}: tensor {name} has {entry.size} bytes, {entry.dtype}{list(entry.shape)} needs "
                f"{count * stored.itemsize}"
            )
        array = np.frombuffer(raw, dtype=stored.newbyteorder(">" if self.big_endian else "<"))
        array = array.astype(stored.newbyteorder("="), copy=False).reshape(entry.shape)
        if entry.dtype == "bfloat16":  # the high half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array

    def read_all(self, filter: Callable[[str], bool] | None = None) -> dict[str, np.ndarray]:
        """``{name: read(name)}`` for every tensor (sorted by name) for which ``filter(name)`` is true."""
        return {name: self.read(name) for name in self.names() if filter is None or filter(name)}

    def __repr__(self) -> str:
        return f"TensorBundle({str(self.prefix)!r}, {len(self)} tensors, {self.num_shards} shard(s))"


# ------------------------------------------------------------------------------------------------- writer


def _build_block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, last = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            limit = min(len(key), len(last))
            while shared < limit and key[shared] == last[shared]:
                shared += 1
        out += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
        out += key[shared:] + value
        last = key
    out += b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts or [0]))
    return bytes(out)


def _separator(start: bytes, limit: bytes | None) -> bytes:
    """LevelDB's short index key: ≥ ``start`` and < ``limit`` (any key after ``start`` when limit is None)."""
    if limit is None:  # FindShortSuccessor: bump the first byte that is not 0xff, drop the rest
        for i, byte in enumerate(start):
            if byte != 0xFF:
                return start[:i] + bytes([byte + 1])
        return start
    common = 0  # FindShortestSeparator
    while common < min(len(start), len(limit)) and start[common] == limit[common]:
        common += 1
    if common < min(len(start), len(limit)) and start[common] < 0xFF and start[common] + 1 < limit[common]:
        return start[:common] + bytes([start[common] + 1])
    return start


def _write_table(path: Path, items: list[tuple[bytes, bytes]], block_size: int = 262144) -> None:
    """Write a LevelDB-format SSTable of ``items`` (sorted by key, unique) as TensorFlow's table builder
    does: uncompressed blocks of about ``block_size`` bytes (TF's default 256 KiB), restart points every 16
    entries in data blocks and every entry in the index block, shortened index keys."""
    out = bytearray()

    def emit(block: bytes) -> bytes:
        handle = _put_varint(len(out)) + _put_varint(len(block))
        out.extend(block + b"\x00" + struct.pack("<I", mask_crc(_crc(block + b"\x00"))))
        return handle

    blocks: list[list[tuple[bytes, bytes]]] = [[]]
    estimate = 0
    for key, value in items:
        if estimate >= block_size:
            blocks.append([])
            estimate = 0
        blocks[-1].append((key, value))
        estimate += len(key) + len(value) + 7
    index = []
    for i, block in enumerate(blocks):
        if block:
            limit = blocks[i + 1][0][0] if i + 1 < len(blocks) else None
            index.append((_separator(block[-1][0], limit), emit(_build_block(block, 16))))
    metaindex = emit(_build_block([], 1))
    index_handle = emit(_build_block(index, 1))
    footer = (metaindex + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    out += footer
    path.write_bytes(bytes(out))


def write_tensor_bundle(
    prefix: Path | str,
    tensors: Mapping[str, np.ndarray],
    num_shards: int = 1,
    *,
    block_size: int = 262144,
) -> Path:
    """Write ``tensors`` as a checkpoint ``PREFIX.index`` + ``PREFIX.data-…`` that TensorFlow can read.

    Arrays are stored in their own shape (TensorFlow layout is the caller's business), little-endian; the
    dtypes of :data:`_DTYPES` are supported except string and bfloat16. Tensors go round-robin (in sorted
    name order) to ``num_shards`` data files. Each file is written under a temporary name and renamed.
    ``block_size`` is the SSTable's target block size (small values give many blocks, for tests).
    Returns the prefix.
    """
    prefix = Path(prefix)
    if num_shards < 1:
        raise InputError(f"num_shards must be at least 1, got {num_shards}")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    shards = [bytearray() for _ in range(num_shards)]
    items: list[tuple[bytes, bytes]] = []
    for i, name in enumerate(sorted(tensors)):
        array = np.asarray(tensors[name])
        dtype = array.dtype.name
        if not name or dtype not in _ENUMS or dtype in ("string", "bfloat16"):
            raise InputError(
                f"cannot write tensor {name!r} of dtype {dtype} (need a non-empty name, numeric)"
            )
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        shard = shards[i % num_shards]
        entry = _encode_entry(dtype, array.shape, i % num_shards, len(shard), len(data), mask_crc(_crc(data)))
        shard += data
        items.append((name.encode("utf-8"), entry))
    items.sort()
    header = b"\x08" + _put_varint(num_shards) + b"\x1a\x02\x08\x01"  # num_shards, version {producer: 1}
    targets = [Path(f"{prefix}.data-{s:05d}-of-{num_shards:05d}") for s in range(num_shards)]
    targets.append(Path(f"{prefix}.index"))
    temps = [t.with_name(f".{t.name}.tmp") for t in targets]
    for temp, shard in zip(temps, shards, strict=False):
        temp.write_bytes(bytes(shard))
    _write_table(temps[-1], [(b"", header), *items], block_size)
    for temp, target in zip(temps, targets, strict=True):
        temp.replace(target)
    return prefix
