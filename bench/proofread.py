"""Benchmark: the proofreading loop on FIB-25 with known errors: flag → queue → simulated proofreaders → VI.

Data: FIB-25 ``training_sample2`` (10 nm isotropic), crop ``[50:200]³`` (``--crop``) of the ground-truth
bodies and the EM image. The ground truth is perturbed with
:func:`~connectomix.evaluate.perturb.perturb_segmentation` (``--merges`` false merges of touching bodies and
``--splits`` bodies cut across their longest axis, ``--seed``); that perturbed segmentation is what the
loop starts from, and it is scored against the unperturbed ground truth throughout.

1. **Flagging.** The probability map is :func:`~connectomix.flag.disagreement_probability` of the perturbed
   segmentation and :func:`~connectomix.segment.baseline.boundary_from_raw` of the EM image (neither the
   ground truth nor the error locations enter it); :func:`~connectomix.flag.flag_volume` (top 1 % of
   voxels) turns it into ranked tasks. A task *hits* when its point lies within 10 voxels of an injected
   error's interface (:func:`~connectomix.evaluate.perturb.error_interfaces`); the chance level is the
   same measure at 20,000 uniformly random voxels. Reported for the top K = 20 and 50 tasks: the hit
   rate, the ratio to chance, and how many injected errors the tasks *name* (a split task on a falsely
   merged segment, a merge task on the two pieces of a false split), also over all tasks.
2. **Closed loop.** All tasks go into a :class:`~connectomix.proofread.queue.TaskQueue` (a SQLite file in
   a temporary directory, or ``--db URL``), the perturbed segmentation into a new
   :class:`~connectomix.proofread.edits.EditLog` (with the EM image, whose sheetness map splits follow).
   :func:`~connectomix.proofread.simulate.simulate` works the queue with ``--users`` simulated
   proofreaders (``--seconds-per-task`` each, log-normally jittered, on a simulated clock) who answer from
   the ground truth, with error rate 0 and 0.1 (a tenth of the answers flipped: a needed edit missed, a
   correct merge task merged anyway). After each cumulative budget of tasks (``--budgets``, then all of
   them) the current version is read from the edit log and scored: VI split / merge / total (bits) and
   ARAND against the ground truth, and how many injected errors are fixed (a false merge when its two
   bodies' largest segments differ; a false split when one segment holds ≥ 90 % of the body).

**The random-places control.** The same loop, with the same number of tasks of the same kinds in the same
order (task i of the control has the kind of ranked task i), each at a *uniformly random voxel* of the
crop instead of a flagged place: a *split* task names the segment at a random voxel (redrawn while it is
unassigned); a *merge* task sits on the segment boundary nearest a random voxel (the nearest voxel with a
face neighbour in another segment) and names the two segments that meet there, one point in each; an
*unassigned* task is a random voxel. So every control task is one a proofreader can act on (a merge task
always joins two real neighbours, a split task always names a real segment), and the control differs from
the ranked queue only in *where* the tasks are. It is a fair peer and a strong one: the simulated
proofreader sees a 97³-voxel window around the task, so any split task on a falsely merged segment finds
its merge, and large merged segments catch many random voxels.

The simulated proofreader is :class:`~connectomix.proofread.simulate.ProofreaderModel` with its default
thresholds; ``--min-split-fraction`` lowers the share of a segment (within the 97³ window) that a second
body must hold before a split task is answered with a split: many injected merges join a small body to a
large one (2-5 % of the segment in the window), which the default 10 % does not split.

Run from the repository root: ``.venv/bin/python bench/proofread.py`` (about 1.5 minutes on 2 cores;
``--quick``: a 100³ crop, 8 + 8 errors, budgets 10 and 25, about 30 s). Results go to
``bench/results/proofread.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine

REPO = Path(__file__).resolve().parents[1]
RES = (10.0, 10.0, 10.0)
HIT_VOXELS = 10
TOP_KS = (20, 50)
RANDOM_VOXELS = 20_000
SPLIT_FIXED_FRACTION = 0.9
CHUNKS = (64, 64, 64)
FACE_OFFSETS = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))


# -- flagging quality -------------------------------------------------------------------------------------
def names_error(task: Any, error: Any) -> bool:
    """A split task on a falsely merged segment, or a merge task on the two pieces of a false split."""
    if error.kind == "merge":
        return task.kind == "split" and tuple(task.segment_ids) == tuple(error.segment_ids)
    return task.kind == "merge" and set(task.segment_ids) == set(error.segment_ids)


def named(tasks: Sequence[Any], errors: Sequence[Any]) -> set[int]:
    """Indices of the ``errors`` that some task of ``tasks`` names."""
    return {i for i, e in enumerate(errors) if any(names_error(t, e) for t in tasks)}


def hit_rate(points_xyz: np.ndarray, to_error: np.ndarray) -> float:
    """Fraction of the (x, y, z) voxel points within ``HIT_VOXELS`` of an injected error's interface."""
    if len(points_xyz) == 0:
        return float("nan")
    zyx = np.asarray(points_xyz, dtype=np.int64)[:, ::-1]
    return float((to_error[tuple(zyx.T)] <= HIT_VOXELS).mean())


