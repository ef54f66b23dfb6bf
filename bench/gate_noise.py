"""Benchmark: how much of a loop adapter's VI change on FIB-25 is signal, and how much is noise?

VI on a small region is dominated by a few flood decisions in a few large bodies (the loop's earlier held-out
C, ``[150:214, 80:176, 80:176]``, was 95 % one ground-truth body), so any small change of the model moves it.
The script scores the loop's regions B and C (:data:`~connectomix.learn.loop.FIB25_REGIONS`; the committed
``bench/results/gate_noise.json`` was measured on that earlier C).
This script separates the trained direction from that noise, with the loop's own segmenter (bf16 where the
CPU has it, half a field of view of context):

* the **trained adapter** (``--adapter``, a safetensors file of a ``cx loop`` workspace's registry), with
  its low-rank update scaled by each of ``--scales`` (1 = as trained) and merged into the base weights, as
  the registry serves it;
* the trained adapter **not merged** into the base weights (the LoRA branch computed beside them): the
  same function as served, with other rounding;
* **random directions**: adapters of the same LoRA config whose every tensor is a Gaussian of the trained
  tensor's Frobenius norm (``--random`` of them, seeded), i.e. a change of the model of the same size in a
  direction that learned nothing.

The spread of the random rows is the noise floor of the gate on B and of the held-out score on C: a
candidate whose VI change lies inside it tells nothing about the corrections. The adapter comes from a
loop run: ``cx loop --data fib25-ts2 --workdir W`` registers the base as ``W/weights/000001-*.safetensors``
and its first adapter as ``W/weights/000002-*.safetensors``.

Run from the repository root: ``.venv/bin/python bench/gate_noise.py --adapter FILE`` (about 75 s per row
on a 2-core Xeon with AMX, measured). Results go to ``bench/results/gate_noise.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from connectomix.learn.loop import FIB25_REGIONS, LoopSettings, RegionSegmenter, fib25_data
from connectomix.learn.lora import Adapter, apply_adapter, load_adapter, merge_and_remove_lora
from connectomix.segment.inference import InferenceOptions
from connectomix.segment.precision import resolve_precision
from machine import machine

RESULTS = Path(__file__).resolve().parent / "results"


def scaled(adapter: Adapter, scale: float) -> Adapter:
    """The adapter with its update ``B · A`` scaled by ``scale`` (``lora_B`` multiplied)."""
    tensors = {k: v * scale if k.endswith("lora_B") else v.clone() for k, v in adapter.tensors.items()}
    return Adapter(adapter.config, tensors, {"scale": str(scale)})


def random_direction(adapter: Adapter, seed: int) -> Adapter:
    """An adapter of the same config whose tensors are Gaussian with the trained tensors' norms."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, value in adapter.tensors.items():
        noise = torch.randn(value.shape, generator=gen)
        tensors[key] = noise * (value.norm() / noise.norm())
    return Adapter(adapter.config, tensors, {"random_seed": str(seed)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, required=True, help="an adapter file of a cx loop registry")
    parser.add_argument("--scales", default="1,2,4", help="comma-separated scales of the trained update")
    parser.add_argument("--random", type=int, default=3, help="random directions of the same norms")
    parser.add_argument("--json", type=Path, default=RESULTS / "gate_noise.json")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    try:
        base, data = fib25_data()
        trained = load_adapter(args.adapter)
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except Exception as error:  # one line, not a traceback
        console.print(f"error: {error}")
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    precision = resolve_precision("auto")
    segmenter = RegionSegmenter(
        data, InferenceOptions(precision=precision), LoopSettings().context_zyx(base.config.fov_zyx)
    )

    def score(name: str, adapter: Adapter | None, merge: bool = True) -> dict:
        model = copy.deepcopy(base)
        if adapter is not None:
            apply_adapter(model, adapter)
            if merge:  # as the registry serves it
                merge_and_remove_lora(model)
        model.eval()
        row: dict = {"model": name}
        for region, box in (("B", FIB25_REGIONS.b), ("C", FIB25_REGIONS.c)):
            row[region] = segmenter.score(model, box)
        console.print(f"  {name}: VI on B {row['B']['vi']:.3f}, on C {row['C']['vi']:.3f}")
        return row

    rows = [score("base", None)]
    rows += [score(f"trained × {s:g}", scaled(trained, s)) for s in scales]
    # the same function with the update computed beside the base weights instead of folded into them: only
    # the rounding differs
    rows.append(score("trained × 1, not merged", trained, merge=False))
    rows += [score(f"random direction {i}", random_direction(trained, i)) for i in range(args.random)]
    base_row = rows[0]
    table = Table(title=f"bench/gate_noise.py — {precision}, {machine()['cpu']}")
    for column in ("model", "VI on B", "Δ B", "VI on C", "Δ C"):
        table.add_column(column, justify="right")
    for row in rows:
        db = row["B"]["vi"] / base_row["B"]["vi"] - 1
        dc = row["C"]["vi"] / base_row["C"]["vi"] - 1
        row["relative_change"] = {"B": db, "C": dc}
        table.add_row(
            row["model"], f"{row['B']['vi']:.3f}", f"{db:+.1%}", f"{row['C']['vi']:.3f}", f"{dc:+.1%}"
        )
    console.print(table)
    out = {
        "benchmark": "gate_noise",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "precision": precision,
        "adapter": args.adapter.name,
        "regions": FIB25_REGIONS.to_dict(),
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
