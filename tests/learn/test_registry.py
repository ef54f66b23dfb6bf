"""The weights registry on SQLite and PostgreSQL: versions and lineage, validation gating, fusion, rollback,
checksums, and two processes gating at once.

Models are small ConvStack3D networks. Adapters adapt only the last 1³ convolution (``conv_lom``), so a
model's output is linear in the adapter's ``B`` tensor: negating ``B`` reverses the change it makes, which
lets a test build an adapter that is surely better or surely worse. The stand-in validation score is the mean
output logit on a fixed input (lower is better, like VI); the registry only sees it as a number.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import multiprocessing
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from connectomix.errors import ConflictError, CorruptDataError, InputError, NotFoundError
from connectomix.learn.lora import (
    Adapter,
    LoRAConfig,
    add_lora,
    apply_adapter,
    extract_adapter,
    load_adapter,
)
from connectomix.learn.registry import MODELS, Entry, WeightsRegistry
from connectomix.segment.models import FFNConfig, FFNModel, build_model, save_model

CONFIG = FFNConfig(depth=2, width=8, fov_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3))
LORA = LoRAConfig(rank=2, alpha=2.0, targets=("conv_lom",))
REGION = {"volume": "fib25-ts2/gt", "box_zyx": [[0, 0, 0], [64, 64, 64]]}


class Clock:
    """Unix seconds that advance by one on every reading."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def fixed_input() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed (image, seed) pair, each (1, 1, 9, 9, 9) (batch, channel, z, y, x)."""
    generator = torch.Generator().manual_seed(7)
    image = torch.randn(1, 1, 9, 9, 9, generator=generator)
    seed = torch.randn(1, 1, 9, 9, 9, generator=generator)
    return image, seed


def outputs(model: FFNModel) -> torch.Tensor:
    image, seed = fixed_input()
    with torch.no_grad():
        return model(image, seed)


def score(model: FFNModel) -> float:
    """The stand-in validation score: mean output logit on the fixed input (lower is better)."""
    return float(outputs(model).mean())


def base_model() -> FFNModel:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


def adapter_for(model: FFNModel, *, better: bool, seed: int, scale: float = 1.0) -> Adapter:
    """An adapter of ``model``'s ``conv_lom`` that lowers (better) or raises (worse) the score."""
    adapted = copy.deepcopy(model)
    add_lora(adapted, LORA, seed=seed)
    adapter = extract_adapter(adapted)
    key = "conv_lom.lora_B"
    generator = torch.Generator().manual_seed(seed)
    adapter.tensors[key] = torch.randn(adapter.tensors[key].shape, generator=generator) * 0.5 * scale
    if (score(adapted_with(model, adapter)) < score(model)) != better:
        adapter.tensors[key] = -adapter.tensors[key]
    return adapter


def adapted_with(model: FFNModel, adapter: Adapter) -> FFNModel:
    """``model`` with ``adapter`` applied, unmerged (the reference the registry's merged model must match)."""
    adapted = copy.deepcopy(model)
    apply_adapter(adapted, adapter)
    return adapted.eval()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def registry(database_url, tmp_path):
    reg = WeightsRegistry(database_url, tmp_path / "ws", user="alice", clock=Clock())
    yield reg
    reg.dispose()


