"""``cx analyze``: datasets, motifs --json, report, communities, export, synapses, and one-line errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from connectomix.analyze.export import read_graphml
from connectomix.analyze.motifs import TRIAD_NAMES
from connectomix.cli import main
from connectomix.volume import open_volume


@pytest.fixture
def cx(capsys):
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["analyze", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_datasets(cx, testdata) -> None:
    code, out, _ = cx("datasets", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["name"] for r in rows} >= {
        "celegans-varshney",
        "larva-mb-left",
        "celegans-witvliet-8",
    }
    assert all(r["available"] for r in rows)
    code, out, _ = cx("datasets")
    assert code == 0 and "celegans-cook2019-herm" in out


def test_motifs_json(cx, testdata, tmp_path) -> None:
    out_path = tmp_path / "motifs.json"
    code, out, err = cx(
        "motifs", "--dataset", "celegans-varshney", "--min-synapses", "1", "--null", "degree",
        "--randomizations", "20", "--seed", "0", "--json", str(out_path),
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out_path.read_text())
    assert (payload["nodes"], payload["edges"]) == (279, 2194)
    assert list(payload["census"]) == list(TRIAD_NAMES) == list(payload["zscores"])
    assert (payload["null_model"], payload["randomizations"]) == ("degree", 20)
    assert payload["census"]["300"] == 48 and payload["zscores"]["300"] > 5
    assert "120U" in out and "reciprocal pairs: 233" in out


def test_report_html_is_self_contained(cx, testdata, tmp_path) -> None:
    path = tmp_path / "larva.html"
    code, _, err = cx("report", "--dataset", "larva-mb-left", "--randomizations", "5", "--out", str(path))
    assert code == 0, err
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 3  # heat maps, degree distributions, z-score bars
    assert not re.search(r"(src|href)=['\"]?https?:", page)
    assert "adjusted Rand index" in page and "120U" in page and "cell_type × cell_type" in page


def test_communities_and_export(cx, testdata, tmp_path) -> None:
    code, out, err = cx(
        "communities", "--dataset", "larva-mb-right", "--method", "sbm", "--json", str(tmp_path / "c.json")
    )
    assert code == 0, err
    result = json.loads((tmp_path / "c.json").read_text())
    assert f"adjusted Rand index vs cell_type: {result['adjusted_rand_index']:.3f}" in out
    assert result["communities"] == 4 and result["adjusted_rand_index"] > 0.3
    code, _, err = cx(
        "export", str(tmp_path / "worm.graphml"), "--dataset", "celegans-white1986", "--min-synapses", "2"
    )
    assert code == 0, err
    graph = read_graphml(tmp_path / "worm.graphml")
    assert graph.edges["synapses"].min() >= 2
    code, _, err = cx("motifs", "--graph", str(tmp_path / "worm.graphml"), "--randomizations", "3")
    assert code == 0, err


def test_synapses_import_attaches_positions(cx, tmp_path) -> None:
    labels = np.zeros((8, 16, 16), np.uint64)
    labels[:, :, :8], labels[:, :, 8:] = 7, 9
    url = f"zarr://{tmp_path / 'seg.zarr'}"
    volume = open_volume(url, "w", shape=labels.shape, dtype=np.uint64, chunks=(8, 8, 8))
    volume.write(volume.bounds, labels)
    pd.DataFrame(
        {
            "pre_pt_root_id": [0, 0],
            "post_pt_root_id": [0, 0],
            "pre_pt_position": ["[1 2 3]", "[12 2 3]"],
            "post_pt_position": ["[12 5 3]", "[3 5 3]"],
            "size": [1.0, 2.0],
        }
    ).to_csv(tmp_path / "syn.csv", index=False)
    code, _, err = cx(
        "synapses",
        "import",
        str(tmp_path / "syn.csv"),
        "--segmentation",
        url,
        "--out",
        str(tmp_path / "s.parquet"),
    )
    assert code == 0, err
    table = pd.read_parquet(tmp_path / "s.parquet")
    assert table["pre_id"].tolist() == [7, 9] and table["post_id"].tolist() == [9, 7]
    # a position outside the volume: one line, no traceback
    pd.DataFrame(
        {
            "pre_pt_root_id": [0],
            "post_pt_root_id": [0],
            "pre_pt_position": ["[99 2 3]"],
            "post_pt_position": ["[1 1 1]"],
        }
    ).to_csv(tmp_path / "far.csv", index=False)
    code, _, err = cx(
        "synapses",
        "import",
        str(tmp_path / "far.csv"),
        "--segmentation",
        url,
        "--out",
        str(tmp_path / "f.parquet"),
    )
    assert_one_line_error(code, err, "outside")
    assert not (tmp_path / "f.parquet").exists()


def test_bad_input_is_one_line(cx, tmp_path) -> None:
    code, _, err = cx("motifs", "--dataset", "celegans-nope")
    assert_one_line_error(code, err, "unknown connectome", "celegans-varshney")
    code, _, err = cx("motifs")
    assert_one_line_error(code, err, "exactly one of --dataset")
    (tmp_path / "t.csv").write_text("pre_pt_root_id,post_pt_root_id\n1.5,2\n")
    code, _, err = cx("synapses", "import", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o.parquet"))
    assert_one_line_error(code, err, "pre_pt_position")
