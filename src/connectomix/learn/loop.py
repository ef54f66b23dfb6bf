"""The closed loop: segment → flag → proofread → fit an adapter → gate → re-segment, scored on held-out data.

:func:`run_loop` works on one volume with ground truth and three disjoint boxes (global voxels, (z, y, x)):

* **A**, the proofread region: segmented by the served model, flagged (:func:`~connectomix.flag.flag_volume`
  on the FFN's probability map), the tasks enqueued in a :class:`~connectomix.proofread.queue.TaskQueue`
  and worked by simulated proofreaders (:func:`~connectomix.proofread.simulate.simulate`, answering from the
  ground truth of A only) through a versioned :class:`~connectomix.proofread.edits.EditLog`;
* **B**, the validation region: each new adapter is gated on VI of its segmentation of B against B's ground
  truth (:meth:`~connectomix.learn.registry.WeightsRegistry.gate`), the served model's score beside it;
* **C**, the held-out test region: segmented before and after, never used for training or gating.

Every region is segmented with ``context`` voxels of the surrounding EM image on each side (where the
volume has them) and the result cut back to the region. An FFN places seeds only half a field of view
inside its input, so a region segmented without context keeps an unsegmented band along its faces (35 %
of the voxels of a 72 × 128 × 64 synthetic region, measured), which no correction can teach away and which
would dominate its VI; with half a field of view of context (the default) the seeds cover exactly the
region. Context is image only: the labels of A, B and C are still used only in their own region.

After each cumulative number of corrected tasks in ``curve`` the completed tasks become correction patches
(:func:`~connectomix.learn.patches.patches_from_tasks`), the :class:`~connectomix.learn.ContinualLearner`
fits the served adapter further on the new ones (replay: confident patches of A with every flagged
place's neighbourhood left unknown, any ground truth given as ``replay_gt``, and the earlier corrections),
the adapter is registered with its lineage and gated, and C is segmented with the candidate and with the
served model. ``vi_after`` is the served model's VI on C at the end: an adapter that did not pass the gate
is never counted, and never built on (the next fit continues from the served adapter, or from the
learner's starting state while the base is served).

Every array is ``(z, y, x)``; VI in bits (split + merge), ARAND in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connectomix.errors import InputError
from connectomix.evaluate import evaluate
from connectomix.learn.continual import ContinualLearner, default_lora_config
from connectomix.learn.lora import Adapter
from connectomix.learn.patches import Patch, patches_from_tasks
from connectomix.learn.registry import WeightsRegistry
from connectomix.learn.replay import ReplayBuffer, confident_patches
from connectomix.segment.inference import InferenceOptions, segment_subvolume
from connectomix.segment.models import FFNModel
from connectomix.volume.box import Box, xyz_to_zyx

Log = Callable[[str], None]


@dataclass(frozen=True)
class LoopRegions:
    """The three disjoint boxes of the loop (global voxels, (z, y, x))."""

    a: Box
    b: Box
    c: Box

    def __post_init__(self) -> None:
        for one, two, names in (
            (self.a, self.b, "A and B"),
            (self.a, self.c, "A and C"),
            (self.b, self.c, "B and C"),
        ):
            if one.intersect(two).size > 0:
                raise InputError(f"regions {names} overlap ({one} and {two}); they must be disjoint")

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {
            name: {"start_zyx": list(box.start), "stop_zyx": list(box.stop)}
            for name, box in (("A", self.a), ("B", self.b), ("C", self.c))
        }


#: FIB-25 ``training_sample2`` (250³ voxels of 10 nm): three disjoint boxes, A (proofread) 100 × 120 × 120,
#: B (validation) 125 × 114 × 250 and C (held-out test) 94 × 218 × 218. B and C are large on purpose: VI of
#: a small box is decided by a few flood decisions in one or two bodies. Random adapter changes of the
#: trained size moved the earlier C, ``[150:214, 80:176, 80:176]`` (95 % one body), by ±7 %; the earlier B,
#: ``[30:94, 140:236, 140:236]`` (27 bodies, the largest 54 %), called 2 of a loop run's 5 adapters better
#: that made this C worse. B now holds 78 bodies of at least 100 voxels (the largest 19 % of it), C 88 (the
#: largest 55 %), and on all 5 adapters B's verdict matched C's (``bench/gate_regions.py``; README).
FIB25_REGIONS = LoopRegions(
    a=Box((10, 10, 10), (110, 130, 130)),
    b=Box((0, 136, 0), (125, 250, 250)),
    c=Box((140, 16, 16), (234, 234, 234)),
)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs. ``corrections``: tasks the simulated proofreaders complete in all; ``curve``: the
    cumulative task counts after which an adapter is fitted and scored (``corrections`` is always the
    last); ``epochs``, ``examples_per_patch``, ``max_fovs_per_example``, ``replay_fraction``, ``lr``,
    ``lora_last`` (None: the last 4 module groups), ``lora_rank``, ``centre_sampling`` (balanced or
    uniform), ``anchor_weight`` (the anchor term keeping the base's right logits): the learner
    (:class:`ContinualLearner`); ``confident_patches``: replay patches drawn from A's confident places,
    with ``replay_avoid_radius`` voxels around every flagged place left unknown;
    ``top_fraction``, ``flag_chunk`` and ``flag_nms_radius``: the flagging;
    ``users``: simulated proofreaders; ``min_improvement``: the gate's margin (VI bits); ``context``: voxels
    of EM image added on each side of every region when it is segmented (None: half the model's field of
    view per axis; 0: none)."""

    corrections: int = 200
    curve: tuple[int, ...] = (30, 60)
    epochs: int = 2
    examples_per_patch: int = 1
    max_fovs_per_example: int = 2
    replay_fraction: float = 0.33
    lr: float = 1e-3
    lora_last: int | None = None
    lora_rank: int = 4
    centre_sampling: str = "balanced"
    anchor_weight: float = 0.0
    confident_patches: int = 50
    replay_avoid_radius: int = 8
    top_fraction: float = 0.05
    flag_chunk: int = 32
    flag_nms_radius: float = 10.0
    users: int = 4
    min_improvement: float = 0.0
    context: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            isinstance(self.corrections, bool)
            or not isinstance(self.corrections, int)
            or self.corrections < 1
        ):
            raise InputError(f"corrections must be an integer >= 1, got {self.corrections!r}")
        points = sorted({int(n) for n in self.curve if 0 < int(n) < self.corrections} | {self.corrections})
        object.__setattr__(self, "curve", tuple(points))
        if (
            isinstance(self.replay_avoid_radius, bool)
            or not isinstance(self.replay_avoid_radius, int)
            or self.replay_avoid_radius < 0
        ):
            raise InputError(
                f"replay_avoid_radius must be an integer >= 0 voxels, got {self.replay_avoid_radius!r}"
            )
        if self.context is not None and (
            isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0
        ):
            raise InputError(f"context must be an integer >= 0 voxels or None, got {self.context!r}")
        if self.centre_sampling not in ("balanced", "uniform"):
            raise InputError(f"centre_sampling must be 'balanced' or 'uniform', got {self.centre_sampling!r}")
        if isinstance(self.anchor_weight, bool) or not (
            isinstance(self.anchor_weight, int | float)
            and math.isfinite(self.anchor_weight)
            and self.anchor_weight >= 0
        ):
            raise InputError(f"anchor_weight must be a number >= 0, got {self.anchor_weight!r}")

    def context_zyx(self, fov_zyx: Sequence[int]) -> tuple[int, int, int]:
        """Voxels of image added on each side of a region, per axis ``(z, y, x)``, for a model whose field
        of view is ``fov_zyx``: ``context`` on every axis, or half the field of view where it is None."""
        if self.context is None:
            return tuple(int(f) // 2 for f in fov_zyx)  # type: ignore[return-value]
        return (self.context,) * 3


@dataclass
class LoopData:
    """What the loop runs on: EM ``raw`` (uint8) and ``gt`` (ids), one ``(z, y, x)`` shape, voxel size
    ``resolution_nm_zyx``; ``replay_gt``: optional validated patches (e.g. the base's training data);
    ``info``: how the data was made (copied into the report)."""

    name: str
    raw: np.ndarray
    gt: np.ndarray
    resolution_nm_zyx: tuple[float, float, float]
    regions: LoopRegions
    replay_gt: list[Patch] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.raw.shape != self.gt.shape or self.raw.ndim != 3:
            raise InputError(f"raw {self.raw.shape} and gt {self.gt.shape} must be 3-D arrays of one shape")
        bounds = Box.from_shape(self.raw.shape)
        for name, box in (("A", self.regions.a), ("B", self.regions.b), ("C", self.regions.c)):
            if not bounds.contains(box):
                raise InputError(f"region {name} {box} lies outside the volume {bounds}")


def _scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    result = evaluate(seg, gt)
    return {"vi": result.vi, "vi_split": result.vi_split, "vi_merge": result.vi_merge, "arand": result.arand}


class RegionSegmenter:
    """Segments boxes of a :class:`LoopData` volume with a model, each with ``context_zyx`` voxels of image
    around it (where the volume has them) and cut back to the box, and scores them against the volume's
    ground truth; counts what it spent (``seconds``, ``voxels`` segmented including context, ``runs``)."""

    def __init__(self, data: LoopData, options: InferenceOptions, context_zyx: Sequence[int]) -> None:
        self.data, self.options = data, options
        self.context_zyx = tuple(int(c) for c in context_zyx)
        self.seconds = 0.0
        self.voxels = 0
        self.runs = 0

    def segment(self, model: FFNModel, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        """Segmentation (uint64) and probability map (uint8 or None) of ``box``, ``(z, y, x)``."""
        start = time.perf_counter()
        padded = box.pad(self.context_zyx).intersect(Box.from_shape(self.data.raw.shape))
        raw = np.ascontiguousarray(self.data.raw[padded.to_slices()])
        result = segment_subvolume(raw, model, self.options)
        inner = box.to_slices(padded.start)
        seg = np.ascontiguousarray(result.segmentation[inner])
        prob = None if result.probability is None else np.ascontiguousarray(result.probability[inner])
        self.seconds += time.perf_counter() - start
        self.voxels += padded.size
        self.runs += 1
        return seg, prob

    def score(self, model: FFNModel, box: Box) -> dict[str, float]:
        seg, _ = self.segment(model, box)
        return _scores(seg, self.data.gt[box.to_slices()])


def run_loop(
    base: FFNModel,
    data: LoopData,
    workdir: Path,
    settings: LoopSettings | None = None,
    *,
    options: InferenceOptions | None = None,
    precision: str = "auto",
    db: str | None = None,
    model_name: str = "loop",
    log: Log | None = None,
) -> dict[str, Any]:
    """Run the closed loop (see the module docstring) and return its JSON-able report.

    ``workdir`` receives the workspace: the SQLite database (unless ``db`` is a URL), the edit log, the
    weights registry's files. ``options``: how every region is segmented (default: Google's FIB-25 settings
    in ``precision``); ``precision``: also the learner's.
    """
    from connectomix.flag import flag_volume
    from connectomix.proofread.edits import EditLog
    from connectomix.proofread.queue import TaskQueue
    from connectomix.proofread.simulate import ProofreaderModel, SimulatedClock, simulate
    from connectomix.segment.precision import resolve_precision
    from connectomix.volume import open_volume

    settings = settings or LoopSettings()
    say = log or (lambda _: None)
    fast = resolve_precision(precision)  # type: ignore[arg-type]
    options = options or InferenceOptions(precision=fast)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = db or f"sqlite:///{workdir / 'workspace.db'}"
    regions = data.regions
    context = settings.context_zyx(base.config.fov_zyx)
    segmenter = RegionSegmenter(data, options, context)
    started = time.perf_counter()
    timing: dict[str, float] = {}

    # -- A: segment and flag -------------------------------------------------------------------------------
    seg_a, prob_a = segmenter.segment(base, regions.a)
    gt_a = np.ascontiguousarray(data.gt[regions.a.to_slices()])
    raw_a = np.ascontiguousarray(data.raw[regions.a.to_slices()])
    score_a = _scores(seg_a, gt_a)
    if prob_a is None:
        raise InputError("the loop needs the FFN's probability map (InferenceOptions.keep_probability)")
    res_xyz = tuple(float(v) for v in data.resolution_nm_zyx[::-1])
    tick = time.perf_counter()
    tasks = flag_volume(
        seg_a,
        prob_a,
        resolution_nm_xyz=res_xyz,
        top_fraction=settings.top_fraction,
        chunk_zyx=(settings.flag_chunk,) * 3,
        nms_radius_voxels=settings.flag_nms_radius,
    )
    timing["flag_seconds"] = time.perf_counter() - tick
    say(f"A {regions.a}: VI {score_a['vi']:.3f}, {len(tasks)} tasks flagged")
    if not tasks:
        raise InputError("flagging found no tasks in region A; nothing to proofread")

    clock = SimulatedClock()
    queue = TaskQueue(db_url, clock=clock)
    for rank, task in enumerate(tasks):
        queue.enqueue(task, priority=float(len(tasks) - rank))
    urls = {}
    for what, array in (("seg", seg_a), ("raw", raw_a)):
        urls[what] = f"zarr://{workdir / f'{what}_a.zarr'}"
        volume = open_volume(
            urls[what], "w", shape=array.shape, dtype=array.dtype, resolution=data.resolution_nm_zyx
        )
        volume.write(volume.bounds, array)
    edit_log = EditLog.create(db_url, workdir, urls["seg"], raw_url=urls["raw"], name="region-a")

    # -- replay: confident patches of A (flagged places left unknown); given ground truth ------------------
    replay = ReplayBuffer(capacity=max(64, 4 * settings.corrections), seed=settings.seed)
    avoid = np.array([xyz_to_zyx(t.point_xyz) for t in tasks], dtype=np.int64).reshape(-1, 3)
    confident = confident_patches(
        raw_a,
        seg_a,
        prob_a,
        base.config,
        n=settings.confident_patches,
        seed=settings.seed,
        avoid_zyx=avoid,
        avoid_radius=settings.replay_avoid_radius,
    )
    replay.extend(confident)
    replay.extend(data.replay_gt)

    # -- the registry, the learner, the baseline scores ----------------------------------------------------
    registry = WeightsRegistry(db_url, workdir, user="cx-loop")
    base_entry = registry.add_base(base, name=model_name, note=f"base of the loop on {data.name}")
    learner = ContinualLearner(
        base,
        default_lora_config(base, last=settings.lora_last, rank=settings.lora_rank),
        replay=replay,
        replay_fraction=settings.replay_fraction,
        lr=settings.lr,
        max_fovs_per_example=settings.max_fovs_per_example,
        precision=fast,
        seed=settings.seed,
        centre_sampling=settings.centre_sampling,
        anchor_weight=settings.anchor_weight,
    )
    served_b = {base_entry.id: segmenter.score(base, regions.b)}
    before_c = segmenter.score(base, regions.c)
    say(f"base: VI on B {served_b[base_entry.id]['vi']:.3f}, on C {before_c['vi']:.3f}")
    served_c = {base_entry.id: before_c}
    curve: list[dict[str, Any]] = [
        {
            "corrections": 0,
            "edits": 0,
            "vi_c_served": before_c["vi"],
            "vi_c_candidate": None,
            "promoted": None,
        }
    ]

    proofreader = ProofreaderModel()
    done, fits_seconds, parent = 0, 0.0, None
    adapters: dict[int, Adapter] = {}  # registry entry id -> the adapter fitted for it
    seen_event = 0
    for stage, target in enumerate(settings.curve):
        report = simulate(
            queue, edit_log, gt_a, users=settings.users, model=proofreader, max_tasks=target - done,
            clock=clock, seed=settings.seed + stage,
        )  # fmt: skip
        done += report.tasks
        new = queue.completions(seen_event)
        if new:
            seen_event = new[-1][0]
        patches = patches_from_tasks([t for _, t in new], edit_log, raw_a, base.config)
        if not patches:
            say(f"{done} tasks: no correction patches, nothing to fit")
            continue
        fit = learner.fit(patches, epochs=settings.epochs, examples_per_patch=settings.examples_per_patch)
        fits_seconds += fit.seconds
        entry = registry.add_adapter(
            fit.adapter,
            base=base_entry,
            trained_on_edits=fit.edits,
            trained_on_tasks=fit.tasks,
            parents=[parent] if parent is not None else [],
            metadata={"loop": data.name, "corrections": done, "fit": fit.to_dict()},
        )
        adapters[entry.id] = fit.adapter
        candidate = registry.load(entry)
        cand_b = segmenter.score(candidate, regions.b)
        served = registry.promoted(model_name)
        assert served is not None
        gate = registry.gate(
            entry,
            cand_b["vi"],
            baseline_score=served_b[served.id]["vi"],
            region={"data": data.name, "region": "B", **regions.to_dict()["B"]},
            min_improvement=settings.min_improvement,
        )
        served_b[entry.id] = cand_b
        cand_c = segmenter.score(candidate, regions.c)
        served_c[entry.id] = cand_c
        now_served = registry.promoted(model_name)
        assert now_served is not None
        if not gate.promoted:
            # A rejected candidate is kept in the registry but not built on: the next fit continues from
            # the adapter that is served (the learner's starting state while the base is served).
            learner.restore(adapters.get(now_served.id))
        parent = entry if gate.promoted else (now_served if now_served.id in adapters else None)
        learner.replay.extend(patches)
        row = {
            "corrections": done,
            "edits": int(edit_log.version),
            "patches": len(patches),
            "fit": fit.to_dict(),
            "entry": entry.label,
            "vi_b_candidate": cand_b["vi"],
            "vi_b_served_before": gate.baseline_score,
            "promoted": bool(gate.promoted),
            "vi_c_candidate": cand_c["vi"],
            "vi_c_served": served_c[now_served.id]["vi"],
            "scores_c_candidate": cand_c,
        }
        curve.append(row)
        say(
            f"{done} tasks ({row['edits']} edits, {len(patches)} patches, fit {fit.seconds:.0f} s): "
            f"VI on B {cand_b['vi']:.3f} vs served {gate.baseline_score:.3f} → "
            f"{'promoted' if gate.promoted else 'rejected'}; VI on C candidate {cand_c['vi']:.3f}, served "
            f"{row['vi_c_served']:.3f}"
        )
    final = registry.promoted(model_name)
    assert final is not None
    after_c = served_c[final.id]
    stats = queue.stats()
    out = {
        "data": data.name,
        "data_info": data.info,
        "regions": regions.to_dict(),
        "corrections": done,
        "edits": int(edit_log.version),
        "tasks_flagged": len(tasks),
        "vi_before": before_c["vi"],
        "vi_after": after_c["vi"],
        "vi_drop_fraction": (before_c["vi"] - after_c["vi"]) / before_c["vi"] if before_c["vi"] else 0.0,
        "scores_before": before_c,
        "scores_after": after_c,
        "served": final.label,
        "region_a_scores_before": score_a,
        "region_a_scores_after": _scores(edit_log.read(), gt_a),
        "curve": curve,
        "settings": dataclasses.asdict(settings),
        "precision": fast,
        "queue": {"done": stats.done, "depth": stats.depth},
        "replay": replay.counts(),
        "seconds": {
            "total": time.perf_counter() - started,
            "segment": segmenter.seconds,
            "fit": fits_seconds,
            **timing,
        },
        "segmentations": segmenter.runs,
        "segmented_voxels": segmenter.voxels,
        "context_voxels_zyx": list(context),
        "machine": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    edit_log.close()
    queue.dispose()
    registry.dispose()
    return out


def fib25_data(regions: LoopRegions = FIB25_REGIONS) -> tuple[FFNModel, LoopData]:
    """Google's imported FIB-25 model and FIB-25 ``training_sample2`` (NotFoundError without the data)."""
    from connectomix.errors import NotFoundError
    from connectomix.segment.models import FFNConfig
    from connectomix.segment.tf_import import import_tf_checkpoint
    from connectomix.volume import open_volume
    from connectomix.volume.datasets import data_dir

    root = data_dir()
    if root is None:
        raise NotFoundError(
            "FIB-25 data not found: set CX_DATA_DIR or place shared/testdata beside the repository"
        )
    model = import_tf_checkpoint(root / "reference" / "google_ffn_fib25" / "model.ckpt-27465036", FFNConfig())
    raw = open_volume("fib25-ts2/raw")
    gt = open_volume("fib25-ts2/gt").read().astype(np.uint64)
    return model, LoopData("fib25-ts2", raw.read(), gt, tuple(raw.resolution), regions)  # type: ignore[arg-type]


def curve_points(values: Sequence[int] | str) -> tuple[int, ...]:
    """Parse ``"25,50,100"`` (or a sequence) into positive task counts."""
    items = values.split(",") if isinstance(values, str) else list(values)
    try:
        points = tuple(int(v) for v in items if str(v).strip())
    except ValueError:
        raise InputError(f"curve must be comma-separated task counts, got {values!r}") from None
    if any(p < 1 for p in points):
        raise InputError(f"curve points must be >= 1 task, got {values!r}")
    return points


__all__ = [
    "FIB25_REGIONS",
    "LoopData",
    "LoopRegions",
    "LoopSettings",
    "RegionSegmenter",
    "curve_points",
    "fib25_data",
    "run_loop",
]
