"""Benchmark: connectomix's triad census against ``networkx.triadic_census``, and null-model randomisations.

Cases: C. elegans (Varshney 2011, chemical synapses: 279 nodes, 2,194 edges) and random directed graphs
G(n, m) with n = 1k, 10k, 100k nodes and m = 10 n edges (mean out-degree 10), seeded. For each case and
implementation a fresh subprocess builds the input (networkx: a ``DiGraph``; connectomix: the sorted edge
arrays), resets the kernel's peak-RSS mark, runs the census ``--repeats`` times and reports the best wall
time, the peak RSS growth of the first call (``VmHWM - VmRSS``, Linux) and the counts; the parent checks
that the 16 counts are equal. networkx runs under a per-case time cap (``--cap`` seconds) and is reported
as ``timed out`` when it exceeds it. Then: the time of 1,000 degree-preserving randomisations of C. elegans
(10 swaps per edge), alone and with a triad census of each (``motif_significance``), in this process.

Run from the repository root: ``python bench/motifs.py`` (full; writes bench/results/motifs.json) or
``python bench/motifs.py --quick`` (C. elegans and 1k nodes, 20 randomisations; writes nothing unless
``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "motifs.json"
MEMORY_METHOD = "VmHWM - VmRSS around the first call in a fresh subprocess (peak mark reset after building)"
RANDOM_SIZES = {"random-1k": 1_000, "random-10k": 10_000, "random-100k": 100_000}


# -- inputs -----------------------------------------------------------------------------------------------
def case_edges(case: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, src, dst) of a case: C. elegans or a seeded directed G(n, 10 n)."""
    if case == "celegans":
        from connectomix.analyze.datasets import load_dataset
        from connectomix.analyze.motifs import as_digraph

        g = as_digraph(load_dataset("celegans-varshney"))
        return g.n, g.src, g.dst
    n = RANDOM_SIZES[case]
    rng = np.random.default_rng(n)
    keys = rng.choice(n * (n - 1), size=10 * n, replace=False)
    src = keys // (n - 1)
    offset = keys % (n - 1)
    return n, src, offset + (offset >= src)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(implementation: str, case: str, repeats: int) -> None:
    """Build the input, then time the census; prints one JSON line."""
    import networkx as nx

    from connectomix.analyze.motifs import BinaryDigraph, triad_census

    n, src, dst = case_edges(case)
    if implementation == "networkx":
        graph: Any = nx.DiGraph()
        graph.add_nodes_from(range(n))
        graph.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
        run = nx.triadic_census
    else:
        graph = BinaryDigraph.from_arrays(n, src, dst)
        run = triad_census
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _rss_kib("VmRSS")
    start = time.perf_counter()
    census = run(graph)
    times = [time.perf_counter() - start]
    peak = max(0, _rss_kib("VmHWM") - baseline) * 1024
    for _ in range(repeats - 1):
        start = time.perf_counter()
        run(graph)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {"seconds": min(times), "peak_bytes": peak, "census": dict(census), "edges": int(src.size)}
        )
    )


