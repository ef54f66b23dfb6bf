"""The weights registry: base models and LoRA adapters, versioned in the workspace, gated before serving.

Every model file the loop produces is an *entry*: a ``base`` model (an FFN safetensors file), an ``adapter``
trained on a base (a LoRA safetensors file, :mod:`connectomix.learn.lora`) or a ``fused`` adapter (a weighted
combination of adapters of one base, :func:`~connectomix.learn.lora.fuse_adapters`). Entries belong to a model
*name* (a line of versions, e.g. ``fib25``) and are numbered 1, 2, 3, … within it. Each records its lineage:
its base, its parents (the adapters it continued from, or the inputs of a fusion), the edit-log ids
(:mod:`connectomix.proofread.edits`) and task keys it was trained on, who added it and when.

Serving. Exactly one entry per name is *served* (status ``promoted``); :meth:`WeightsRegistry.load` with no
entry gives it. The first base of a name is served at once; every later entry starts as a ``candidate`` and is
served only through :meth:`WeightsRegistry.gate`: the candidate and the served model are scored on the same
held-out validated region (VI by default; lower is better) and the candidate is promoted only if it is
strictly better, by more than ``min_improvement``. Otherwise it is kept, ``rejected``, and never served unless
a later gate promotes it. The model it replaces becomes ``retired``. :meth:`WeightsRegistry.rollback` serves
any earlier promoted version again; :meth:`WeightsRegistry.served_history` lists every change of the served
version (promotions and rollbacks), from the append-only event table.

Files: ``<workspace>/weights/<id>-<sha256>.safetensors``, written under a temporary name and renamed in the
transaction that records them (a failure leaves neither a row nor a file). Every load checks the file's
sha256 against the database: a mismatch is a :class:`~connectomix.errors.CorruptDataError` naming the file and
both checksums.

Concurrency. Changing the served version (gate, rollback, the first base) is one transaction that holds the
name's lock: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL; a partial unique
index (one ``promoted`` row per name) backs it up. A gate scores outside the transaction and, if another
process changed the served version meanwhile, scores the new one and decides again.

Tables (schema component ``registry``): ``registry_models``, ``registry_events``. Times are unix seconds.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import math
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
import torch
from sqlalchemy.engine import Connection

from connectomix.errors import ConflictError, CorruptDataError, InputError, NotFoundError
from connectomix.learn.lora import (
    Adapter,
    LoRAConv3d,
    apply_adapter,
    fuse_adapters,
    load_adapter,
    merge_and_remove_lora,
    save_adapter,
)
from connectomix.proofread.db import Database, open_database
from connectomix.segment.models import FFNModel, load_model, save_model

Kind = Literal["base", "adapter", "fused"]
Status = Literal["candidate", "promoted", "rejected", "retired"]
EventKind = Literal["added", "promoted", "rejected", "rollback"]

#: Longest model name, user name, metric name the tables hold (characters).
NAME_LENGTH, USER_LENGTH, METRIC_LENGTH, TASK_LENGTH = 128, 200, 32, 200
#: How many times a gate re-scores when other processes keep changing the served version under it.
GATE_ATTEMPTS = 5
#: Adapter-file metadata key holding the sha256 of the base model file it was trained on.
BASE_SHA_KEY = "base_sha256"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127}):v?(?P<version>[0-9]+)$")

_metadata = sa.MetaData()

MODELS = sa.Table(
    "registry_models",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("file", sa.String(255), nullable=False),  # name inside <workspace>/weights/
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),  # bytes
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(USER_LENGTH), nullable=False),
    sa.Column("base_id", sa.Integer, sa.ForeignKey("registry_models.id")),  # None for a base
    sa.Column("parents", sa.Text, nullable=False),  # JSON list of entry ids
    sa.Column("trained_on_edits", sa.Text, nullable=False),  # JSON list of edit-log ids
    sa.Column("trained_on_tasks", sa.Text, nullable=False),  # JSON list of task keys
    sa.Column("meta", sa.Text, nullable=False),  # JSON object
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("gate_metric", sa.String(METRIC_LENGTH)),  # the latest gate's scores
    sa.Column("gate_score", sa.Float),
    sa.Column("gate_baseline_score", sa.Float),
    sa.Column("gate_baseline_id", sa.Integer),
    sa.Column("gate_region", sa.Text),  # JSON
    sa.Column("gated_at", sa.Float),
    sa.UniqueConstraint("name", "version", name="uq_registry_models_name_version"),
)
# At most one served entry per name, whatever the code above it does.
sa.Index(
    "ux_registry_models_served",
    MODELS.c.name,
    unique=True,
    sqlite_where=MODELS.c.status == "promoted",
    postgresql_where=MODELS.c.status == "promoted",
)

EVENTS = sa.Table(
    "registry_events",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(NAME_LENGTH), nullable=False),
    sa.Column("entry_id", sa.Integer, sa.ForeignKey("registry_models.id"), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("user", sa.String(USER_LENGTH), nullable=False),
    sa.Column("previous_id", sa.Integer),  # promoted / rollback: the entry served before
    sa.Column("metric", sa.String(METRIC_LENGTH)),
    sa.Column("score", sa.Float),
    sa.Column("baseline_score", sa.Float),
    sa.Column("region", sa.Text),  # JSON
    sa.Column("detail", sa.Text),
    sa.Index("ix_registry_events_name", "name", "id"),
    sa.Index("ix_registry_events_entry", "entry_id", "id"),
)


def _migration_1(connection: Connection) -> None:
    _metadata.create_all(connection, tables=[MODELS, EVENTS])


MIGRATIONS = [_migration_1]


@dataclass(frozen=True)
class GateScores:
    """The scores of an entry's latest gate: ``metric`` on ``region`` (lower is better), the candidate's
    ``score`` and the ``baseline_score`` of the entry then served (``baseline_id``; both None when nothing
    was served)."""

    metric: str
    score: float
    baseline_score: float | None
    baseline_id: int | None
    region: str | dict[str, Any]
    at: float


@dataclass(frozen=True)
class Entry:
    """One model file in the registry, as recorded (see the module docstring for the fields' meaning)."""

    id: int
    name: str
    version: int
    kind: Kind
    status: Status
    file: str  # inside <workspace>/weights/
    sha256: str
    size: int  # bytes
    created_at: float
    created_by: str
    base_id: int | None
    parents: tuple[int, ...]
    trained_on_edits: tuple[int, ...]
    trained_on_tasks: tuple[str, ...]
    metadata: dict[str, Any]
    note: str
    gate: GateScores | None

    @property
    def label(self) -> str:
        """``name:vN (kind #id)``, for messages."""
        return f"{self.name}:v{self.version} ({self.kind} #{self.id})"


@dataclass(frozen=True)
class GateResult:
    """The outcome of :meth:`WeightsRegistry.gate`; ``entry`` is the candidate as recorded afterwards."""

    entry: Entry
    promoted: bool
    metric: str
    score: float
    baseline_score: float | None
    baseline_id: int | None
    reason: str


@dataclass(frozen=True)
class ServedChange:
    """One change of the served version of ``name``: ``entry_id`` served from ``at`` on, replacing
    ``previous_id``; ``event`` is ``promoted`` (first base or a passed gate) or ``rollback``."""

    name: str
    entry_id: int
    version: int
    event: Literal["promoted", "rollback"]
    at: float
    user: str
    previous_id: int | None
    score: float | None
    baseline_score: float | None


Evaluate = Callable[[FFNModel], float]


class WeightsRegistry:
    """The weights registry of a workspace: rows in ``db`` (a :class:`Database`, URL, SQLite path, or None
    for the configured one), files under ``<workspace>/weights/``. ``user`` is recorded as who did what
    (default: the login name); ``clock`` returns unix seconds."""

    def __init__(
        self,
        db: Database | str | Path | None = None,
        workspace: Path | str | None = None,
        *,
        user: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if workspace is None:
            from connectomix.config import get_settings

            workspace = get_settings().workspace
        self.db = open_database(db)
        self.workspace = Path(workspace)
        self.weights_dir = self.workspace / "weights"
        self.user = _check_user(_login_name() if user is None else user)
        self.clock = clock
        self.db.ensure_schema("registry", MIGRATIONS)

    # -- adding -----------------------------------------------------------------------------------------
    def add_base(
        self,
        model: FFNModel | Path | str,
        *,
        name: str,
        metadata: Mapping[str, Any] | None = None,
        note: str = "",
    ) -> Entry:
        """Add a base model (an :class:`FFNModel` or a safetensors file from
        :func:`~connectomix.segment.models.save_model`, copied byte for byte) as the next version of ``name``.

        The first base of a name is served at once; later ones are candidates for :meth:`gate`.
        """
        name = _check_name(name)
        meta = _check_json_mapping(metadata, "metadata")
        note = _check_note(note)
        if isinstance(model, FFNModel):
            if any(isinstance(m, LoRAConv3d) for m in model.modules()):
                raise InputError(
                    "add_base needs a plain model, this one has LoRA layers: add its adapter with "
                    "add_adapter, or fold it in with merge_and_remove_lora first"
                )
            source = model

            def write(path: Path) -> None:
                save_model(source, path)

        elif isinstance(model, str | Path):
            path_in = Path(model)
            load_model(path_in)  # NotFoundError / InputError unless it is an FFN model file

            def write(path: Path) -> None:
                shutil.copyfile(path_in, path)

        else:
            raise InputError(f"add_base needs an FFNModel or a model file path, got {type(model).__name__}")
        return self._insert(
            kind="base",
            name=name,
            write=write,
            base_id=None,
            parents=(),
            edits=(),
            tasks=(),
            meta=meta,
            note=note,
        )

    def add_adapter(
        self,
        adapter: Adapter,
        *,
        base: Entry | int | str,
        trained_on_edits: Iterable[int] = (),
        trained_on_tasks: Iterable[str] = (),
        parents: Iterable[Entry | int] = (),
        note: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Add a LoRA adapter trained on ``base`` as a candidate version of the base's name.

        ``base``: a base entry or its id, ``"name:vN"``, or a name (the base under its served version).
        ``trained_on_edits``: edit-log ids; ``trained_on_tasks``: task keys; ``parents``: the entries it was
        trained from (e.g. the previous adapter), of the same name. InputError if the adapter does not fit the
        base model, or if its ``base_sha256`` metadata names another base file.
        """
        if not isinstance(adapter, Adapter):
            raise InputError(f"add_adapter needs a connectomix.learn.Adapter, got {type(adapter).__name__}")
        base_entry = self._base_of(base)
        edits = _check_edits(trained_on_edits)
        tasks = _check_tasks(trained_on_tasks)
        parent_ids = self._check_parents(parents, base_entry.name)
        note = _check_note(note)
        meta = _check_json_mapping(metadata, "metadata")
        recorded = adapter.metadata.get(BASE_SHA_KEY)
        if recorded is not None and recorded != base_entry.sha256:
            raise InputError(
                f"the adapter was trained on a base with sha256 {recorded}, not {base_entry.label} "
                f"(sha256 {base_entry.sha256})"
            )
        apply_adapter(self._load_base(base_entry), adapter)  # InputError unless it fits the base
        stored = Adapter(
            adapter.config, adapter.tensors, {**adapter.metadata, BASE_SHA_KEY: base_entry.sha256}
        )
        return self._insert(
            kind="adapter",
            name=base_entry.name,
            write=lambda path: _save_adapter(stored, path),
            base_id=base_entry.id,
            parents=parent_ids,
            edits=edits,
            tasks=tasks,
            meta=meta,
            note=note,
        )

    def fuse(
        self,
        entries: Sequence[Entry | int | str],
        weights: Sequence[float],
        *,
        note: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Add a weighted combination of adapters of one base (:func:`~connectomix.learn.lora.fuse_adapters`:
        the weight deltas summed with ``weights``) as a candidate ``fused`` entry. Its parents are the inputs;
        it was trained on the union of their edits and tasks. Gate it like any candidate."""
        if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
            raise InputError("fuse needs a list of adapter entries (or ids)")
        inputs = [self._entry(e) for e in entries]
        if len(inputs) < 2:
            raise InputError(f"fuse needs at least two adapters, got {len(inputs)}")
        if len({e.id for e in inputs}) != len(inputs):
            raise InputError(f"fuse got the same entry twice: {[e.id for e in inputs]}")
        if (
            isinstance(weights, str | bytes)
            or not isinstance(weights, Sequence)
            or len(weights) != len(inputs)
        ):
            raise InputError(f"fuse needs one weight per adapter ({len(inputs)}), got {weights!r}")
        values = [_finite(w, "fusion weight") for w in weights]
        for e in inputs:
            if e.kind == "base":
                raise InputError(f"{e.label} is a base model; fuse combines adapters of one base")
        if len({e.base_id for e in inputs}) != 1:
            raise InputError(
                "fuse combines adapters of one base; these have bases "
                + ", ".join(f"#{e.id}→#{e.base_id}" for e in inputs)
            )
        base_entry = self.get(_some(inputs[0].base_id))
        fused = fuse_adapters(
            [self.adapter(e) for e in inputs],
            values,
            metadata={BASE_SHA_KEY: base_entry.sha256, "fused_from": json.dumps([e.id for e in inputs])},
        )
        meta = {**_check_json_mapping(metadata, "metadata"), "fusion_weights": values}
        edits = tuple(sorted({i for e in inputs for i in e.trained_on_edits}))
        tasks = tuple(sorted({t for e in inputs for t in e.trained_on_tasks}))
        return self._insert(
            kind="fused",
            name=base_entry.name,
            write=lambda path: _save_adapter(fused, path),
            base_id=base_entry.id,
            parents=tuple(e.id for e in inputs),
            edits=edits,
            tasks=tasks,
            meta=meta,
            note=_check_note(note),
        )

    # -- gating, serving, rollback ------------------------------------------------------------------------
    def gate(
        self,
        entry: Entry | int | str,
        evaluate: Evaluate | float,
        *,
        region: str | Mapping[str, Any],
        metric: str = "vi",
        min_improvement: float = 0.0,
        baseline_score: float | None = None,
    ) -> GateResult:
        """Score the candidate ``entry`` and the served model of its name on ``region`` and promote the
        candidate only if its score is lower than the served one's by more than ``min_improvement``.

        ``evaluate(model) -> float`` scores a model (e.g. VI of its segmentation of a held-out validated
        region; lower is better); it is called with the candidate and the served model as :meth:`load` gives
        them, under ``torch.no_grad``. Alternatively pass the candidate's score as a number and the served
        model's as ``baseline_score``. ``region`` (a string or JSON-able mapping, e.g. a volume URL and box)
        and ``metric`` are recorded with both scores. Either way the candidate is kept: ``promoted`` (served
        from now on) or ``rejected``. Candidates and rejected entries can be gated; ConflictError otherwise.
        """
        candidate = self._entry(entry)
        region_json = _region_json(region)
        metric = _check_metric(metric)
        margin = _finite(min_improvement, "min_improvement")
        if margin < 0:
            raise InputError(f"min_improvement must be >= 0, got {min_improvement}")
        _check_gateable(candidate)
        scorer: Evaluate | None = evaluate if callable(evaluate) else None
        precomputed = scorer is None
        given_baseline: float | None = None
        if precomputed:
            score = _finite(evaluate, f"score of {candidate.label}")
            given_baseline = None if baseline_score is None else _finite(baseline_score, "baseline_score")
        else:
            if baseline_score is not None:
                raise InputError(
                    "baseline_score goes with a precomputed score, not with an evaluate callable"
                )
            score = self._score(scorer, candidate)
        scores: dict[int, float] = {}
        for _ in range(GATE_ATTEMPTS):
            served = self.promoted(candidate.name)
            baseline: float | None = None
            if served is not None:
                if precomputed:
                    if given_baseline is None:
                        raise InputError(
                            f"a precomputed score needs baseline_score (score of the served {served.label})"
                        )
                    baseline = given_baseline
                else:
                    if served.id not in scores:
                        scores[served.id] = self._score(scorer, served)
                    baseline = scores[served.id]
            served_id = None if served is None else served.id
            with self.db.begin() as connection:
                self._lock(connection, candidate.name)
                if _served_id(connection, candidate.name) != served_id:
                    if precomputed:
                        raise ConflictError(
                            f"the served version of {candidate.name!r} changed while gating "
                            f"{candidate.label}; score against the new one and gate again"
                        )
                    continue  # someone else promoted meanwhile: score the new served model, decide again
                current = self._row(connection, candidate.id)
                _check_gateable(current)
                promoted = baseline is None or baseline - score > margin
                reason = _reason(metric, score, baseline, served, margin, promoted)
                now = self.clock()
                gate_values = {
                    "gate_metric": metric,
                    "gate_score": score,
                    "gate_baseline_score": baseline,
                    "gate_baseline_id": served_id,
                    "gate_region": region_json,
                    "gated_at": now,
                }
                event = {
                    "metric": metric,
                    "score": score,
                    "baseline_score": baseline,
                    "region": region_json,
                    "detail": reason,
                }
                if promoted:
                    self._serve(connection, candidate.name, candidate.id, served_id, "promoted", now, **event)
                    connection.execute(
                        MODELS.update().where(MODELS.c.id == candidate.id).values(**gate_values)
                    )
                else:
                    connection.execute(
                        MODELS.update()
                        .where(MODELS.c.id == candidate.id)
                        .values(status="rejected", **gate_values)
                    )
                    self._log(connection, candidate.name, candidate.id, "rejected", now, served_id, **event)
            return GateResult(
                entry=self.get(candidate.id),
                promoted=promoted,
                metric=metric,
                score=score,
                baseline_score=baseline,
                baseline_id=served_id,
                reason=reason,
            )
        raise ConflictError(
            f"the served version of {candidate.name!r} changed {GATE_ATTEMPTS} times while gating "
            f"{candidate.label}; try again"
        )

    def promoted(self, name: str | None = None) -> Entry | None:
        """The entry served for ``name`` (optional when the registry holds one name); None if nothing is."""
        name = self._name(name)
        with self.db.engine.connect() as connection:
            row = connection.execute(
                sa.select(MODELS).where(MODELS.c.name == name, MODELS.c.status == "promoted")
            ).first()
        return None if row is None else _entry_from_row(row)

    def rollback(self, to: Entry | int | str | None = None, *, name: str | None = None) -> Entry:
        """Serve ``to`` again: an earlier promoted version (one that was served before and is not now).
        ``to=None``: the version served just before the current one (of ``name``). The files are verified
        first. Returns the entry, now served. ConflictError if ``to`` was never promoted or is served now."""
        if to is None:
            history = self.served_history(name)
            if not history or history[-1].previous_id is None:
                raise ConflictError(f"{self._name(name)!r} has no earlier served version to roll back to")
            target = self.get(history[-1].previous_id)
        else:
            target = self._entry(to)
            if name is not None and _check_name(name) != target.name:
                raise InputError(f"{target.label} is not a version of {name!r}")
        if target.status == "promoted":
            raise ConflictError(f"{target.label} is already the served version")
        with self.db.engine.connect() as connection:
            was_served = connection.execute(
                sa.select(sa.func.count())
                .select_from(EVENTS)
                .where(EVENTS.c.entry_id == target.id, EVENTS.c.event.in_(("promoted", "rollback")))
            ).scalar_one()
        if not was_served:
            raise ConflictError(f"{target.label} was never promoted ({target.status}); gate it instead")
        self.verify(target)
        if target.base_id is not None:
            self.verify(self.get(target.base_id))
        with self.db.begin() as connection:
            self._lock(connection, target.name)
            if self._row(connection, target.id).status == "promoted":
                raise ConflictError(f"{target.label} is already the served version")
            current = _served_id(connection, target.name)
            self._serve(connection, target.name, target.id, current, "rollback", self.clock())
        return self.get(target.id)

    def served_history(self, name: str | None = None) -> list[ServedChange]:
        """Every change of the served version of ``name``, oldest first (promotions and rollbacks)."""
        name = self._name(name)
        query = (
            sa.select(EVENTS, MODELS.c.version)
            .join(MODELS, MODELS.c.id == EVENTS.c.entry_id)
            .where(EVENTS.c.name == name, EVENTS.c.event.in_(("promoted", "rollback")))
            .order_by(EVENTS.c.id)
        )
        with self.db.engine.connect() as connection:
            return [
                ServedChange(
                    name=row.name,
                    entry_id=int(row.entry_id),
                    version=int(row.version),
                    event=row.event,
                    at=float(row.at),
                    user=row.user,
                    previous_id=row.previous_id,
                    score=row.score,
                    baseline_score=row.baseline_score,
                )
                for row in connection.execute(query)
            ]

    # -- loading ------------------------------------------------------------------------------------------
    def load(
        self,
        entry: Entry | int | str | None = None,
        *,
        name: str | None = None,
        merge: bool = True,
        device: str | torch.device = "cpu",
    ) -> FFNModel:
        """The model of ``entry`` (default: the served version of ``name``), in eval mode on ``device``.

        An adapter or fused entry is its base with the adapter applied; with ``merge`` (the default) the
        adapter is folded into the base weights and plain Conv3d layers put back (a model like any other);
        ``merge=False`` keeps the LoRA layers (to train further, or to unmerge). Every file read is checked
        against its sha256 (CorruptDataError). NotFoundError if nothing is served.
        """
        if entry is None:
            target = self.promoted(name)
            if target is None:
                raise NotFoundError(f"no served version of {self._name(name)!r} in the registry")
        else:
            target = self._entry(entry)
        if target.kind == "base":
            model = self._load_base(target)
        else:
            model = self._load_base(self.get(_some(target.base_id)))
            apply_adapter(model, self.adapter(target))
            if merge:
                merge_and_remove_lora(model)
        return model.to(device).eval()

    def adapter(self, entry: Entry | int | str) -> Adapter:
        """The adapter of an adapter or fused entry, read from its verified file."""
        target = self._entry(entry)
        if target.kind == "base":
            raise InputError(f"{target.label} is a base model, not an adapter")
        return load_adapter(self.verify(target))

    def verify(self, entry: Entry | int | str) -> Path:
        """The entry's file, after checking its sha256; NotFoundError if missing, CorruptDataError if the
        bytes differ from what was registered (the message names the file and both checksums)."""
        target = self._entry(entry)
        path = self.weights_dir / target.file
        if not path.is_file():
            raise NotFoundError(f"the weights file of {target.label} is missing: {path}")
        actual, size = _sha256(path)
        if actual != target.sha256:
            raise CorruptDataError(
                f"{path}: sha256 {actual} ({size} bytes) does not match the registered {target.sha256} "
                f"({target.size} bytes) of {target.label}; the file was changed or is corrupt"
            )
        return path

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, entry_id: int) -> Entry:
        """The entry with this id; NotFoundError if there is none."""
        if isinstance(entry_id, bool) or not isinstance(entry_id, int):
            raise InputError(f"a registry entry id must be an integer, got {entry_id!r}")
        with self.db.engine.connect() as connection:
            row = connection.execute(sa.select(MODELS).where(MODELS.c.id == entry_id)).first()
        if row is None:
            raise NotFoundError(f"no entry #{entry_id} in the weights registry")
        return _entry_from_row(row)

    def history(
        self, name: str | None = None, *, kind: Kind | None = None, status: Status | None = None
    ) -> list[Entry]:
        """Every entry (of ``name``, ``kind``, ``status`` where given), oldest first."""
        query = sa.select(MODELS).order_by(MODELS.c.id)
        if name is not None:
            query = query.where(MODELS.c.name == _check_name(name))
        if kind is not None:
            if kind not in ("base", "adapter", "fused"):
                raise InputError(f"kind must be 'base', 'adapter' or 'fused', got {kind!r}")
            query = query.where(MODELS.c.kind == kind)
        if status is not None:
            if status not in ("candidate", "promoted", "rejected", "retired"):
                raise InputError(
                    f"status must be 'candidate', 'promoted', 'rejected' or 'retired', got {status!r}"
                )
            query = query.where(MODELS.c.status == status)
        with self.db.engine.connect() as connection:
            return [_entry_from_row(row) for row in connection.execute(query)]

    def names(self) -> list[str]:
        """The model names in the registry, sorted."""
        with self.db.engine.connect() as connection:
            return sorted(str(n) for n in connection.execute(sa.select(MODELS.c.name).distinct()).scalars())

    def lineage(self, entry: Entry | int | str) -> dict[str, Any]:
        """Where an entry comes from: ``base`` (id), ``parents`` (ids), ``ancestors`` (every entry reached
        through parents and bases, sorted ids), ``edits`` / ``tasks`` (what it was trained on) and
        ``all_edits`` / ``all_tasks`` (with its ancestors')."""
        target = self._entry(entry)
        seen: dict[int, Entry] = {}
        frontier = [*target.parents, *([] if target.base_id is None else [target.base_id])]
        while frontier:
            entry_id = frontier.pop()
            if entry_id in seen:
                continue
            seen[entry_id] = found = self.get(entry_id)
            frontier.extend(found.parents)
            if found.base_id is not None:
                frontier.append(found.base_id)
        everyone = [target, *seen.values()]
        return {
            "id": target.id,
            "name": target.name,
            "version": target.version,
            "kind": target.kind,
            "status": target.status,
            "base": target.base_id,
            "parents": list(target.parents),
            "ancestors": sorted(seen),
            "edits": list(target.trained_on_edits),
            "tasks": list(target.trained_on_tasks),
            "all_edits": sorted({i for e in everyone for i in e.trained_on_edits}),
            "all_tasks": sorted({t for e in everyone for t in e.trained_on_tasks}),
        }

    def trained_on(self, *, edit: int | None = None, task: str | None = None) -> list[Entry]:
        """The entries trained on edit-log id ``edit`` and/or task key ``task`` (directly), oldest first."""
        if edit is None and task is None:
            raise InputError("trained_on needs an edit id or a task key")
        wanted_edit = None if edit is None else _check_edits([edit])[0]
        wanted_task = None if task is None else _check_tasks([task])[0]
        return [
            e
            for e in self.history()
            if (wanted_edit is None or wanted_edit in e.trained_on_edits)
            and (wanted_task is None or wanted_task in e.trained_on_tasks)
        ]

    def dispose(self) -> None:
        """Close the database's pooled connections."""
        self.db.dispose()

    # -- internals --------------------------------------------------------------------------------------
    def _entry(self, ref: Entry | int | str) -> Entry:
        """An entry, re-read from the database: given as an :class:`Entry`, an id or ``"name:vN"``."""
        if isinstance(ref, Entry):
            return self.get(ref.id)
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self.get(ref)
        if isinstance(ref, str):
            match = _REF.match(ref)
            if match is None:
                raise InputError(f"expected a registry entry as an id or 'name:vN', got {ref!r}")
            name, version = match["name"], int(match["version"])
            with self.db.engine.connect() as connection:
                row = connection.execute(
                    sa.select(MODELS).where(MODELS.c.name == name, MODELS.c.version == version)
                ).first()
            if row is None:
                raise NotFoundError(f"no version {version} of {name!r} in the weights registry")
            return _entry_from_row(row)
        raise InputError(f"expected a registry entry, its id or 'name:vN', got {type(ref).__name__}")

    def _name(self, name: str | None) -> str:
        if name is not None:
            return _check_name(name)
        names = self.names()
        if len(names) == 1:
            return names[0]
        if not names:
            raise NotFoundError("the weights registry holds no models yet")
        raise InputError(f"the weights registry holds several models ({', '.join(names)}): pass name=")

    def _base_of(self, ref: Entry | int | str) -> Entry:
        """A base entry: given directly, or by name (the base of the served version)."""
        if isinstance(ref, str) and _NAME.match(ref) and not _REF.match(ref):
            served = self.promoted(ref)
            if served is None:
                raise NotFoundError(f"no model named {ref!r} in the weights registry")
            return served if served.kind == "base" else self.get(_some(served.base_id))
        entry = self._entry(ref)
        if entry.kind != "base":
            raise InputError(f"{entry.label} is not a base model (adapters are added on a base)")
        return entry

    def _check_parents(self, parents: Iterable[Entry | int], name: str) -> tuple[int, ...]:
        if isinstance(parents, str | bytes | Entry) or not isinstance(parents, Iterable):
            raise InputError(f"parents must be a list of entries or ids, got {parents!r}")
        ids: list[int] = []
        for parent in parents:
            entry = self._entry(parent)
            if entry.name != name:
                raise InputError(f"parent {entry.label} is not a version of {name!r}")
            if entry.id not in ids:
                ids.append(entry.id)
        return tuple(ids)

    def _load_base(self, entry: Entry) -> FFNModel:
        return load_model(self.verify(entry))

    def _score(self, evaluate: Evaluate | None, entry: Entry) -> float:
        assert evaluate is not None
        model = self.load(entry)
        with torch.no_grad():
            value = evaluate(model)
        return _finite(value, f"evaluate's score of {entry.label}")

    def _lock(self, connection: Connection, name: str) -> None:
        """Serialise changes to ``name``'s versions (on SQLite, BEGIN IMMEDIATE holds the write lock)."""
        if self.db.dialect == "postgresql":
            key = (1 << 32) + zlib.crc32(f"connectomix-registry:{name}".encode())
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    @staticmethod
    def _row(connection: Connection, entry_id: int) -> Entry:
        row = connection.execute(sa.select(MODELS).where(MODELS.c.id == entry_id)).first()
        if row is None:
            raise NotFoundError(f"no entry #{entry_id} in the weights registry")
        return _entry_from_row(row)

    def _serve(
        self,
        connection: Connection,
        name: str,
        entry_id: int,
        previous_id: int | None,
        event: EventKind,
        at: float,
        **details: Any,
    ) -> None:
        """Serve ``entry_id`` (retiring ``previous_id``) and log it; the caller holds the name's lock."""
        if previous_id is not None:
            connection.execute(MODELS.update().where(MODELS.c.id == previous_id).values(status="retired"))
        connection.execute(MODELS.update().where(MODELS.c.id == entry_id).values(status="promoted"))
        self._log(connection, name, entry_id, event, at, previous_id, **details)

    def _log(
        self,
        connection: Connection,
        name: str,
        entry_id: int,
        event: EventKind,
        at: float,
        previous_id: int | None = None,
        **details: Any,
    ) -> None:
        values = {"name": name, "entry_id": entry_id, "event": event, "at": at, "user": self.user}
        connection.execute(EVENTS.insert().values(previous_id=previous_id, **values, **details))

    def _insert(
        self,
        *,
        kind: Kind,
        name: str,
        write: Callable[[Path], None],
        base_id: int | None,
        parents: tuple[int, ...],
        edits: tuple[int, ...],
        tasks: tuple[str, ...],
        meta: dict[str, Any],
        note: str,
    ) -> Entry:
        """Write the file under a temporary name, then in one transaction record the row and rename the file
        to ``<id>-<sha256>.safetensors``. A first base is served at once."""
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.weights_dir / f".incoming-{uuid.uuid4().hex}.safetensors"
        final: Path | None = None
        try:
            write(tmp)
            digest, size = _sha256(tmp)
            with self.db.begin() as connection:
                self._lock(connection, name)
                latest = connection.execute(
                    sa.select(sa.func.max(MODELS.c.version)).where(MODELS.c.name == name)
                ).scalar()
                now = self.clock()
                row = {
                    "name": name,
                    "version": int(latest or 0) + 1,
                    "kind": kind,
                    "status": "candidate",
                    "file": "",
                    "sha256": digest,
                    "size": size,
                    "created_at": now,
                    "created_by": self.user,
                    "base_id": base_id,
                    "parents": json.dumps(list(parents)),
                    "trained_on_edits": json.dumps(list(edits)),
                    "trained_on_tasks": json.dumps(list(tasks)),
                    "meta": json.dumps(meta, sort_keys=True),
                    "note": note,
                }
                entry_id = int(
                    connection.execute(MODELS.insert().values(row).returning(MODELS.c.id)).scalar_one()
                )
                file = f"{entry_id:06d}-{digest}.safetensors"
                connection.execute(MODELS.update().where(MODELS.c.id == entry_id).values(file=file))
                self._log(connection, name, entry_id, "added", now, detail=kind)
                if kind == "base" and _served_id(connection, name) is None:
                    self._serve(connection, name, entry_id, None, "promoted", now, detail="first base")
                final = self.weights_dir / file
                tmp.replace(final)
        except BaseException:
            for leftover in (tmp, final):
                if leftover is not None:
                    with contextlib.suppress(OSError):
                        leftover.unlink()
            raise
        return self.get(entry_id)


# -- helpers --------------------------------------------------------------------------------------------
def _served_id(connection: Connection, name: str) -> int | None:
    value = connection.execute(
        sa.select(MODELS.c.id).where(MODELS.c.name == name, MODELS.c.status == "promoted")
    ).scalar()
    return None if value is None else int(value)


def _entry_from_row(row: sa.Row[Any]) -> Entry:
    gate = None
    if row.gate_metric is not None:
        gate = GateScores(
            metric=row.gate_metric,
            score=float(row.gate_score),
            baseline_score=None if row.gate_baseline_score is None else float(row.gate_baseline_score),
            baseline_id=row.gate_baseline_id,
            region=json.loads(row.gate_region),
            at=float(row.gated_at),
        )
    return Entry(
        id=int(row.id),
        name=row.name,
        version=int(row.version),
        kind=row.kind,
        status=row.status,
        file=row.file,
        sha256=row.sha256,
        size=int(row.size),
        created_at=float(row.created_at),
        created_by=row.created_by,
        base_id=row.base_id,
        parents=tuple(json.loads(row.parents)),
        trained_on_edits=tuple(json.loads(row.trained_on_edits)),
        trained_on_tasks=tuple(json.loads(row.trained_on_tasks)),
        metadata=json.loads(row.meta),
        note=row.note,
        gate=gate,
    )


def _check_gateable(entry: Entry) -> None:
    if entry.status == "promoted":
        raise ConflictError(f"{entry.label} is already the served version")
    if entry.status == "retired":
        raise ConflictError(f"{entry.label} was served before (retired): use rollback to serve it again")


def _reason(
    metric: str, score: float, baseline: float | None, served: Entry | None, margin: float, promoted: bool
) -> str:
    if baseline is None or served is None:
        return f"{metric} {score:.6g}; nothing was served"
    better = baseline - score
    verdict = "better" if promoted else "not better"
    need = f"more than {margin:g}" if margin else "any"
    return (
        f"{metric} {score:.6g} vs {baseline:.6g} of the served {served.label}: {verdict} "
        f"(improvement {better:.6g}, needed {need})"
    )


def _save_adapter(adapter: Adapter, path: Path) -> None:
    save_adapter(adapter, path)


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _some(value: int | None) -> int:
    if value is None:
        raise CorruptDataError("registry row of an adapter has no base id")
    return value


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            number = float(value)  # type: ignore[arg-type]  # numpy / torch scalars
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a number, got {value!r}") from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {number}")
    return number


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InputError(
            f"a model name must be 1 to {NAME_LENGTH} letters, digits, '_', '-' or '.', got {name!r}"
        )
    return name


def _check_user(user: object) -> str:
    if not isinstance(user, str) or not 0 < len(user) <= USER_LENGTH:
        raise InputError(f"user must be a name of 1 to {USER_LENGTH} characters, got {user!r}")
    return user


def _check_metric(metric: object) -> str:
    if not isinstance(metric, str) or not 0 < len(metric) <= METRIC_LENGTH:
        raise InputError(f"metric must be a name of 1 to {METRIC_LENGTH} characters, got {metric!r}")
    return metric


def _check_note(note: object) -> str:
    if not isinstance(note, str):
        raise InputError(f"note must be a string, got {type(note).__name__}")
    return note


def _check_edits(edits: Iterable[int]) -> tuple[int, ...]:
    if isinstance(edits, str | bytes) or not isinstance(edits, Iterable):
        raise InputError(f"trained_on_edits must be a list of edit ids, got {edits!r}")
    values = list(edits)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"edit ids must be integers >= 0, got {value!r}")
    return tuple(sorted({int(v) for v in values}))


def _check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
        raise InputError(f"trained_on_tasks must be a list of task keys, got {tasks!r}")
    values = list(tasks)
    for value in values:
        if not isinstance(value, str) or not 0 < len(value) <= TASK_LENGTH:
            raise InputError(f"task keys must be strings of 1 to {TASK_LENGTH} characters, got {value!r}")
    return tuple(sorted(set(values)))


def _check_json_mapping(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InputError(f"{what} must be a mapping with string keys, got {value!r}")
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be JSON-able: {exc}") from None


def _region_json(region: object) -> str:
    if isinstance(region, str):
        if not region.strip():
            raise InputError("region must name the held-out validated region, got an empty string")
        return json.dumps(region)
    if isinstance(region, Mapping) and region:
        return json.dumps(_check_json_mapping(region, "region"), sort_keys=True)
    raise InputError(
        f"region must be a string or a non-empty JSON-able mapping (e.g. volume URL and box), got {region!r}"
    )


def _login_name() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError):
        return "unknown"


__all__ = [
    "Entry",
    "GateResult",
    "GateScores",
    "ServedChange",
    "WeightsRegistry",
]