def task_points(tasks: Sequence[Any]) -> np.ndarray:
    return np.array([t.point_xyz for t in tasks], dtype=np.int64).reshape(-1, 3)


# -- the random-places control ---------------------------------------------------------------------------
def random_tasks(seg: np.ndarray, kinds: Sequence[str], seed: int) -> list[Any]:
    """One control task per entry of ``kinds``, each at a uniformly random voxel (see the module docstring).

    ``seg`` is ``(z, y, x)``; scores fall with the index, so a queue claims them in order.
    """
    from scipy import ndimage

    from connectomix.flag import Task

    rng = np.random.default_rng(seed)
    shape = np.array(seg.shape)
    contact = np.zeros(seg.shape, bool)  # labelled voxels with a face neighbour in another labelled segment
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        face = (seg[tuple(lo)] != seg[tuple(hi)]) & (seg[tuple(lo)] != 0) & (seg[tuple(hi)] != 0)
        contact[tuple(lo)] |= face
        contact[tuple(hi)] |= face
    nearest = ndimage.distance_transform_edt(~contact, return_distances=False, return_indices=True)

    def voxel() -> tuple[int, int, int]:
        z, y, x = (int(v) for v in rng.integers(0, shape))
        return z, y, x

    def xyz(zyx: Sequence[int]) -> list[int]:
        return [int(zyx[2]), int(zyx[1]), int(zyx[0])]

    tasks = []
    for i, kind in enumerate(kinds):
        score = float(len(kinds) - i)
        evidence: dict[str, Any] = {"control": "random voxel"}
        if kind == "merge":
            p = tuple(int(v) for v in nearest[(slice(None), *voxel())])
            a = int(seg[p])
            neighbours = []
            for offset in FACE_OFFSETS:
                q = tuple(c + o for c, o in zip(p, offset, strict=True))
                if all(0 <= c < s for c, s in zip(q, seg.shape, strict=True)) and int(seg[q]) not in (0, a):
                    neighbours.append(q)
            q = neighbours[int(rng.integers(len(neighbours)))]
            b = int(seg[q])
            evidence["points_xyz"] = [xyz(p), xyz(q)] if a < b else [xyz(q), xyz(p)]
            tasks.append(
                Task.create("merge", xyz(p), (a, b), score, resolution_nm_xyz=RES, evidence=evidence)
            )
        elif kind == "split":
            v = voxel()
            while seg[v] == 0:
                v = voxel()
            tasks.append(
                Task.create("split", xyz(v), (int(seg[v]),), score, resolution_nm_xyz=RES, evidence=evidence)
            )
        else:
            tasks.append(Task.create("unassigned", xyz(voxel()), (), score, resolution_nm_xyz=RES))
    return tasks


# -- scoring ----------------------------------------------------------------------------------------------
class ErrorCheck:
    """Which injected errors a segmentation has fixed (see the module docstring for the rules)."""

    def __init__(self, gt: np.ndarray, errors: Sequence[Any]) -> None:
        flat = gt.ravel()
        self.errors = list(errors)
        self.voxels = {g: np.flatnonzero(flat == g) for e in self.errors for g in e.gt_ids}

    def _largest(self, seg_flat: np.ndarray, body: int) -> tuple[int, float]:
        ids, counts = np.unique(seg_flat[self.voxels[body]], return_counts=True)
        best = int(np.argmax(counts))
        return int(ids[best]), float(counts[best] / counts.sum())

    def fixed(self, seg: np.ndarray) -> dict[str, int]:
        flat = seg.ravel()
        out = {"merges_fixed": 0, "splits_fixed": 0}
        for error in self.errors:
            if error.kind == "merge":
                a, b = (self._largest(flat, g)[0] for g in error.gt_ids)
                out["merges_fixed"] += int(a != b)
            else:
                out["splits_fixed"] += int(self._largest(flat, error.gt_ids[0])[1] >= SPLIT_FIXED_FRACTION)
        return out