def measure(implementation: str, case: str, repeats: int, cap: float) -> dict[str, Any]:
    """Run :func:`child` in a subprocess; ``{"status": "timed out"}`` past ``cap`` seconds."""
    command = [sys.executable, __file__, "--child", implementation, case, "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=cap, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out (> {cap:.0f} s)"}
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        return {"status": f"failed: {last}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result


# -- randomisations ---------------------------------------------------------------------------------------
def randomisations(count: int) -> dict[str, Any]:
    """Seconds for ``count`` degree-preserving randomisations of C. elegans, alone and with a census each."""
    from connectomix.analyze.motifs import BinaryDigraph
    from connectomix.analyze.nulls import degree_preserving
    from connectomix.analyze.significance import motif_significance

    n, src, dst = case_edges("celegans")
    graph = BinaryDigraph(n, src, dst)
    seeds = np.random.SeedSequence(0).spawn(count)
    start = time.perf_counter()
    accepted = 0
    for seed in seeds:
        accepted += degree_preserving(graph, np.random.default_rng(seed), swaps_per_edge=10)[1].accepted
    swaps_only = time.perf_counter() - start
    start = time.perf_counter()
    result = motif_significance(graph, null="degree", randomizations=count, seed=0, swaps_per_edge=10)
    with_census = time.perf_counter() - start
    return {
        "randomizations": count,
        "swaps_per_edge": 10,
        "edges": graph.n_edges,
        "accepted_swap_fraction": accepted / (10 * graph.n_edges * count),
        "seconds_randomise": swaps_only,
        "seconds_randomise_and_census": with_census,
        "zscores": {k: (None if v is None else round(v, 2)) for k, v in result.zscores.items()},
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in ("numpy", "scipy", "networkx"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="C. elegans and 1k nodes, 20 randomisations")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (best is reported)")
    parser.add_argument("--cap", type=float, default=900.0, help="seconds networkx may take per case")
    parser.add_argument("--randomizations", type=int, default=None, help="default 1000 (20 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON to write (full run default: {RESULTS})")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.repeats)
        return
    sys.path.insert(0, str(REPO / "bench"))
    from connectomix.analyze.datasets import graphs_dir
    from machine import machine  # imports torch: kept out of the timed child processes

    if graphs_dir() is None:
        print("skipped: real data not found (set CX_DATA_DIR or place shared/testdata beside the repository)")
        return
    cases = ["celegans", "random-1k"] if args.quick else ["celegans", *RANDOM_SIZES]
    rows = []
    print(f"{'case':<12} {'nodes':>8} {'edges':>9} {'ours s':>9} {'networkx s':>11} {'speed-up':>9} "
          f"{'ours MiB':>9} {'nx MiB':>8} equal")  # fmt: skip
    for case in cases:
        ours = measure("connectomix", case, args.repeats, cap=args.cap)
        theirs = measure("networkx", case, 1 if case == "random-100k" else args.repeats, cap=args.cap)
        n = case_edges(case)[0] if case == "celegans" else RANDOM_SIZES[case]
        row: dict[str, Any] = {
            "case": case,
            "nodes": n,
            "edges": ours.get("edges"),
            "connectomix": ours,
            "networkx": theirs,
        }
        if ours["status"] == "ok" and theirs["status"] == "ok":
            row["equal_counts"] = ours["census"] == theirs["census"]
            row["speedup"] = theirs["seconds"] / ours["seconds"]
        rows.append(row)
        nx_time = f"{theirs['seconds']:.3f}" if theirs["status"] == "ok" else theirs["status"]
        print(
            f"{case:<12} {n:>8,} {ours.get('edges', 0):>9,} {ours.get('seconds', float('nan')):>9.4f} "
            f"{nx_time:>11} {row.get('speedup', float('nan')):>8.1f}x "
            f"{ours.get('peak_bytes', 0) / 2**20:>9.1f} {theirs.get('peak_bytes', 0) / 2**20:>8.1f} "
            f"{row.get('equal_counts', '-')}"
        )
        if row.get("equal_counts") is False:
            raise SystemExit(f"census mismatch on {case}")
    count = args.randomizations or (20 if args.quick else 1000)
    null = randomisations(count)
    print(
        f"{count} degree-preserving randomisations of C. elegans (10 swaps/edge): "
        f"{null['seconds_randomise']:.2f} s; "
        f"with a triad census each: {null['seconds_randomise_and_census']:.2f} s"
    )
    for row in rows:
        for side in ("connectomix", "networkx"):
            row[side].pop("census", None)
    payload = {
        "benchmark": "motifs",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(),
        "memory_method": MEMORY_METHOD,
        "networkx_cap_s": args.cap,
        "cases": rows,
        "randomisations": null,
    }
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