def test_base_and_adapters_are_versioned_with_lineage(registry, tmp_path) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25", metadata={"source": "test"}, note="first")
    assert (base.kind, base.name, base.version, base.status) == ("base", "fib25", 1, "promoted")
    assert base.created_by == "alice" and base.created_at == 1_700_000_001.0 and base.note == "first"
    path = registry.weights_dir / base.file
    assert (
        path.name == f"{base.id:06d}-{base.sha256}.safetensors" and path.parent == tmp_path / "ws" / "weights"
    )
    assert sha256(path) == base.sha256 and path.stat().st_size == base.size
    assert base.metadata == {"source": "test"} and base.base_id is None and base.gate is None

    first = registry.add_adapter(
        adapter_for(model, better=True, seed=1),
        base=base.id,
        trained_on_edits=[5, 3, 5],
        trained_on_tasks=["task-b", "task-a"],
        note="from 2 edits",
    )
    second = registry.add_adapter(
        adapter_for(model, better=True, seed=2), base="fib25", trained_on_edits=[7], parents=[first]
    )
    assert (first.kind, first.version, first.status, first.base_id) == ("adapter", 2, "candidate", base.id)
    assert first.trained_on_edits == (3, 5) and first.trained_on_tasks == ("task-a", "task-b")
    assert first.parents == () and second.parents == (first.id,) and second.version == 3
    assert load_adapter(registry.weights_dir / first.file).metadata["base_sha256"] == base.sha256
    assert registry.get(first.id) == first and registry.lineage("fib25:v3")["id"] == second.id

    lineage = registry.lineage(second)
    assert lineage["base"] == base.id and lineage["parents"] == [first.id]
    assert lineage["ancestors"] == sorted([base.id, first.id])
    assert lineage["edits"] == [7] and lineage["all_edits"] == [3, 5, 7]
    assert lineage["tasks"] == [] and lineage["all_tasks"] == ["task-a", "task-b"]
    assert registry.trained_on(edit=5) == [first] and registry.trained_on(task="task-b") == [first]
    assert registry.trained_on(edit=8) == []

    assert [e.id for e in registry.history()] == [base.id, first.id, second.id]
    assert [e.id for e in registry.history(kind="adapter", status="candidate")] == [first.id, second.id]
    assert registry.promoted() == base  # adapters wait for the gate

    # A base from a file is copied byte for byte, as the first version of its own name.
    source = save_model(base_model(), tmp_path / "other.safetensors")
    other = registry.add_base(source, name="other")
    assert other.version == 1 and other.status == "promoted" and other.sha256 == sha256(source)
    assert registry.names() == ["fib25", "other"]
    with pytest.raises(InputError, match="several models"):
        registry.promoted()
    # A second registry on the same database and workspace sees the same thing.
    again = WeightsRegistry(registry.db.url, tmp_path / "ws", user="bob")
    assert again.history() == registry.history() and again.promoted("other") == other
    again.dispose()


def test_worse_adapter_is_kept_rejected_and_not_served(registry) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    before = outputs(registry.load())
    torch.testing.assert_close(before, outputs(model), rtol=0, atol=0)
    worse = adapter_for(model, better=False, seed=3)
    entry = registry.add_adapter(worse, base=base, trained_on_edits=[1])

    result = registry.gate(entry, score, region=REGION)

    assert not result.promoted and result.baseline_id == base.id
    assert result.score == pytest.approx(score(adapted_with(model, worse)), abs=1e-6)
    assert result.baseline_score == pytest.approx(score(model), abs=1e-6)
    assert result.score > result.baseline_score and "not better" in result.reason
    rejected = registry.get(entry.id)
    assert rejected.status == "rejected" and rejected.gate is not None
    assert rejected.gate.metric == "vi" and rejected.gate.region == REGION
    assert (rejected.gate.score, rejected.gate.baseline_score) == (result.score, result.baseline_score)
    assert registry.promoted() == registry.get(base.id) and registry.get(base.id).status == "promoted"
    assert torch.equal(outputs(registry.load()), before)  # served outputs unchanged, bit for bit
    # Kept: it can still be loaded by id, and it gives the adapted outputs.
    torch.testing.assert_close(outputs(registry.load(entry)), outputs(adapted_with(model, worse)))
    # An untrained adapter (B = 0) changes nothing: an equal score is not an improvement.
    same = Adapter(
        worse.config,
        {k: torch.zeros_like(t) if k.endswith("lora_B") else t for k, t in worse.tensors.items()},
    )
    tie = registry.gate(registry.add_adapter(same, base=base), score, region=REGION)
    assert not tie.promoted and tie.score == tie.baseline_score
    assert [c.entry_id for c in registry.served_history()] == [base.id]


