"""Loaders for the bundled real connectomes (``<data dir>/graphs``), as :class:`ConnectivityGraph`.

Every loader takes the synapse type (``chemical``, ``electrical`` or ``all``) and a synapse-count threshold,
and follows the same rules, so the graphs are comparable:

- **chemical** edges are directed ``pre → post`` with the source's synapse count as weight (Cook 2019: the
  number of EM serial sections, which combines synapse count and size; larva mushroom body: synapses).
- **electrical** (gap junction) edges are undirected in the sources; each connected pair becomes two
  directed edges with the same weight. Where a source lists a pair in both directions (Varshney) the weight
  is the larger listing (they are equal there), else the one listing.
- **all**: chemical plus electrical weight per ordered pair.
- Rows for the same pair are summed; self-loops are dropped; then edges below ``min_synapses`` are
  dropped, and nodes left without edges are dropped too.

Varshney 2011 rows: ``S``/``Sp`` are chemical sends ``Neuron 1 → Neuron 2`` (``R``/``Rp`` are the same
synapses seen from the receiver, not counted again), ``EJ`` electrical, ``NMJ`` neuromuscular (left out).
Cook 2019: the neuron → neuron part (cells that are both a row and a column of the chemical sheet), with
``cell_type`` from the sheet's row groups (pharyngeal, sensory, interneuron, motor, sex-specific).
Larva mushroom body (Eichler et al. 2017): ``cell_type`` K (Kenyon cells), P (projection neurons),
O (output neurons), I (input neurons); node ids are the class letter and a running number (``K1`` …).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from connectomix.analyze.graph import ConnectivityGraph
from connectomix.errors import CorruptDataError, InputError, NotFoundError

SynapseType = Literal["chemical", "electrical", "all"]
SYNAPSE_TYPES: tuple[str, ...] = ("chemical", "electrical", "all")


@dataclass(frozen=True)
class DatasetInfo:
    """One bundled connectome: its name, what it is, its file (relative to ``graphs/``) and loader."""

    name: str
    description: str
    path: str
    synapse_types: tuple[str, ...]
    reader: Callable[[Path], pd.DataFrame]
    node_table: Callable[[Path], pd.DataFrame] | None = None


def graphs_dir() -> Path | None:
    """``<data dir>/graphs`` (see :func:`connectomix.volume.datasets.data_dir`), or None if absent."""
    from connectomix.volume.datasets import data_dir

    folder = data_dir()
    return None if folder is None or not (folder / "graphs").is_dir() else folder / "graphs"


# -- readers: each returns a long table pre, post, type ("chemical"/"electrical"), synapses ---------------
def _require(path: Path) -> Path:
    if not path.is_file():
        raise NotFoundError(f"connectome file not found: {path}")
    return path


@functools.lru_cache(maxsize=16)
def _read_varshney(path: Path) -> pd.DataFrame:
    import xlrd

    try:
        sheet = xlrd.open_workbook(str(_require(path))).sheet_by_index(0)
    except xlrd.XLRDError as exc:
        raise CorruptDataError(f"{path}: not a readable .xls workbook ({exc})") from None
    header = [str(v).strip() for v in sheet.row_values(0)]
    if header[:4] != ["Neuron 1", "Neuron 2", "Type", "Nbr"]:
        raise CorruptDataError(f"{path}: expected columns Neuron 1, Neuron 2, Type, Nbr; found {header}")
    rows = pd.DataFrame([sheet.row_values(i)[:4] for i in range(1, sheet.nrows)], columns=header[:4])
    kinds = {"S": "chemical", "Sp": "chemical", "EJ": "electrical"}
    rows = rows[rows["Type"].isin(list(kinds))]
    return pd.DataFrame(
        {
            "pre": rows["Neuron 1"].astype(str).str.strip().to_numpy(),
            "post": rows["Neuron 2"].astype(str).str.strip().to_numpy(),
            "type": rows["Type"].map(kinds).to_numpy(),
            "synapses": rows["Nbr"].astype(np.int64).to_numpy(),
        }
    )


def _check_long(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    expected = ["pre", "post", "type", "synapses"]
    if list(table.columns[:4]) != expected:
        raise CorruptDataError(f"{path}: expected columns {expected}, found {list(table.columns)}")
    table = table[expected].copy()
    table["synapses"] = pd.to_numeric(table["synapses"], errors="raise").astype(np.int64)
    return table[table["type"].isin(["chemical", "electrical"])].reset_index(drop=True)


@functools.lru_cache(maxsize=16)
def _read_tsv(path: Path) -> pd.DataFrame:
    return _check_long(pd.read_csv(_require(path), sep="\t"), path)


@functools.lru_cache(maxsize=16)
def _read_xlsx_long(path: Path) -> pd.DataFrame:
    return _check_long(pd.read_excel(_require(path), engine="openpyxl"), path)


#: Cook 2019 row groups → cell_type.
_COOK_GROUPS = {
    "PHARYNX": "pharyngeal",
    "SENSORY NEURONS": "sensory",
    "INTERNEURONS": "interneuron",
    "MOTOR NEURONS": "motor",
    "SEX SPECIFIC": "sex-specific",
}


@functools.lru_cache(maxsize=8)
def _cook_sheet(path: Path, title: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One matrix sheet as (values rows × columns, row names, row groups)."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(str(_require(path)), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises several types for a broken file
        raise CorruptDataError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__})") from None
    try:
        titles = {sheet.title.strip(): sheet for sheet in book.worksheets}
        if title not in titles:
            raise CorruptDataError(f"{path}: sheet {title!r} missing")
        rows = [list(r) for r in titles[title].iter_rows(values_only=True)]
    finally:
        book.close()
    if len(rows) < 4 or not any(isinstance(v, str) for v in rows[2][3:]):
        raise CorruptDataError(f"{path}: sheet {title!r} is not an adjacency matrix with names in row 3")
    columns = [(j, str(v).strip()) for j, v in enumerate(rows[2]) if j >= 3 and isinstance(v, str)]
    names, groups, values, group = [], [], [], None
    for row in rows[3:]:
        if row[0] is not None:
            group = str(row[0]).strip()
        if len(row) < 3 or not isinstance(row[2], str):
            continue
        names.append(row[2].strip())
        groups.append(group or "")
        values.append([row[j] if j < len(row) else None for j, _ in columns])
    frame = pd.DataFrame(values, index=names, columns=[c for _, c in columns])
    frame = frame.apply(pd.to_numeric, errors="coerce").fillna(0)
    return frame, names, groups


def _cook_reader(sex: str) -> Callable[[Path], pd.DataFrame]:
    def read(path: Path) -> pd.DataFrame:
        chemical, names, _ = _cook_sheet(path, f"{sex} chemical")
        gap = _cook_sheet(path, f"{sex} gap jn symmetric")[0]
        neurons = [n for n in names if n in chemical.columns]
        parts = []
        for kind, matrix in (("chemical", chemical), ("electrical", gap)):
            present = [n for n in neurons if n in matrix.index and n in matrix.columns]
            block = matrix.loc[present, present].to_numpy()
            i, j = np.nonzero(block)
            parts.append(
                pd.DataFrame(
                    {
                        "pre": np.array(present, dtype=object)[i],
                        "post": np.array(present, dtype=object)[j],
                        "type": kind,
                        "synapses": block[i, j].astype(np.int64),
                    }
                )
            )
        return pd.concat(parts, ignore_index=True)

    return read


def _cook_nodes(sex: str) -> Callable[[Path], pd.DataFrame]:
    def nodes(path: Path) -> pd.DataFrame:
        chemical, names, groups = _cook_sheet(path, f"{sex} chemical")
        keep = [(n, _COOK_GROUPS.get(g, g.lower())) for n, g in zip(names, groups, strict=True)]
        keep = [(n, g) for n, g in keep if n in chemical.columns]
        return pd.DataFrame({"node_id": [n for n, _ in keep], "cell_type": [g for _, g in keep]})

    return nodes


def _larva_paths(path: Path) -> tuple[Path, Path]:
    return path, path.with_name(path.name.replace("_adjacency.csv", "_cell_labels.csv"))


@functools.lru_cache(maxsize=4)
def _larva(path: Path) -> tuple[np.ndarray, list[str]]:
    matrix_path, labels_path = _larva_paths(_require(path))
    try:
        matrix = np.loadtxt(matrix_path)
    except ValueError as exc:
        raise CorruptDataError(f"{matrix_path}: not a space-separated number matrix ({exc})") from None
    labels = [line.strip() for line in _require(labels_path).read_text().splitlines() if line.strip()]
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(labels):
        raise CorruptDataError(
            f"{matrix_path}: expected a square matrix with one row per label in {labels_path.name}, "
            f"got shape {matrix.shape} and {len(labels)} labels"
        )
    if (matrix < 0).any() or (matrix != np.round(matrix)).any():
        raise CorruptDataError(f"{matrix_path}: synapse counts must be non-negative integers")
    return matrix.astype(np.int64), labels


def _larva_ids(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        ids.append(f"{label}{seen[label]}")
    return ids


def _read_larva(path: Path) -> pd.DataFrame:
    matrix, labels = _larva(path)
    ids = np.array(_larva_ids(labels), dtype=object)
    i, j = np.nonzero(matrix)
    return pd.DataFrame({"pre": ids[i], "post": ids[j], "type": "chemical", "synapses": matrix[i, j]})


def _larva_nodes(path: Path) -> pd.DataFrame:
    _, labels = _larva(path)
    return pd.DataFrame({"node_id": _larva_ids(labels), "cell_type": labels})


# -- the registry -----------------------------------------------------------------------------------------
_WITVLIET_STAGES = ("L1", "L1", "L1", "L1", "L2", "L3", "adult", "adult")
_BOTH = ("chemical", "electrical", "all")
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "celegans-varshney",
            "C. elegans hermaphrodite somatic nervous system (Varshney et al. 2011)",
            "celegans/varshney2011_NeuronConnect.xls",
            _BOTH,
            _read_varshney,
        ),
        DatasetInfo(
            "celegans-white1986",
            "C. elegans hermaphrodite incl. pharynx (White et al. 1986, as re-analysed by Varshney et al.)",
            "celegans/white1986_whole.csv",
            _BOTH,
            _read_tsv,
        ),
        DatasetInfo(
            "celegans-cook2019-herm",
            "C. elegans adult hermaphrodite, neuron→neuron (Cook et al. 2019, July 2020 corrections)",
            "celegans/cook2019_SI5_adjacency_matrices_corrected_July2020.xlsx",
            _BOTH,
            _cook_reader("hermaphrodite"),
            _cook_nodes("hermaphrodite"),
        ),
        DatasetInfo(
            "celegans-cook2019-male",
            "C. elegans adult male, neuron→neuron (Cook et al. 2019, July 2020 corrections)",
            "celegans/cook2019_SI5_adjacency_matrices_corrected_July2020.xlsx",
            _BOTH,
            _cook_reader("male"),
            _cook_nodes("male"),
        ),
        *[
            DatasetInfo(
                f"celegans-witvliet-{i}",
                f"C. elegans brain, dataset {i} ({stage}) of Witvliet et al. 2021",
                f"celegans/witvliet2021_dataset{i}_{stage}.xlsx",
                _BOTH,
                _read_xlsx_long,
            )
            for i, stage in enumerate(_WITVLIET_STAGES, start=1)
        ],
        *[
            DatasetInfo(
                f"larva-mb-{side}",
                f"Drosophila larva mushroom body, {side} hemisphere, classes K/P/O/I (Eichler et al. 2017)",
                f"drosophila_larva_mb/{side}_adjacency.csv",
                ("chemical", "all"),
                _read_larva,
                _larva_nodes,
            )
            for side in ("left", "right")
        ],
    ]
}


def list_datasets() -> list[dict[str, object]]:
    """Name, description, synapse types and whether its file is present, for each bundled connectome."""
    folder = graphs_dir()
    return [
        {
            "name": info.name,
            "description": info.description,
            "synapse_types": list(info.synapse_types),
            "available": folder is not None and (folder / info.path).is_file(),
            "path": info.path,
        }
        for info in DATASETS.values()
    ]


def _symmetrise(electrical: pd.DataFrame) -> pd.DataFrame:
    """Undirected weight per pair (the larger of its listed directions), as two directed rows."""
    if electrical.empty:
        return electrical
    pre, post = electrical["pre"].to_numpy(dtype=object), electrical["post"].to_numpy(dtype=object)
    lo = np.where(pre <= post, pre, post)
    hi = np.where(pre <= post, post, pre)
    directed = pd.DataFrame({"lo": lo, "hi": hi, "forward": pre <= post, "w": electrical["synapses"]})
    per_direction = directed.groupby(["lo", "hi", "forward"], sort=True)["w"].sum().reset_index()
    pairs = per_direction.groupby(["lo", "hi"], sort=True)["w"].max().reset_index()
    both = pd.DataFrame(
        {
            "pre": np.concatenate([pairs["lo"].to_numpy(), pairs["hi"].to_numpy()]),
            "post": np.concatenate([pairs["hi"].to_numpy(), pairs["lo"].to_numpy()]),
            "synapses": np.concatenate([pairs["w"].to_numpy(), pairs["w"].to_numpy()]),
        }
    )
    both["type"] = "electrical"
    return both


def load_dataset(
    name: str,
    *,
    synapse_type: str = "chemical",
    min_synapses: int = 1,
    folder: Path | None = None,
) -> ConnectivityGraph:
    """A bundled connectome as a :class:`ConnectivityGraph` (rules in the module docstring).

    Parameters
    ----------
    name
        One of :data:`DATASETS` (``cx analyze datasets`` lists them).
    synapse_type
        ``chemical``, ``electrical`` or ``all``.
    min_synapses
        Keep edges with at least this weight (synapses; EM sections for Cook 2019).
    folder
        The ``graphs`` folder (default: :func:`graphs_dir`).
    """
    info = DATASETS.get(name)
    if info is None:
        raise NotFoundError(f"unknown connectome {name!r}; known: {', '.join(DATASETS)}")
    if synapse_type not in SYNAPSE_TYPES:
        raise InputError(f"synapse type must be one of {', '.join(SYNAPSE_TYPES)}, got {synapse_type!r}")
    if synapse_type not in info.synapse_types:
        raise InputError(f"{name} has no {synapse_type} synapses; it has {', '.join(info.synapse_types)}")
    if not isinstance(min_synapses, int | np.integer) or min_synapses < 1:
        raise InputError(f"minimum synapse count must be a positive integer, got {min_synapses!r}")
    root = folder if folder is not None else graphs_dir()
    if root is None:
        raise NotFoundError(
            "connectome data not found: set CX_DATA_DIR to a folder with graphs/ (see shared/testdata)"
        )
    path = Path(root) / info.path
    rows = info.reader(path)
    rows = rows[rows["pre"].to_numpy() != rows["post"].to_numpy()]
    chemical = rows[rows["type"] == "chemical"]
    electrical = _symmetrise(rows[rows["type"] == "electrical"])
    chosen = {"chemical": [chemical], "electrical": [electrical], "all": [chemical, electrical]}
    table = pd.concat(chosen[synapse_type], ignore_index=True)
    nodes = None
    if info.node_table is not None:
        nodes = info.node_table(path)
        known = set(nodes["node_id"])
        table = table[table["pre"].isin(known) & table["post"].isin(known)]
    graph = ConnectivityGraph.from_edges(
        table["pre"].to_numpy(dtype=object),
        table["post"].to_numpy(dtype=object),
        table["synapses"].to_numpy(),
        nodes=nodes,
        name=f"{name} ({synapse_type})",
    )
    return graph.threshold(int(min_synapses), drop_isolated=True)


__all__ = ["DATASETS", "SYNAPSE_TYPES", "DatasetInfo", "graphs_dir", "list_datasets", "load_dataset"]
