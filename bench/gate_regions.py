"""Benchmark: does the loop's validation region predict the held-out region? Every model of a finished
``cx loop --data fib25-ts2`` run scored on other candidate validation regions.

The gate promotes an adapter when it lowers VI on region B; that is only worth something if B's verdict
carries over to data it has not seen. This script takes a loop run's workspace (its weights registry: the
base and every adapter the loop fitted, promoted or not) and its JSON report (each candidate's VI on the
held-out region C), scores each model on the regions given with ``--region NAME=X0,Y0,Z0:X1,Y1,Z1``
(voxels, x-y-z, stop exclusive; default: the earlier, small B ``[30:94, 140:236, 140:236]`` (z, y, x) of
``training_sample2``, 27 ground-truth bodies of 100 voxels or more, the largest 54 % of it, and the loop's
B, ``B-large`` = ``[0:125, 136:250, 0:250]``, 78 bodies, the largest 19 %), segmented as the loop segments
(bf16 where the
CPU has it, half a field of view of context), and prints each region's VI change beside C's, with the
sign agreement of the two (would a gate on that region have let the adapter through, and would C have
agreed?).

Run from the repository root after a loop run::

    .venv/bin/python bench/gate_regions.py --workspace W --loop-json W.json

Results go to ``bench/results/gate_regions.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connectomix.cli.parsing import parse_box_xyz
from connectomix.learn.loop import FIB25_REGIONS, LoopSettings, RegionSegmenter, fib25_data
from connectomix.learn.registry import WeightsRegistry
from connectomix.segment.inference import InferenceOptions
from connectomix.segment.precision import resolve_precision
from connectomix.volume.box import Box
from machine import machine

RESULTS = Path(__file__).resolve().parent / "results"
B_SMALL = "140,140,30:236,236,94"  # x-y-z of z, y, x [30:94, 140:236, 140:236], the loop's B until 2026-12-07


def region_arguments(values: list[str]) -> dict[str, Box]:
    """``NAME=X0,Y0,Z0:X1,Y1,Z1`` → {name: Box}; the small B and the loop's B where none is given."""
    if not values:
        values = [f"B={B_SMALL}", f"B-large={_xyz(FIB25_REGIONS.b)}"]
    regions = {}
    for value in values:
        name, sep, box = value.partition("=")
        if not sep or not name:
            raise ValueError(f"--region must look like NAME=X0,Y0,Z0:X1,Y1,Z1, got {value!r}")
        regions[name] = parse_box_xyz(box, f"--region {name}")
    return regions


def _xyz(box: Box) -> str:
    start, stop = box.start[::-1], box.stop[::-1]
    return f"{','.join(map(str, start))}:{','.join(map(str, stop))}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="the loop run's workspace folder")
    parser.add_argument("--loop-json", type=Path, required=True, help="the loop run's JSON report")
    parser.add_argument("--region", action="append", default=[], help="NAME=X0,Y0,Z0:X1,Y1,Z1 (repeat)")
    parser.add_argument("--json", type=Path, default=RESULTS / "gate_regions.json")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    try:
        regions = region_arguments(args.region)
        report = json.loads(args.loop_json.read_text())
        base, data = fib25_data()
        registry = WeightsRegistry(f"sqlite:///{args.workspace / 'workspace.db'}", args.workspace)
        entries = registry.history("loop")
    except Exception as error:  # one line, not a traceback
        console.print(f"error: {error}")
        return 2
    c_of = {row["entry"]: row["vi_c_candidate"] for row in report["curve"] if row.get("entry")}
    corrections_of = {row["entry"]: row["corrections"] for row in report["curve"] if row.get("entry")}
    torch.set_num_threads(min(2, torch.get_num_threads()))
    precision = resolve_precision("auto")
    segmenter = RegionSegmenter(
        data, InferenceOptions(precision=precision), LoopSettings().context_zyx(base.config.fov_zyx)
    )
    rows = []
    for entry in entries:
        model = registry.load(entry)
        row = {
            "entry": entry.label,
            "kind": entry.kind,
            "status": entry.status,
            "corrections": corrections_of.get(entry.label, 0),
            "C": c_of.get(entry.label, report["vi_before"] if entry.kind == "base" else None),
        }
        for name, box in regions.items():
            row[name] = segmenter.score(model, box)
        console.print(f"  {entry.label}: " + ", ".join(f"{n} {row[n]['vi']:.3f}" for n in regions))
        rows.append(row)
    registry.dispose()
    base_row = rows[0]
    table = Table(title=f"bench/gate_regions.py — {precision}, {machine()['cpu']}")
    for column in ("model", "tasks", "status", *(f"Δ VI {n}" for n in regions), "Δ VI C", "agrees with C"):
        table.add_column(column, justify="right")
    for row in rows:
        delta = {n: row[n]["vi"] / base_row[n]["vi"] - 1 for n in regions}
        delta_c = None if row["C"] is None else row["C"] / base_row["C"] - 1
        row["relative_change"] = {**delta, "C": delta_c}
        row["agrees_with_c"] = (
            None
            if delta_c is None or row is base_row
            else {n: (d < 0) == (delta_c < 0) for n, d in delta.items()}
        )
        agree = "" if row["agrees_with_c"] is None else " ".join(
            f"{n}:{'yes' if a else 'no'}" for n, a in row["agrees_with_c"].items()
        )  # fmt: skip
        table.add_row(
            row["entry"],
            str(row["corrections"]),
            row["status"],
            *(f"{delta[n]:+.1%}" for n in regions),
            "" if delta_c is None else f"{delta_c:+.1%}",
            agree,
        )
    console.print(table)
    out = {
        "benchmark": "gate_regions",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "precision": precision,
        "loop_json": args.loop_json.name,
        "regions": {n: {"start_zyx": list(b.start), "stop_zyx": list(b.stop)} for n, b in regions.items()},
        "held_out_c": report["regions"]["C"],
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