def test_better_adapter_is_promoted_and_served(registry) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    better = adapter_for(model, better=True, seed=4)
    entry = registry.add_adapter(better, base=base)

    result = registry.gate(entry, score, region="fib25-ts2/gt[0:64,0:64,0:64]", metric="vi")

    assert result.promoted and result.score < result.baseline_score and result.baseline_id == base.id
    assert registry.promoted() == result.entry and result.entry.status == "promoted"
    assert registry.get(base.id).status == "retired"
    served = registry.load()
    assert not any("lora" in name for name in served.state_dict())  # merged into plain Conv3d layers
    expected = outputs(adapted_with(model, better))
    torch.testing.assert_close(outputs(served), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs(served), outputs(model))
    unmerged = registry.load(merge=False)
    assert any("lora" in name for name in unmerged.state_dict())
    torch.testing.assert_close(outputs(unmerged), expected, rtol=1e-5, atol=1e-5)
    changes = registry.served_history()
    assert [(c.entry_id, c.event, c.previous_id) for c in changes] == [
        (base.id, "promoted", None),
        (entry.id, "promoted", base.id),
    ]
    assert changes[1].score == result.score and changes[1].baseline_score == result.baseline_score

    with pytest.raises(ConflictError, match="already the served"):
        registry.gate(entry, score, region=REGION)
    with pytest.raises(ConflictError, match="rollback"):
        registry.gate(base, score, region=REGION)
    # Better, but not by the margin asked for: rejected.
    slightly = registry.add_adapter(adapter_for(model, better=True, seed=5, scale=4.0), base=base)
    margin = registry.gate(slightly, score, region=REGION, min_improvement=1e6)
    assert not margin.promoted and margin.score < margin.baseline_score and registry.promoted().id == entry.id
    # Precomputed scores are recorded the same way.
    pre = registry.gate(slightly, 0.25, baseline_score=0.5, region=REGION)
    assert pre.promoted and pre.baseline_id == entry.id and registry.get(slightly.id).gate.score == 0.25


def test_rollback_restores_earlier_outputs_exactly(registry) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    first_adapter = adapter_for(model, better=True, seed=6)
    second_adapter = Adapter(
        first_adapter.config,
        {k: (2.0 * t if k.endswith("lora_B") else t) for k, t in first_adapter.tensors.items()},
    )  # twice the change: better still
    out_base = outputs(registry.load())
    first = registry.add_adapter(first_adapter, base=base)
    assert registry.gate(first, score, region=REGION).promoted
    out_first = outputs(registry.load())
    second = registry.add_adapter(second_adapter, base=base, parents=[first])
    assert registry.gate(second, score, region=REGION).promoted
    out_second = outputs(registry.load())
    assert not torch.equal(out_first, out_second) and not torch.equal(out_base, out_first)
    loser = registry.add_adapter(adapter_for(model, better=False, seed=7), base=base)
    assert not registry.gate(loser, score, region=REGION).promoted

    assert registry.rollback(first) == registry.get(first.id)
    assert registry.promoted().id == first.id and registry.get(second.id).status == "retired"
    assert torch.equal(outputs(registry.load()), out_first)
    assert registry.rollback().id == second.id  # the version served just before
    assert torch.equal(outputs(registry.load()), out_second)
    assert registry.rollback(base.id).id == base.id
    assert torch.equal(outputs(registry.load()), out_base)

    changes = [(c.entry_id, c.event, c.previous_id) for c in registry.served_history("fib25")]
    assert changes == [
        (base.id, "promoted", None),
        (first.id, "promoted", base.id),
        (second.id, "promoted", first.id),
        (first.id, "rollback", second.id),
        (second.id, "rollback", first.id),
        (base.id, "rollback", second.id),
    ]
    assert [e.id for e in registry.history(status="promoted")] == [base.id]
    with pytest.raises(ConflictError, match="never promoted"):
        registry.rollback(loser)
    with pytest.raises(ConflictError, match="already the served"):
        registry.rollback(base)


