"""Copying a volume from any backend into zarr (``cx data import``), block by block, atomically."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from connectomix.errors import InputError
from connectomix.progress import track
from connectomix.volume.base import Volume
from connectomix.volume.blocks import read_blocks
from connectomix.volume.url import open_volume, parse_url


def import_volume(
    source: Volume | str,
    destination_url: str,
    *,
    chunks_zyx: Sequence[int] = (64, 64, 64),
    block_chunks: int = 4,
    overwrite: bool = False,
    progress: bool = True,
) -> Volume:
    """Copy ``source`` into a new zarr v3 volume at ``destination_url`` and return it opened read-only.

    The copy goes block by block (``block_chunks`` storage chunks per axis per block), so the source never
    has to fit in memory. It is written under a temporary name beside the destination and renamed only
    when complete, so an interrupted import leaves nothing half-written and never touches an existing
    destination unless ``overwrite`` is set.
    """
    src = open_volume(source) if isinstance(source, str) else source
    parsed = parse_url(destination_url)
    if parsed.scheme != "zarr":
        raise InputError(
            f"import writes zarr volumes: expected zarr://PATH as destination, got {destination_url!r}"
        )
    final_path = Path(parsed.path)
    if final_path.exists() and not overwrite:
        raise InputError(f"{destination_url}: already exists (pass --overwrite to replace it)")
    chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks_zyx, src.shape, strict=True))
    tmp_path = final_path.with_name(f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        dst = open_volume(f"zarr://{tmp_path}", "w-", like=src, chunks=chunks)
        block = tuple(c * block_chunks for c in chunks)
        blocks = src.bounds.split(block)
        for box, data in track(read_blocks(src, blocks), f"import {src.url}", len(blocks), progress):
            dst.write(box, data)
        if final_path.exists():
            shutil.rmtree(final_path)
        tmp_path.replace(final_path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)
    return open_volume(f"zarr://{final_path}")
