"""Flood-filling inference: options, the batched runner, and segmenting whole subvolumes.

>>> from connectomix.segment.inference import InferenceOptions, segment_subvolume
>>> result = segment_subvolume(raw_zyx_uint8, model, InferenceOptions(precision="bf16"))  # doctest: +SKIP
>>> result.segmentation, result.probability, result.counters.steps  # doctest: +SKIP

Each subvolume is a :class:`~connectomix.segment.canvas.Canvas` (the rules are documented there). Within one
canvas the network steps are sequential, so :func:`run_canvases` batches across canvases: every forward pass
takes the next pending field of view of up to ``batch_size`` different canvases, stacked into one
``(B, 1, z, y, x)`` image tensor and one seed tensor. Batching never changes a result: each canvas sees
exactly the steps it would see alone.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from connectomix.errors import InputError
from connectomix.progress import is_terminal
from connectomix.segment.canvas import (
    Canvas,
    CanvasResult,
    InferenceCounters,
    ObjectStats,
    SubvolumeResult,
    face_max_moves,
)
from connectomix.segment.consensus import consensus
from connectomix.segment.models import FFNModel
from connectomix.segment.precision import Precision, check_precision, resolve_precision
from connectomix.segment.seeds import REVERSE_PREFIX, Reverse, SeedPolicy, seed_policy

__all__ = [
    "Canvas",
    "CanvasResult",
    "InferenceCounters",
    "InferenceOptions",
    "ObjectStats",
    "SubvolumeResult",
    "face_max_moves",
    "run_canvases",
    "segment_subvolume",
    "segment_subvolumes",
]


# Memory format of the model and its inputs per precision. Measured on this project's CPU (Xeon, 2 cores,
# AVX-512 + AMX-BF16; torch 2.13, 2 threads; FIB-25-size ConvStack3D, 33³ FOV), ms per field of view:
#                     batch 1   batch 8
#   fp32 contiguous     413       544
#   fp32 channels_last  275       398
#   bf16 contiguous     156       245
#   bf16 channels_last   85       108
# channels_last_3d wins for both precisions; batch 8 is no faster per FOV than batch 1 on 2 cores (batches
# of 2 and 4 neither), hence a default batch of 1 on CPU. ``python bench/ffn_inference.py layout`` repeats
# the measurement (a second run, other workers sharing the CPU: 324/405, 77/102 ms channels_last).
MEMORY_FORMAT: dict[str, torch.memory_format] = {
    "fp32": torch.channels_last_3d,
    "bf16": torch.channels_last_3d,
}
# bf16 runs under autocast over the fp32 weights. Casting the weights to bf16 instead (the models compute in
# their weights' dtype) was measured as the peer on a 2-core Xeon with AMX (2026-12-07, torch 2.13, Google's
# FIB-25 ConvStack3D, channels-last 3-D, ms per 33³ field of view at batch 1 / 4 / 8, two runs): autocast
# 22.7–23.7 / 21.7–32.4 / 33.8–37.1, bf16 weights 22.3–22.4 / 22.8–26.4 / 41.0–41.8 (``bench/ffn.py``'s
# micro-benchmark). No gain at the CPU's batch of 1, so the engine keeps autocast, the standard
# mixed-precision path on CUDA as well.
#: Why ``InferenceOptions.compile`` helps. Eager PyTorch runs each Conv3d through oneDNN's AMX kernel
#: with a weight reorder per call and separate ReLU and add kernels between convolutions; Inductor with
#: ``freezing`` pre-packs the weights once and fuses ReLU and the residual add into the convolution's
#: post-ops. Measured on this project's CPU (2 threads, bf16, batch 1, medians of 10 passes, 4 rounds
#: interleaved): eager 129–145 ms, compiled 76–94 ms per 33³ field of view (``bench/ffn.py`` repeats it).
COMPILE_NOTE = "torch.compile(backend='inductor') with freezing=True; the batch shape is kept fixed"
#: Canvases per forward pass on CUDA when ``InferenceOptions.batch_size`` is None.
CUDA_BATCH_SIZE = 8


@dataclass(frozen=True)
class InferenceOptions:
    """How to flood-fill. Probabilities (not logits) for the four thresholds; sizes in voxels, (z, y, x).

    Defaults are Google's FIB-25 settings (init 0.95, pad 0.05, move 0.9, segment 0.6, min size 1000,
    min_boundary_dist 1, PolicyPeaks seeds). ``disco_seed_threshold`` is Google's "disconnected seed"
    bias (see :meth:`Canvas.apply`): Google's FIB-25 run had it on at 0.0 because its request left the
    proto field unset, and only with it on do we reproduce that run step for step; ``None`` turns it off
    (the pure overwrite that ``specs/ffn.md`` describes).
    ``batch_size`` is the number of canvases advanced per forward pass (None: 1 on CPU, where batching
    does not raise throughput — see ``MEMORY_FORMAT`` — and ``CUDA_BATCH_SIZE`` on CUDA);
    ``max_steps_per_object`` caps
    the network steps of one object (None: no cap); ``keep_probability`` keeps the uint8 probability map.
    ``compile`` runs the network through ``torch.compile`` (Inductor, weights frozen as constants so that
    oneDNN gets pre-packed weights and ReLU/residual adds fused into the convolutions; see
    :data:`COMPILE_NOTE`): the same function, 1.5–3× faster per step on CPU, after a one-off compilation
    of about 30 s (a few seconds when Inductor's on-disk cache already holds it).
    ``consensus`` flood-fills every subvolume twice, with the seeds in forward and in reverse order (both
    runs share the batches), and keeps their split consensus (see :mod:`connectomix.segment.consensus`):
    a merge made by one run alone is split by the other, at twice the network steps.
    """

    init_activation: float = 0.95
    pad_value: float = 0.05
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_segment_size: int = 1000
    min_boundary_dist: tuple[int, int, int] = (1, 1, 1)
    seed_policy: str | SeedPolicy = "peaks"
    disco_seed_threshold: float | None = 0.0
    precision: Precision = "fp32"
    device: str = "cpu"
    batch_size: int | None = None
    max_steps_per_object: int | None = None
    keep_probability: bool = True
    compile: bool = False
    consensus: bool = False

    def __post_init__(self) -> None:
        for name in ("init_activation", "pad_value", "move_threshold", "segment_threshold"):
            value = getattr(self, name)
            if not 0.0 < float(value) < 1.0:
                raise InputError(f"{name} is a probability strictly between 0 and 1, got {value}")
        check_precision(self.precision)
        mbd = tuple(int(v) for v in np.broadcast_to(np.asarray(self.min_boundary_dist), (3,)))
        if any(v < 0 for v in mbd):
            raise InputError(f"min_boundary_dist must be 3 non-negative voxel counts (z, y, x), got {mbd}")
        object.__setattr__(self, "min_boundary_dist", mbd)
        if self.min_segment_size < 0:
            raise InputError(f"min_segment_size must be >= 0 voxels, got {self.min_segment_size}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_steps_per_object is not None and self.max_steps_per_object < 1:
            raise InputError(f"max_steps_per_object must be >= 1 or None, got {self.max_steps_per_object}")
        device = str(self.device)
        if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
            raise InputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        seed_policy(self.seed_policy)  # unknown names fail here, not half-way through a run


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; a clear InputError when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"device {name!r} was requested but CUDA is not available to torch {torch.__version__} "
            "(no GPU visible or a CPU-only build); use device='cpu'"
        )
    return device


class _Engine:
    """The model on its device, and a reusable input buffer (pinned on CUDA) for one batch."""

    def __init__(self, model: FFNModel, options: InferenceOptions) -> None:
        self.device = resolve_device(options.device)
        if options.batch_size is not None:
            self.batch_size = options.batch_size
        else:
            self.batch_size = CUDA_BATCH_SIZE if self.device.type == "cuda" else 1
        self.precision = resolve_precision(options.precision, self.device)
        self.bf16 = self.precision == "bf16"
        self.memory_format = MEMORY_FORMAT[self.precision]
        # A private copy: changing the memory format, dtype or device must not touch the caller's model.
        # fp32 weights in both precisions: bf16 is autocast (see above).
        self.model = copy.deepcopy(model).eval().to(self.device, torch.float32)
        self.model.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # untyped overload
        fov = tuple(model.config.fov_zyx)
        pin = self.device.type == "cuda"
        # (image | seed, batch, channel, z, y, x): both inputs in one buffer, so one host-to-device copy.
        self.host = torch.empty((2, self.batch_size, 1, *fov), dtype=torch.float32, pin_memory=pin)
        self.host_np = self.host.numpy()
        self.forward_passes = 0
        self.seconds = 0.0
        self.compiled = options.compile
        self._predict = self.model.predict
        if options.compile:
            # Freezing folds the (now constant) weights into the graph; only valid for inference, which
            # is all this private copy is used for. The batch is always padded to ``batch_size`` so the
            # compiled graph sees one shape and never recompiles.
            # ``torch.compile(options={"freezing": True})`` does not reach the freezing pass (measured:
            # plain aten convolutions come out), so the config is patched around every call instead; the
            # patch is what Inductor reads when it compiles on the first call.
            self._predict = torch.compile(self.model.predict, backend="inductor", dynamic=False)  # type: ignore[assignment]

    def step(self, batch: list[tuple[Canvas, tuple[int, int, int]]]) -> None:
        """One forward pass for the pending requests in ``batch``; results go back to their canvases."""
        t0 = time.perf_counter()
        n = len(batch)
        for i, (canvas, pos) in enumerate(batch):
            canvas.fill_inputs(pos, self.host_np[0, i, 0], self.host_np[1, i, 0])
        with torch.inference_mode():
            inputs = self.host.to(self.device, non_blocking=True) if self.device.type == "cuda" else self.host
            rows = self.batch_size if self.compiled else n  # a fixed shape for the compiled graph
            image = inputs[0, :rows].contiguous(memory_format=self.memory_format)
            seed = inputs[1, :rows].contiguous(memory_format=self.memory_format)
            with (
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16),
                _frozen_weights(self.compiled),
            ):
                logits, log_variance = self._predict(image, seed)
            out = logits.float()
            if log_variance is not None:
                out = torch.cat([out, log_variance.float()], dim=1)
            result = out.cpu().contiguous().numpy()  # the one device-to-host copy of the pass
        for i, (canvas, pos) in enumerate(batch):
            canvas.apply(pos, result[i, 0], None if log_variance is None else result[i, 1])
        self.forward_passes += 1
        self.seconds += time.perf_counter() - t0


def _frozen_weights(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """Inductor's ``freezing`` switched on for the enclosed compiled call (a no-op when not compiling)."""
    if not enabled:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)  # type: ignore[no-any-return]


