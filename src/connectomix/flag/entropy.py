"""Per-voxel uncertainty in [0, 1] from a probability or uncertainty map, and its top-fraction threshold.

Inputs (arrays ``(z, y, x)``, the same shape as the segmentation):

* **probability**, uint8 as FFN writes it (Google's ``quantize_probability``:
  ``q = min(floor(254 p) + 1, 255)``, so 1..255 for explored voxels and **0 = never explored**), or float
  in [0, 1] (**NaN = never explored**).
  Object probabilities (FFN) and boundary probabilities (a membrane classifier) both work: the binary entropy
  ``H(p) = -p log2 p - (1-p) log2 (1-p)`` (bits, in [0, 1]) is symmetric in ``p`` and ``1 - p``.
* **uncertainty**, float32 log-variance (FFN-v2's uncertainty head; NaN = never explored), mapped to [0, 1]
  by the monotone ``u = sigmoid(log-variance) = var / (1 + var)``. Any monotone map selects the same hot
  voxels (the threshold is a quantile); this one keeps values comparable to bits (0 = certain, 1 = lost).

Given both, a voxel's value is the larger of the two (either signal may raise a flag), and a voxel counts
as never explored only when both maps say so.

**Never-explored voxels**: where the segmentation is 0 they get the maximal value 1 (nobody looked at that
region: an *unassigned-region* signal); inside a segment they get 0 (no evidence either way, and a
segmenter's own output never leaves a segmented voxel unexplored).
"""

from __future__ import annotations

import math

import numpy as np

from connectomix.errors import InputError


def dequantize_probability(quantised: np.ndarray) -> np.ndarray:
    """uint8 FFN probabilities → float32 ``p`` (bin centres ``(q - 0.5) / 254``, 255 → 1); 0 → NaN."""
    q = np.asarray(quantised)
    if q.dtype != np.uint8:
        raise InputError(f"quantised probabilities must be uint8, got {q.dtype}")
    table = np.minimum((np.arange(256, dtype=np.float32) - np.float32(0.5)) / np.float32(254.0), 1.0)
    table[0] = np.nan
    return table.astype(np.float32)[q]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits (float32, in [0, 1]; exactly 0 at p = 0 and 1) of ``p``; NaN stays NaN."""
    p = np.clip(np.asarray(p, dtype=np.float32), np.float32(0.0), np.float32(1.0))
    q = np.float32(1.0) - p
    tiny = np.float32(np.finfo(np.float32).tiny)
    h = p * np.log2(np.maximum(p, tiny))
    h += q * np.log2(np.maximum(q, tiny))
    np.negative(h, out=h)
    return np.maximum(h, np.float32(0.0), out=h)


def quantized_entropy(quantised: np.ndarray) -> np.ndarray:
    """Binary entropy (bits, float32) of uint8 FFN probabilities by table look-up; 0 (unexplored) → NaN."""
    q = np.asarray(quantised)
    if q.dtype != np.uint8:
        raise InputError(f"quantised probabilities must be uint8, got {q.dtype}")
    return _QUANTIZED_ENTROPY[q]


def normalize_uncertainty(log_variance: np.ndarray) -> np.ndarray:
    """Log-variance → [0, 1] by ``sigmoid(log-variance)`` (float32); NaN stays NaN."""
    lv = np.asarray(log_variance, dtype=np.float32)
    with np.errstate(over="ignore"):
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-lv))).astype(np.float32, copy=False)


def probability_as_float(probability: np.ndarray) -> np.ndarray:
    """A probability map as float32 in [0, 1] with NaN where never explored (uint8 or float input)."""
    prob = np.asarray(probability)
    if prob.dtype == np.uint8:
        return dequantize_probability(prob)
    if prob.dtype.kind != "f":
        raise InputError(
            "probability must be uint8 (FFN quantisation, 0 = unexplored) or float in [0, 1], "
            f"got {prob.dtype}"
        )
    prob = prob.astype(np.float32, copy=False)
    finite = prob[~np.isnan(prob)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(
            "float probabilities must lie in [0, 1] (NaN = unexplored), "
            f"got {finite.min():g}..{finite.max():g}"
        )
    return prob


def entropy_map(
    segmentation: np.ndarray,
    probability: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
) -> np.ndarray:
    """Per-voxel uncertainty in [0, 1] (float32, ``(z, y, x)``); see the module docstring for the rules."""
    seg = np.asarray(segmentation)
    if probability is None and uncertainty is None:
        raise InputError("flagging needs a probability map or an uncertainty map (or both)")
    out: np.ndarray | None = None
    for name, data in (("probability", probability), ("uncertainty", uncertainty)):
        if data is None:
            continue
        array = np.asarray(data)
        if array.shape != seg.shape:
            raise InputError(f"{name} shape {array.shape} does not match segmentation shape {seg.shape}")
        if name == "probability":
            if array.dtype == np.uint8:
                values = quantized_entropy(array)
            else:
                values = binary_entropy(probability_as_float(array))
        else:
            if array.dtype.kind != "f":
                raise InputError(f"uncertainty must be a float log-variance map, got {array.dtype}")
            values = normalize_uncertainty(array)
        out = values if out is None else np.fmax(out, values)
    assert out is not None
    unexplored = np.isnan(out)
    if unexplored.any():
        out[unexplored] = np.where(seg[unexplored] == 0, np.float32(1.0), np.float32(0.0))
    return out


_QUANTIZED_ENTROPY = binary_entropy(dequantize_probability(np.arange(256, dtype=np.uint8)))


class TopFraction:
    """The value above which the top ``fraction`` of all voxels lie, fed chunk by chunk (exact).

    Keeps at most about ``2 k`` candidate values (``k = ceil(fraction x total)``) and uses ``np.partition``,
    never a full sort, so memory is bounded by the fraction, not the volume.
    """

    def __init__(self, fraction: float, total_voxels: int) -> None:
        if not 0 < fraction <= 1:
            raise InputError(f"top fraction must be in (0, 1], got {fraction!r}")
        self.k = max(1, math.ceil(fraction * total_voxels)) if total_voxels > 0 else 0
        self._values = np.empty(0, np.float32)
        self._floor = -np.inf  # every value ≤ this is certainly outside the top k

    def add(self, values: np.ndarray) -> None:
        if self.k == 0:
            return
        flat = np.asarray(values, dtype=np.float32).ravel()
        flat = flat[flat > self._floor] if np.isfinite(self._floor) else flat
        if flat.size > self.k:
            flat = np.partition(flat, flat.size - self.k)[flat.size - self.k :]
        self._values = np.concatenate([self._values, flat])
        if self._values.size >= 2 * self.k:
            self._compact()

    def _compact(self) -> None:
        n = self._values.size
        if n > self.k:
            self._values = np.partition(self._values, n - self.k)[n - self.k :]
        if self._values.size >= self.k:
            # values strictly below the current k-th largest can never enter the top k
            self._floor = float(np.nextafter(self._values.min(), np.float32(-np.inf)))

    def threshold(self) -> float:
        """The k-th largest value seen (``-inf`` when fewer than ``k`` values were added or ``k = 0``)."""
        self._compact()
        if self.k == 0 or self._values.size < self.k:
            return float(self._values.min()) if self._values.size else -np.inf
        return float(self._values.min())