def test_fused_adapters_are_gated_the_same_way(registry) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    one = adapter_for(model, better=True, seed=8)
    two = adapter_for(model, better=True, seed=9)
    a = registry.add_adapter(one, base=base, trained_on_edits=[1, 2], trained_on_tasks=["t1"])
    b = registry.add_adapter(two, base=base, trained_on_edits=[2, 3], trained_on_tasks=["t2"])
    assert registry.gate(a, score, region=REGION).promoted

    fused = registry.fuse([a, b], [1.0, 1.0], note="a+b")
    assert (fused.kind, fused.status, fused.base_id, fused.parents) == (
        "fused",
        "candidate",
        base.id,
        (a.id, b.id),
    )
    assert fused.trained_on_edits == (1, 2, 3) and fused.trained_on_tasks == ("t1", "t2")
    assert fused.metadata["fusion_weights"] == [1.0, 1.0]
    lineage = registry.lineage(fused)
    assert lineage["parents"] == [a.id, b.id] and lineage["ancestors"] == sorted([base.id, a.id, b.id])
    # The fused model's change is the sum of the two adapters' changes (linear in conv_lom's delta).
    out_base, out_one, out_two = (
        outputs(m) for m in (model, adapted_with(model, one), adapted_with(model, two))
    )
    expected = out_base + (out_one - out_base) + (out_two - out_base)
    torch.testing.assert_close(outputs(registry.load(fused)), expected, rtol=1e-5, atol=1e-5)

    result = registry.gate(fused, score, region=REGION)  # both lower the score: the sum beats ``a`` alone
    assert result.promoted and result.baseline_id == a.id
    torch.testing.assert_close(outputs(registry.load()), expected, rtol=1e-5, atol=1e-5)

    opposite = registry.fuse([a, b], [-1.0, -1.0])
    assert not registry.gate(opposite, score, region=REGION).promoted
    assert registry.get(opposite.id).status == "rejected" and registry.promoted().id == fused.id
    with pytest.raises(InputError, match="base model"):
        registry.fuse([base, a], [0.5, 0.5])
    with pytest.raises(InputError, match="one weight per adapter"):
        registry.fuse([a, b], [1.0])
    with pytest.raises(InputError, match="at least two"):
        registry.fuse([a], [1.0])
    other_base = registry.add_base(base_model(), name="fib25")  # a second base of the same name
    assert (other_base.version, other_base.status) == (
        6,
        "candidate",
    )  # only the first base is served at once
    c = registry.add_adapter(adapter_for(model, better=True, seed=10), base=other_base)
    with pytest.raises(InputError, match="adapters of one base"):
        registry.fuse([a, c], [0.5, 0.5])