def run_canvases(
    canvases: Sequence[Canvas],
    model: FFNModel,
    options: InferenceOptions | None = None,
    *,
    progress: bool = False,
) -> list[SubvolumeResult]:
    """Advance every canvas until all seeds are tried, up to ``options.batch_size`` canvases per pass.

    Canvases are served round-robin, so all of them progress while there are more canvases than batch
    slots. Returns the canvases' results in the order given.
    """
    options = options or InferenceOptions()
    engine = _Engine(model, options)
    active = deque(canvases)
    with _ProgressDisplay(canvases, enabled=progress) as display:
        while active:
            batch: list[tuple[Canvas, tuple[int, int, int]]] = []
            for _ in range(len(active)):
                if len(batch) == engine.batch_size:
                    break
                canvas = active.popleft()
                pos = canvas.next_request()
                if pos is not None:
                    batch.append((canvas, pos))
                    active.append(canvas)
            if batch:
                engine.step(batch)
            display.update()
    return [canvas.result() for canvas in canvases]


def segment_subvolumes(
    raws: Sequence[np.ndarray],
    model: FFNModel,
    options: InferenceOptions | None = None,
    *,
    progress: bool = False,
) -> list[SubvolumeResult]:
    """Flood-fill several (z, y, x) subvolumes at once, batching network steps across them.

    Each raw is uint8 or float in raw intensity units (normalised with the model's ``image_mean`` and
    ``image_stddev``) and at least one field of view on every axis. The results equal those of
    :func:`segment_subvolume` on each raw alone.
    """
    options = options or InferenceOptions()
    if not isinstance(model, FFNModel):
        raise InputError(
            f"model must be an FFNModel (see connectomix.segment.models), got {type(model).__name__}"
        )
    resolve_device(options.device)
    canvases = [Canvas(raw, model.config, options) for raw in raws]
    if not options.consensus:
        return run_canvases(canvases, model, options, progress=progress)
    reverse = dataclasses.replace(options, seed_policy=reversed_policy(options.seed_policy))
    canvases += [Canvas(raw, model.config, reverse) for raw in raws]
    results = run_canvases(canvases, model, options, progress=progress)
    n = len(raws)
    return [_consensus_result(f, r, options) for f, r in zip(results[:n], results[n:], strict=True)]


