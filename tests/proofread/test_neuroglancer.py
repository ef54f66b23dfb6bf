"""Neuroglancer viewer states and links: the JSON Neuroglancer expects, round trips through its own parser."""

from __future__ import annotations

import json
import urllib.parse

import neuroglancer
import pytest

from connectomix.errors import InputError
from connectomix.flag.tasks import Task
from connectomix.proofread.neuroglancer import layer_source, parse_link, task_link, viewer_state

BIG_ID = 2**63 + 12345  # beyond JSON's 2^53: must travel as a string


@pytest.fixture
def merge_task() -> Task:
    return Task.create("merge", (10, 20, 30), (BIG_ID, 7), 0.9, resolution_nm_xyz=(4, 4, 40))


@pytest.fixture
def split_task() -> Task:
    evidence = {"sources_xyz": [[1, 2, 3]], "sinks_xyz": [[4, 5, 6], [7, 8, 9]]}
    return Task.create("split", (5, 6, 7), (42,), 0.5, evidence=evidence)


def test_state_fields(merge_task) -> None:
    state = viewer_state(
        merge_task,
        em_source="http://127.0.0.1:8765/precomputed/em",
        segmentation_source="precomputed://http://127.0.0.1:8765/precomputed/seg",
        resolution_nm_xyz=(4, 4, 40),
        zoom_nm_per_px=8,
        layout="xy-3d",
    )
    assert state["dimensions"] == {"x": [4e-9, "m"], "y": [4e-9, "m"], "z": [40e-9, "m"]}
    assert state["position"] == [10.5, 20.5, 30.5]  # voxel centre, (x, y, z)
    assert state["crossSectionScale"] == pytest.approx(2.0)  # 8 nm/px over 4 nm canonical voxels
    assert state["layout"] == "xy-3d"
    image, segmentation = state["layers"]
    assert image == {
        "type": "image",
        "source": "precomputed://http://127.0.0.1:8765/precomputed/em",
        "name": "em",
    }
    assert segmentation["type"] == "segmentation"
    assert segmentation["source"] == "precomputed://http://127.0.0.1:8765/precomputed/seg"
    assert segmentation["segments"] == ["7", str(BIG_ID)]
    assert json.loads(json.dumps(state)) == state  # plain JSON


def test_state_round_trips_through_neuroglancer(merge_task, split_task) -> None:
    for task in (merge_task, split_task):
        state = viewer_state(task, em_source=None, segmentation_source="http://h/precomputed/seg")
        parsed = neuroglancer.ViewerState(state)
        assert [float(v) for v in parsed.position] == state["position"]
        layer = parsed.layers["segmentation"]
        assert {int(s) for s in layer.segments} == set(task.segment_ids)
        assert parsed.dimensions.names == ("x", "y", "z")
        assert list(parsed.dimensions.scales) == pytest.approx([8e-9, 8e-9, 8e-9])
        assert parsed.layout.type == "4panel"
    # the split task's suggested sources and sinks become point annotations
    state = viewer_state(split_task, em_source=None, segmentation_source="http://h/seg")
    points = neuroglancer.ViewerState(state).layers["points"].annotations
    assert [list(p.point) for p in points] == [[1.5, 2.5, 3.5], [4.5, 5.5, 6.5], [7.5, 8.5, 9.5]]


def test_explicit_segments_override_the_task(merge_task) -> None:
    state = viewer_state(
        merge_task, em_source=None, segmentation_source="http://h/s", segment_ids=[3, 3, 0, 5]
    )
    assert state["layers"][0]["segments"] == ["3", "5"]


def test_link_round_trips_through_neuroglancer(merge_task) -> None:
    state = viewer_state(merge_task, em_source="http://h/em", segmentation_source="http://h/seg")
    link = task_link(state, "http://127.0.0.1:8765/neuroglancer/v/connectomix/#old")
    assert link.startswith("http://127.0.0.1:8765/neuroglancer/v/connectomix/#!%7B")
    assert " " not in link and '"' not in link
    assert parse_link(link) == state
    parsed = neuroglancer.parse_url(link)
    assert neuroglancer.url_state.to_json(parsed)["layers"][1]["segments"] == ["7", str(BIG_ID)]
    # the same encoding as Neuroglancer's own to_url
    fragment = link.split("#!", 1)[1]
    assert json.loads(urllib.parse.unquote(fragment)) == state


def test_bad_input_is_an_input_error(merge_task) -> None:
    with pytest.raises(InputError, match="layout"):
        viewer_state(merge_task, em_source=None, segmentation_source="http://h/s", layout="6panel")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="resolution"):
        viewer_state(
            merge_task, em_source=None, segmentation_source="http://h/s", resolution_nm_xyz=(8, 0, 8)
        )
    with pytest.raises(InputError, match="scheme"):
        layer_source("some/path")
    with pytest.raises(InputError, match="client_url"):
        task_link({}, "ftp://x")
    with pytest.raises(InputError):
        parse_link("http://h/#nothing")
    assert layer_source("zarr://http://h/x.zarr") == "zarr://http://h/x.zarr"
