"""Reading a volume block by block with read-ahead: the next block loads while the caller works."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from connectomix.volume.base import Volume
from connectomix.volume.box import Box
from connectomix.volume.cache import Prefetcher


def read_blocks(
    volume: Volume, boxes: Sequence[Box], *, read_ahead: int = 1
) -> Iterator[tuple[Box, np.ndarray]]:
    """Yield ``(box, volume.read(box))`` for each box, prefetching the next ``read_ahead`` boxes' chunks.

    Read-ahead runs in a background thread through the shared chunk cache, so decoding (zstd, gzip, PNG)
    overlaps with the caller's work on the current block. Volumes already in memory are read directly.
    """
    if not volume.cached or read_ahead <= 0:
        for box in boxes:
            yield box, volume.read(box)
        return
    prefetcher = Prefetcher(volume.cache)
    try:
        for index, box in enumerate(boxes):
            for ahead in boxes[index + 1 : index + 1 + read_ahead]:
                volume.prefetch(ahead, prefetcher)
            yield box, volume.read(box)
        prefetcher.wait()
    finally:
        prefetcher.close()
