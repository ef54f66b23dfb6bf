"""Benchmark: SegCLR encoder throughput (lite/full, fp32/bf16, memory layouts, peak memory) and the real-data
evaluation (retrieval and merge detection, trained vs random-init encoder).

Throughput, each configuration in its own child process (so its peak RSS is its own):

* ``network``: embeddings per second of the network alone on random cutouts, eval mode, for the ``lite``
  (33³ input, 16…128 channels) and ``full`` (129³, 64…512) encoders, fp32 and bf16 autocast (bf16 only where
  native), channels-last and, for fp32, the contiguous layout as the peer of the layout choice;
* ``end-to-end``: the lite encoder on FIB-25 skeleton nodes, cutouts read through the volumes and the chunk
  cache, as ``cx embed run`` does (``Embedder.embed_nodes``).

Evaluation (:func:`connectomix.embed.realdata.run_real_evaluation`): the lite encoder is trained on the gala
crops and FIB-25 ``z < 125`` and evaluated on FIB-25 ``z ≥ 125``: same-body retrieval (nearest neighbour in
embedding space, same-body nodes within 1 µm Euclidean excluded) and ROC AUC of merge detection (ground-truth
bodies vs touching pairs merged), against the same network at its random initialisation; also the AUC of
node count alone and a size-matched AUC. Two merge scorers: the unsupervised 2-means R² of a segment's node
embeddings (the baseline) and, for the trained encoder, the supervised merge head
(:mod:`connectomix.embed.merges`, trained on synthetic merges of FIB-25 ``z < 125`` only). Two diagnostics
of whether the embeddings hold a trace of the merge at all (:mod:`connectomix.embed.merge_signal`): the AUC
of a merge's two bodies' separation against two spatial halves of one true body ("parts vs halves"), and
the merge head's node AUC near contacts and, as the control, far from them ("head nodes near / far").

Run: ``.venv/bin/python bench/embed.py`` (about 17 minutes on 2 cores with AVX-512; the merge head adds ~2,
the fine-tuned merge detector ~12; the evaluation alone took 40 minutes on a 2-core AVX2 EPYC) or
``--quick`` (under 2 minutes: fewer cutouts, 40 training steps on small boxes). Writes
``bench/results/embed.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from machine import machine

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _network(preset_name: str, precision: str, layout: str, batch: int, n: int, queue) -> None:
    from connectomix.embed.model import preset
    from connectomix.embed.train import build_encoder

    config = preset(preset_name)
    fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
    model = build_encoder(config, 0).eval().to(memory_format=fmt)
    x = torch.rand(batch, 1, *config.input_size_zyx).contiguous(memory_format=fmt)
    before = _peak_rss_mib()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        model(x)  # warm-up (oneDNN primitive creation)
        start = time.perf_counter()
        done = 0
        while done < n:
            model(x)
            done += batch
        seconds = time.perf_counter() - start
    queue.put(
        {
            "mode": "network",
            "preset": preset_name,
            "precision": precision,
            "layout": layout,
            "batch": batch,
            "embeddings": done,
            "seconds": seconds,
            "embeddings_per_s": done / seconds,
            "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": before,
        }
    )


def _end_to_end(precision: str, n: int, queue) -> None:
    from connectomix.embed.infer import Embedder, sample_nodes
    from connectomix.embed.model import preset
    from connectomix.embed.pairs import skeletonize_segments
    from connectomix.embed.train import build_encoder
    from connectomix.volume import Box, open_volume

    raw, gt = open_volume("fib25-ts2/raw"), open_volume("fib25-ts2/gt")
    graph = skeletonize_segments(gt, box=Box((125, 0, 0), (250, 250, 250)))
    nodes = sample_nodes(graph, 100.0)[:n]
    embedder = Embedder(build_encoder(preset("lite"), 0), raw, gt, batch_size=32, precision=precision)  # type: ignore[arg-type]
    embedder.embed_nodes(graph.nodes_zyx[nodes[:32]], graph.node_segment_ids[nodes[:32]])  # warm-up
    for key in embedder.stats:
        embedder.stats[key] = 0
    start = time.perf_counter()
    embedder.embed_nodes(graph.nodes_zyx[nodes], graph.node_segment_ids[nodes])
    seconds = time.perf_counter() - start
    queue.put(
        {
            "mode": "end-to-end",
            "preset": "lite",
            "precision": embedder.resolved,
            "layout": "channels_last_3d",
            "batch": 32,
            "embeddings": len(nodes),
            "seconds": seconds,
            "embeddings_per_s": len(nodes) / seconds,
            "cutting_s": embedder.stats["read_s"],
            "network_s": embedder.stats["embed_s"],
            "peak_rss_mib": _peak_rss_mib(),
        }
    )


def _in_child(target, *args) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def throughput(quick: bool, native: bool) -> list[dict[str, Any]]:
    precisions = ["fp32", "bf16"] if native else ["fp32"]
    rows = []
    lite_n, full_n = (128, 4) if quick else (2048, 32)
    for precision in precisions:
        rows.append(_in_child(_network, "lite", precision, "channels_last_3d", 32, lite_n))
    rows.append(_in_child(_network, "lite", "fp32", "contiguous", 32, lite_n))
    for precision in precisions:
        rows.append(_in_child(_network, "full", precision, "channels_last_3d", 4 if not quick else 2, full_n))
    if not quick:
        rows.append(_in_child(_network, "full", "fp32", "contiguous", 4, full_n))
    rows.append(_in_child(_end_to_end, "auto" if native else "fp32", 256 if quick else 1024))
    return rows


def evaluation(quick: bool) -> dict[str, Any]:
    from connectomix.embed.realdata import RealEvaluation, run_real_evaluation

    if quick:
        settings = RealEvaluation(
            steps=40,
            batch_pairs=8,
            gala=("gala-train",),
            train_box=((60, 0, 0), (125, 160, 160)),
            eval_box=((125, 40, 40), (185, 200, 200)),
            spacing_nm=120.0,
            n_merges=15,
        )
    else:
        settings = RealEvaluation()
    report, tasks = run_real_evaluation(settings, progress=sys.stderr.isatty())
    report["example_tasks"] = [t.to_dict() for t in tasks[:3]]
    report["n_tasks"] = len(tasks)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "embed.json")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the bench runs (< 2 min)")
    parser.add_argument("--skip-eval", action="store_true", help="throughput only")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="evaluation only (write it to its own --json)"
    )
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from connectomix.segment.precision import native_bf16

    console = Console(width=130)
    started = time.perf_counter()
    native = native_bf16("cpu")
    rows = [] if args.skip_throughput else throughput(args.quick, native)
    table = Table(title="SegCLR encoder throughput (embeddings/s; peak RSS of the child process)")
    for col in ("mode", "preset", "precision", "layout", "batch", "emb/s", "peak MiB"):
        table.add_column(col, justify="right" if col in ("batch", "emb/s", "peak MiB") else "left")
    for row in rows:
        table.add_row(
            row["mode"],
            row["preset"],
            row["precision"],
            row["layout"],
            str(row["batch"]),
            f"{row['embeddings_per_s']:.1f}",
            f"{row['peak_rss_mib']:.0f}",
        )
    if rows:
        console.print(table)
    if rows and not native:
        console.print("  bf16 skipped: this CPU has no native bf16 (it would be emulated, far slower)")

    payload: dict[str, Any] = {
        "benchmark": "embed",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "throughput": rows,
    }
    if not args.skip_eval:
        report = evaluation(args.quick)
        payload["evaluation"] = report
        results = report["results"]
        table = Table(title="real data: FIB-25 z ≥ 125 (trained on gala + FIB-25 z < 125)")
        for col in (
            "encoder",
            "retrieval acc",
            "chance",
            "queries",
            "merge AUC",
            "size-matched AUC",
            "node-count AUC",
            "head AUC",
            "head size-matched",
            "parts vs halves",
            "head nodes near / far",
        ):
            table.add_column(col, justify="left" if col == "encoder" else "right")
        for name, item in results.items():
            r, m = item["retrieval"], item["merge"]
            table.add_row(
                name,
                f"{r['accuracy']:.3f}",
                f"{r['chance']:.3f}",
                str(r["n_queries"]),
                f"{m['auc']:.3f}",
                f"{m['auc_size_matched']:.3f}",
                f"{m['auc_node_count_only']:.3f}",
                *(f"{h['auc']:.3f}", f"{h['auc_size_matched']:.3f}")
                if (h := item.get("merge_head"))
                else ("-", "-"),
                f"{item['merge_signal']['parts']['auc_parts_vs_halves']:.3f}",
                f"{n['auc_near_vs_true']:.3f} / {n['auc_far_vs_true']:.3f}"
                if (n := (item.get("merge_head") or {}).get("contact_nodes"))
                else "-",
            )
        console.print(table)
        console.print(
            f"  trained {report['training']['steps']} steps in {report['seconds']['train']:.0f} s "
            f"(NT-Xent {report['training']['loss_first_50']:.2f} → "
            f"{report['training']['loss_last_50']:.2f}); "
            f"{report['n_tasks']} split tasks flagged at R² ≥ {report['flags']['threshold_r2']:.3f}"
        )
        if fitted := report.get("merge_detector"):
            console.print(
                f"  merge detector fine-tuned on {fitted['n_positive']} contact and {fitted['n_negative']} "
                f"other nodes of the training half in {fitted['fit_seconds']:.0f} s "
                f"(loss {fitted['losses'][0]:.3f} → {fitted['losses'][-1]:.3f})"
            )
    payload["seconds"] = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    tmp.replace(args.json)
    console.print(f"wrote {args.json} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