def test_tampered_files_raise_corrupt_data(registry) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    entry = registry.add_adapter(adapter_for(model, better=True, seed=11), base=base)
    assert registry.gate(entry, score, region=REGION).promoted

    path = registry.weights_dir / entry.file
    data = bytearray(path.read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # flip the last bytes of the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError) as caught:
        registry.load()
    message = str(caught.value)
    assert str(path) in message and entry.sha256 in message and sha256(path) in message
    assert "\n" not in message
    with pytest.raises(CorruptDataError, match=entry.sha256):
        registry.adapter(entry)

    # A tampered base breaks every model built on it, and a rollback to it is refused before serving.
    base_path = registry.weights_dir / base.file
    base_bytes = base_path.read_bytes()
    base_path.write_bytes(base_bytes[:-1] + bytes([base_bytes[-1] ^ 0x01]))
    with pytest.raises(CorruptDataError, match=base.sha256):
        registry.load(base)
    with pytest.raises(CorruptDataError, match=base.sha256):
        registry.rollback(base)
    assert registry.promoted().id == entry.id
    base_path.unlink()
    with pytest.raises(NotFoundError, match="missing"):
        registry.load(base)


def test_unknown_ids_and_bad_arguments(registry, tmp_path) -> None:
    model = base_model()
    with pytest.raises(NotFoundError, match="no models yet"):
        registry.load()
    base = registry.add_base(model, name="fib25")
    good = adapter_for(model, better=True, seed=12)
    entry = registry.add_adapter(good, base=base)
    before = registry.history()

    for call in (
        lambda: registry.get(999),
        lambda: registry.load(999),
        lambda: registry.load("fib25:v9"),
        lambda: registry.gate(999, score, region=REGION),
        lambda: registry.rollback(999),
        lambda: registry.lineage(999),
        lambda: registry.add_adapter(good, base=999),
        lambda: registry.add_adapter(good, base="nosuch"),
        lambda: registry.add_adapter(good, base=base, parents=[999]),
        lambda: registry.add_base(tmp_path / "missing.safetensors", name="x"),
    ):
        with pytest.raises(NotFoundError):
            call()

    wide = build_model(FFNConfig(depth=2, width=16, fov_zyx=(9, 9, 9), deltas_zyx=(3, 3, 3)))
    lora_model = copy.deepcopy(model)
    add_lora(lora_model, LORA)
    foreign = Adapter(good.config, good.tensors, {"base_sha256": "0" * 64})
    for call, match in (
        (lambda: registry.add_base(model, name="bad name"), "model name"),
        (lambda: registry.add_base(model, name=""), "model name"),
        (lambda: registry.add_base(object(), name="x"), "FFNModel"),
        (lambda: registry.add_base(lora_model, name="x"), "LoRA layers"),
        (lambda: registry.add_base(model, name="x", metadata={"bad": object()}), "JSON"),
        (lambda: registry.add_adapter(good, base=entry), "not a base"),
        (lambda: registry.add_adapter("adapter", base=base), "Adapter"),
        (lambda: registry.add_adapter(adapter_for(wide, better=True, seed=1), base=base), "shape"),
        (lambda: registry.add_adapter(foreign, base=base), "trained on a base"),
        (lambda: registry.add_adapter(good, base=base, trained_on_edits=[-1]), "edit ids"),
        (lambda: registry.add_adapter(good, base=base, trained_on_edits=["7"]), "edit ids"),
        (lambda: registry.add_adapter(good, base=base, trained_on_tasks="abc"), "task keys"),
        (lambda: registry.add_adapter(good, base=base, trained_on_tasks=[""]), "task keys"),
        (lambda: registry.gate(entry, score, region=""), "region"),
        (lambda: registry.gate(entry, score, region={}), "region"),
        (lambda: registry.gate(entry, score, region=REGION, metric=""), "metric"),
        (lambda: registry.gate(entry, score, region=REGION, min_improvement=-1), "min_improvement"),
        (lambda: registry.gate(entry, lambda m: float("nan"), region=REGION), "finite"),
        (lambda: registry.gate(entry, lambda m: "low", region=REGION), "number"),
        (lambda: registry.gate(entry, 0.1, region=REGION), "baseline_score"),
        (lambda: registry.gate(entry, score, region=REGION, baseline_score=0.1), "precomputed"),
        (lambda: registry.get("1"), "integer"),
        (lambda: registry.load("fib25"), "name:vN"),
        (lambda: registry.history(kind="lora"), "kind"),
        (lambda: registry.trained_on(), "edit id"),
        (lambda: WeightsRegistry(registry.db, tmp_path, user=""), "user"),
    ):
        with pytest.raises(InputError, match=match):
            call()
    # Nothing was half-written: same rows, no stray files, the candidate still a candidate.
    assert registry.history() == before
    assert sorted(p.name for p in registry.weights_dir.iterdir()) == sorted(e.file for e in before)


# -- two processes gating at once ------------------------------------------------------------------------
def _gate_worker(url: str, workspace: str, entry_id: int, barrier, out: str) -> None:
    calls = []

    def evaluate(model: FFNModel) -> float:
        calls.append(1)
        if len(calls) == 2:  # both processes have read the served version and now score it: race them
            barrier.wait(timeout=60)
        return score(model)

    registry = WeightsRegistry(url, Path(workspace), user=f"worker-{entry_id}")
    result = registry.gate(entry_id, evaluate, region=REGION)
    registry.dispose()
    Path(out).write_text(
        json.dumps({"promoted": result.promoted, "baseline_id": result.baseline_id, "calls": len(calls)})
    )


def test_two_processes_gating_at_once_leave_one_served_version(registry, tmp_path) -> None:
    model = base_model()
    base = registry.add_base(model, name="fib25")
    best = registry.add_adapter(adapter_for(model, better=True, seed=13, scale=3.0), base=base)
    good = registry.add_adapter(adapter_for(model, better=True, seed=13, scale=1.0), base=base)

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    processes = [
        context.Process(
            target=_gate_worker,
            args=(registry.db.url, str(registry.workspace), e.id, barrier, str(tmp_path / f"{e.id}.json")),
        )
        for e in (best, good)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    reports = {e.id: json.loads((tmp_path / f"{e.id}.json").read_text()) for e in (best, good)}

    # Whichever committed second saw the served version change under it and scored the new one.
    assert sorted(r["calls"] for r in reports.values()) == [2, 3]
    served = [e for e in registry.history() if e.status == "promoted"]
    assert [e.id for e in served] == [best.id]
    changes = registry.served_history()
    for earlier, later in itertools.pairwise(changes):
        assert later.previous_id == earlier.entry_id  # no promotion lost or based on a stale served version
    assert changes[-1].entry_id == best.id
    # The database itself refuses a second served version.
    with pytest.raises(sa.exc.IntegrityError), registry.db.begin() as connection:
        connection.execute(MODELS.update().where(MODELS.c.id == good.id).values(status="promoted"))
    assert isinstance(registry.promoted(), Entry)