def reversed_policy(policy: str | SeedPolicy) -> str | SeedPolicy:
    """The seed policy that visits ``policy``'s seeds in the opposite order."""
    if isinstance(policy, str):
        if policy.startswith(REVERSE_PREFIX):
            return policy[len(REVERSE_PREFIX) :]
        return REVERSE_PREFIX + policy
    if isinstance(policy, Reverse):
        return policy.policy
    return Reverse(policy)


def _consensus_result(
    forward: SubvolumeResult, reverse: SubvolumeResult, options: InferenceOptions
) -> SubvolumeResult:
    """One subvolume's forward and reverse runs combined: split-consensus ids, the forward run's maps.

    Each consensus object is reported with the seed, steps and seconds of the forward object it came from
    and its own size; the counters add up both runs' work.
    """
    segmentation = consensus(forward.segmentation, reverse.segmentation, min_size=options.min_segment_size)
    ids, first = np.unique(segmentation.ravel(), return_index=True)
    sizes = np.bincount(segmentation.ravel().astype(np.int64))
    by_id = {o.id: o for o in forward.objects}
    objects = []
    forward_flat = forward.segmentation.ravel()
    for new_id, index in zip(ids.tolist(), first.tolist(), strict=True):
        if new_id == 0:
            continue
        source = by_id.get(int(forward_flat[index]))
        objects.append(
            ObjectStats(
                id=new_id,
                seed_zyx=source.seed_zyx if source else _index_to_zyx(index, segmentation.shape),
                voxels=int(sizes[new_id]),
                steps=source.steps if source else 0,
                seconds=source.seconds if source else 0.0,
            )
        )
    both = (forward.counters.to_dict(), reverse.counters.to_dict())
    counters = InferenceCounters(**{name: both[0][name] + both[1][name] for name in both[0]})
    counters.seconds = max(forward.counters.seconds, reverse.counters.seconds)  # the runs overlap in time
    counters.objects = len(objects)
    counters.voxels_segmented = int(np.count_nonzero(segmentation))
    return SubvolumeResult(
        segmentation=segmentation,
        probability=forward.probability,
        uncertainty=forward.uncertainty,
        objects=objects,
        counters=counters,
    )


