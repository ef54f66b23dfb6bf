"""Reports: figures (EM slices with label overlays) for results and benchmarks."""

from connectomix.report.figures import label_colors, slice_figure

__all__ = ["label_colors", "slice_figure"]
