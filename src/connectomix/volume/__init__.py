"""Arrays in and out: boxes and coordinates, ``open_volume(url)``, the chunk cache, datasets, synthetic."""

from connectomix.volume.base import ArrayVolume, Volume
from connectomix.volume.box import Box, points_xyz_to_zyx, points_zyx_to_xyz, xyz_to_zyx, zyx_to_xyz
from connectomix.volume.cache import ChunkCache, Prefetcher, set_shared_cache, shared_cache
from connectomix.volume.url import CreateSpec, ParsedUrl, open_volume, parse_url

__all__ = [
    "ArrayVolume",
    "Box",
    "ChunkCache",
    "CreateSpec",
    "ParsedUrl",
    "Prefetcher",
    "Volume",
    "open_volume",
    "parse_url",
    "points_xyz_to_zyx",
    "points_zyx_to_xyz",
    "set_shared_cache",
    "shared_cache",
    "xyz_to_zyx",
    "zyx_to_xyz",
]