def segment_subvolume(
    raw: np.ndarray,
    model: FFNModel,
    options: InferenceOptions | None = None,
    *,
    progress: bool = False,
) -> SubvolumeResult:
    """Flood-fill one (z, y, x) subvolume (see :func:`segment_subvolumes` and :class:`SubvolumeResult`)."""
    return segment_subvolumes([raw], model, options, progress=progress)[0]


class _ProgressDisplay:
    """A rich bar over seeds tried with objects, steps/s and voxels/s; silent unless enabled on a TTY."""

    def __init__(self, canvases: Sequence[Canvas], enabled: bool) -> None:
        self.canvases = canvases
        self.enabled = enabled and is_terminal()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._t0 = time.perf_counter()
        self._last = 0.0

    def __enter__(self) -> _ProgressDisplay:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]flood filling"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("ffn", total=None, stats="seeds")
        return self

    def update(self, force: bool = False) -> None:
        if self._progress is None or self._task is None:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        done = sum(c.seeds_done for c in self.canvases)
        total = sum(c.counters.seeds_total for c in self.canvases) or None
        steps = sum(c.counters.steps for c in self.canvases)
        objects = sum(c.counters.objects for c in self.canvases)
        voxels = sum(c.counters.voxels_segmented for c in self.canvases)
        elapsed = max(now - self._t0, 1e-9)
        stats = (
            f"seeds · {objects} objects · {steps / elapsed:.1f} steps/s · {voxels / elapsed:,.0f} voxels/s"
        )
        self._progress.update(self._task, completed=done, total=total, stats=stats)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self.update(force=True)
            self._progress.__exit__(None, None, None)


def _index_to_zyx(index: int, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Convert a flat C-order index into a (z, y, x) voxel coordinate of a 3-D volume of ``shape``."""
    z, y, x = np.unravel_index(index, shape)
    return int(z), int(y), int(x)
