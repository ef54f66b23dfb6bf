"""The Task record: validation, stable keys, JSON round trip with uint64 ids beyond 2**53."""

from __future__ import annotations

import json

import pytest

from connectomix.errors import InputError
from connectomix.flag import KEY_QUANTUM_VOXELS, Task, task_key

BIG_A = 2**63 + 12345  # > 2**53: not representable as a float / JSON number
BIG_B = 2**64 - 1


def make_merge(point=(10, 20, 30), ids=(BIG_B, BIG_A)) -> Task:
    return Task.create(
        "merge",
        point,
        ids,
        3.5,
        resolution_nm_xyz=(8, 8, 40),
        evidence={"entropy_mass": 1.25, "points_xyz": [[10, 20, 30], [11, 20, 30]]},
    )


def test_create_sorts_merge_ids_and_computes_nm_point():
    task = make_merge()
    assert task.segment_ids == (BIG_A, BIG_B)
    assert task.point_nm_xyz == (80.0, 160.0, 1200.0)
    assert task.key.startswith("merge-") and len(task.key) == len("merge-") + 16
    assert task.key == task_key("merge", (BIG_A, BIG_B), (10, 20, 30))


def test_round_trip_through_json_keeps_big_ids_exact():
    task = make_merge()
    payload = json.loads(json.dumps(task.to_dict()))
    assert payload["segment_ids"] == [str(BIG_A), str(BIG_B)]
    back = Task.from_dict(payload)
    assert back == task
    assert back.segment_ids == (BIG_A, BIG_B)
    assert hash(back) == hash(task)


@pytest.mark.parametrize(
    ("kind", "ids"),
    [("split", (5,)), ("unassigned", ()), ("unassigned", (3, 4))],
)
def test_round_trip_other_kinds(kind, ids):
    task = Task.create(kind, (1, 2, 3), ids, 0.5, evidence={"voxels": 12})
    assert Task.from_dict(json.loads(json.dumps(task.to_dict()))) == task


def test_key_is_stable_within_a_quantum_and_changes_across():
    q = KEY_QUANTUM_VOXELS
    base = task_key("split", (7,), (q, q, q))
    assert task_key("split", (7,), (2 * q - 1, q + 1, q)) == base
    assert task_key("split", (7,), (2 * q, q, q)) != base
    assert task_key("merge", (7, 9), (q, q, q)) == task_key("merge", (9, 7), (q, q, q))
    assert task_key("split", (8,), (q, q, q)) != base
    assert task_key("unassigned", (), (q, q, q)).startswith("unassigned-")
    # a fixed value: the key must not change between releases (queued tasks are deduplicated by it)
    assert task_key("merge", (1, 2), (0, 0, 0)) == "merge-" + _sha1_16("merge|1,2|0,0,0")


def _sha1_16(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"kind": "fix"}, "task kind must be one of"),
        ({"segment_ids": ["1"]}, "merge task needs 2..2 segment ids"),
        ({"segment_ids": ["0", "1"]}, "1..2**64-1"),
        ({"segment_ids": [str(2**64), "1"]}, "1..2**64-1"),
        ({"segment_ids": ["x", "1"]}, "integers or decimal strings"),
        ({"segment_ids": "12"}, "list of ids"),
        ({"point_xyz": [1, 2]}, "point_xyz must be 3 integers"),
        ({"point_nm_xyz": ["a", 1, 2]}, "point_nm_xyz must be 3 numbers"),
        ({"score": "high"}, "score must be a number"),
        ({"evidence": [1]}, "evidence must be a JSON object"),
        ({"key": ""}, "non-empty string"),
    ],
)
def test_from_dict_rejects_malformed_input(changes, fragment):
    payload = {**make_merge().to_dict(), **changes}
    with pytest.raises(InputError, match=fragment.replace("*", r"\*").replace(".", r"\.")):
        Task.from_dict(payload)


def test_from_dict_reports_missing_fields():
    payload = make_merge().to_dict()
    del payload["score"], payload["kind"]
    with pytest.raises(InputError, match="missing field"):
        Task.from_dict(payload)
    with pytest.raises(InputError, match="JSON object"):
        Task.from_dict([1, 2])  # type: ignore[arg-type]