def scores(seg: np.ndarray, gt: np.ndarray, check: ErrorCheck) -> dict[str, float]:
    from connectomix.evaluate import evaluate

    result = evaluate(seg, gt)
    return {
        "vi_split": result.vi_split,
        "vi_merge": result.vi_merge,
        "vi": result.vi,
        "arand": result.arand,
    } | check.fixed(seg)


# -- the closed loop --------------------------------------------------------------------------------------
def run_loop(
    name: str,
    tasks: Sequence[Any],
    *,
    gt: np.ndarray,
    check: ErrorCheck,
    budgets: Sequence[int],
    error_rate: float,
    args: argparse.Namespace,
    workdir: Path,
    seg_url: str,
    raw_url: str,
    run_id: str,
) -> list[dict[str, Any]]:
    """Enqueue ``tasks`` (claimed in list order), work them in cumulative ``budgets`` then to the end, and
    score the edit log's current version after each budget."""
    from connectomix.errors import InputError
    from connectomix.proofread.edits import EditLog
    from connectomix.proofread.queue import TaskQueue
    from connectomix.proofread.simulate import ProofreaderModel, SimulatedClock, simulate

    db = args.db or f"sqlite:///{workdir / f'{name}.db'}"
    clock = SimulatedClock()
    queue = TaskQueue(db, clock=clock)
    if queue.depth() != 0:
        raise InputError(f"the task queue in {args.db} must be empty, found {queue.depth()} queued tasks")
    n = len(tasks)
    # keys made unique per run (a shared --db keeps every run's tasks); priority = rank, so claims follow
    # the list's order whatever the scores
    keyed = [dataclasses.replace(t, key=f"{run_id}-{name}-{i:04d}-{t.key}") for i, t in enumerate(tasks)]
    for i, task in enumerate(keyed):
        queue.enqueue(task, priority=float(n - i))
    log = EditLog.create(
        db, workdir / "ws", seg_url, raw_url=raw_url, name=f"{name}-{run_id}", chunks_zyx=CHUNKS
    )
    model = ProofreaderModel(
        seconds_per_task=args.seconds_per_task,
        error_rate=error_rate,
        min_split_fraction=args.min_split_fraction,
    )
    rows = [
        {"budget": 0, "tasks": 0, "edits": 0, "flipped": 0, "simulated_hours": 0.0}
        | scores(log.read(), gt, check)
    ]
    done, edits, flipped, seconds, actions = 0, 0, 0, 0.0, Counter[str]()
    stages = [b for b in budgets if b < n] + [n]
    for stage, budget in enumerate(stages):
        tick = time.perf_counter()
        report = simulate(
            queue,
            log,
            gt,
            users=args.users,
            model=model,
            max_tasks=budget - done,
            clock=clock,
            seed=args.seed + stage,
        )
        done += report.tasks
        edits += report.edits
        flipped += report.flipped
        seconds += report.simulated_seconds
        actions.update(report.actions)
        row = {
            "budget": budget,
            "tasks": done,
            "edits": edits,
            "flipped": flipped,
            "actions": dict(actions),
            "simulated_hours": seconds / 3600.0,
            "wall_seconds": time.perf_counter() - tick,
        } | scores(log.read(), gt, check)
        rows.append(row)
        print(
            f"  {name}: {done} tasks, {edits} edits, VI {row['vi']:.3f} (split {row['vi_split']:.3f}, merge "
            f"{row['vi_merge']:.3f}), ARAND {row['arand']:.3f}, fixed {row['merges_fixed']} merges "
            f"{row['splits_fixed']} splits ({row['wall_seconds']:.0f} s)",
            flush=True,
        )
    log.close()
    queue.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", default="50,200", help="START,STOP voxels of the ts2 cube")
    parser.add_argument("--merges", type=int, default=15)
    parser.add_argument("--splits", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--seconds-per-task", type=float, default=30.0)
    parser.add_argument("--budgets", default="25,50,100", help="cumulative task budgets (then all tasks)")
    parser.add_argument(
        "--min-split-fraction",
        type=float,
        default=0.1,
        help="share of a segment (in the proofreader's window) the second body needs for the simulated "
        "proofreader to split it (default: ProofreaderModel's)",
    )
    parser.add_argument("--error-rates", default="0,0.1", help="proofreader error rates to run")
    parser.add_argument("--db", default=None, help="database URL for queues and edit logs (default: SQLite "
                        "files in a temporary directory); its task queue must be empty")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="100³ crop, 8 + 8 errors, budgets 10,25")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "proofread.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.crop, args.merges, args.splits, args.budgets = "50,150", 8, 8, "10,25"

    import edt
    from rich.console import Console
    from rich.table import Table

    from connectomix.evaluate.perturb import error_interfaces, perturb_segmentation
    from connectomix.flag import disagreement_probability, flag_volume
    from connectomix.segment.baseline import boundary_from_raw
    from connectomix.volume import open_volume
    from connectomix.volume.datasets import data_dir

    console = Console(width=160)
    if data_dir() is None:
        console.print(
            "skipped: real data not found (set CX_DATA_DIR or place shared/testdata beside the repository)"
        )
        return 0
    start_wall = time.perf_counter()
    lo, hi = (int(v) for v in args.crop.split(","))
    budgets = sorted(int(v) for v in args.budgets.split(",") if v.strip())
    error_rates = [float(v) for v in args.error_rates.split(",") if v.strip()]
    crop = (slice(lo, hi),) * 3
    gt = np.ascontiguousarray(open_volume("fib25-ts2/gt").read()[crop])
    raw = np.ascontiguousarray(open_volume("fib25-ts2/raw").read()[crop])
    timing: dict[str, float] = {}

    # -- perturb and flag ------------------------------------------------------------------------------------
    tick = time.perf_counter()
    perturbed = perturb_segmentation(
        gt, n_merges=args.merges, n_splits=args.splits, seed=args.seed, min_size=300, max_gap=0
    )
    seg = perturbed.segmentation
    errors = perturbed.injected
    timing["perturb_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    boundary = boundary_from_raw(raw, RES)
    prob = disagreement_probability(seg, boundary)
    tasks = flag_volume(seg, prob, resolution_nm_xyz=RES, top_fraction=0.01)
    timing["flag_seconds"] = time.perf_counter() - tick
    control = random_tasks(seg, [t.kind for t in tasks], args.seed)
    to_error = edt.edt(~error_interfaces(perturbed, gt), black_border=False)
    rng = np.random.default_rng(args.seed)
    random_xyz = np.stack([rng.integers(0, n, RANDOM_VOXELS) for n in gt.shape[::-1]], axis=1)
    chance = hit_rate(random_xyz, to_error)
    flagging: dict[str, Any] = {
        "tasks": len(tasks),
        "kinds": dict(Counter(t.kind for t in tasks)),
        "injected_errors": len(errors),
        "random_voxel_hit": chance,
        "named_by_any_task": len(named(tasks, errors)),
        "named_by_any_control_task": len(named(control, errors)),
        "top": [],
    }
    for k in TOP_KS:
        if k > len(tasks):
            continue
        hit = hit_rate(task_points(tasks[:k]), to_error)
        flagging["top"].append(
            {
                "k": k,
                "hit": hit,
                "ratio_to_random_voxels": hit / chance,
                "control_tasks_hit": hit_rate(task_points(control[:k]), to_error),
                "errors_named": len(named(tasks[:k], errors)),
                "tasks_naming_an_error": sum(any(names_error(t, e) for e in errors) for t in tasks[:k]),
                "control_errors_named": len(named(control[:k], errors)),
            }
        )
    console.print(
        f"crop ts2[{lo}:{hi}]³, {len(errors)} injected errors ({args.merges} merges, {args.splits} splits), "
        f"{len(tasks)} tasks {flagging['kinds']}; perturb {timing['perturb_seconds']:.1f} s, flag "
        f"{timing['flag_seconds']:.1f} s"
    )
    flag_table = Table(title=f"Flagged tasks vs injected errors (hit: within {HIT_VOXELS} voxels of one)")
    for column in ("top K", "hit", "random voxels", "ratio", "control tasks hit", "errors named",
                   "control errors named"):  # fmt: skip
        flag_table.add_column(column, justify="right")
    for r in flagging["top"]:
        flag_table.add_row(
            str(r["k"]), f"{r['hit']:.2f}", f"{chance:.3f}", f"{r['ratio_to_random_voxels']:.2f}×",
            f"{r['control_tasks_hit']:.2f}", f"{r['errors_named']} / {len(errors)}",
            f"{r['control_errors_named']} / {len(errors)}",
        )  # fmt: skip
    flag_table.add_row(
        f"all {len(tasks)}", f"{hit_rate(task_points(tasks), to_error):.2f}", f"{chance:.3f}",
        f"{hit_rate(task_points(tasks), to_error) / chance:.2f}×",
        f"{hit_rate(task_points(control), to_error):.2f}",
        f"{flagging['named_by_any_task']} / {len(errors)}",
        f"{flagging['named_by_any_control_task']} / {len(errors)}",
    )  # fmt: skip
    console.print(flag_table)

    # -- the closed loop -------------------------------------------------------------------------------------
    check = ErrorCheck(gt, errors)
    run_id = uuid.uuid4().hex[:8]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cx-bench-proofread-") as tmp:
        workdir = Path(tmp)
        urls = {}
        for what, array in (("seg", seg), ("raw", raw)):
            urls[what] = f"zarr://{workdir / what}.zarr"
            volume = open_volume(
                urls[what], "w", shape=array.shape, dtype=array.dtype, chunks=CHUNKS, resolution=RES
            )
            volume.write(volume.bounds, array)
        for error_rate in error_rates:
            for order, queue_tasks in (("ranked", tasks), ("random", control)):
                name = f"{order}-e{round(error_rate * 100):02d}"
                tick = time.perf_counter()
                rows = run_loop(
                    name,
                    queue_tasks,
                    gt=gt,
                    check=check,
                    budgets=budgets,
                    error_rate=error_rate,
                    args=args,
                    workdir=workdir,
                    seg_url=urls["seg"],
                    raw_url=urls["raw"],
                    run_id=run_id,
                )
                timing[f"{name}_seconds"] = time.perf_counter() - tick
                runs.extend({"error_rate": error_rate, "order": order} | row for row in rows)

    table = Table(
        title=f"Simulated proofreading of the flagged queue vs random places ({args.users} users, "
        f"{args.seconds_per_task:.0f} s/task; VI in bits, lower is better)"
    )
    for column in ("error rate", "order", "tasks", "edits", "VI split", "VI merge", "VI", "ARAND",
                   "merges fixed", "splits fixed", "sim. h"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(
            f"{r['error_rate']:.1f}", r["order"], str(r["tasks"]), str(r["edits"]), f"{r['vi_split']:.3f}",
            f"{r['vi_merge']:.3f}", f"{r['vi']:.3f}", f"{r['arand']:.3f}",
            f"{r['merges_fixed']} / {args.merges}", f"{r['splits_fixed']} / {args.splits}",
            f"{r['simulated_hours']:.2f}",
        )  # fmt: skip
    console.print(table)
    timing["total_seconds"] = time.perf_counter() - start_wall
    console.print(f"total {timing['total_seconds']:.0f} s")

    report = {
        "benchmark": "proofread",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {
            "dataset": "fib25-ts2",
            "crop_zyx": [[lo, hi]] * 3,
            "resolution_nm": list(RES),
            "merges": args.merges,
            "splits": args.splits,
            "seed": args.seed,
            "users": args.users,
            "seconds_per_task": args.seconds_per_task,
            "min_split_fraction": args.min_split_fraction,
            "budgets": budgets,
            "error_rates": error_rates,
            "hit_voxels": HIT_VOXELS,
            "random_voxels": RANDOM_VOXELS,
            "split_fixed_fraction": SPLIT_FIXED_FRACTION,
            "database": "sqlite (temporary)" if args.db is None else "given (--db)",
            "quick": args.quick,
        },
        "flagging": flagging,
        "runs": runs,
        "timing": timing,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    tmp_json.replace(args.json)
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
