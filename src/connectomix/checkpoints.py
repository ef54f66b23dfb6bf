"""Resumable training checkpoints on disk, shared by every trainer (FFN, SegCLR encoder, …).

A checkpoint is a folder ``<checkpoint_dir>/step-NNNNNNNN/`` holding ``model.safetensors`` (the weights)
and ``state.pt`` (a dict written with :func:`torch.save`: the trainer's format tag, model config, training
settings, optimiser state and whatever else the trainer needs to continue bit for bit). It is written
under a temporary name and renamed, so a crash never leaves a half-written step folder that looks complete;
only the newest ``keep`` folders are kept. Trainers own what goes in ``state``; this module owns the files.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from connectomix.errors import CorruptDataError, InputError, NotFoundError

STEP_DIR = re.compile(r"^step-(\d{8,})$")


def latest_checkpoint(checkpoint_dir: Path | str) -> Path | None:
    """The newest complete ``step-NNNNNNNN`` folder in ``checkpoint_dir``, or None."""
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


def resume_source(checkpoint_dir: Path | None, resume: bool | Path | str) -> Path | None:
    """Which folder to resume from: ``resume`` False → none, True → the latest in ``checkpoint_dir``, a path →
    that folder (:class:`NotFoundError` if it is not one)."""
    if resume is False:
        return None
    if resume is True:
        return latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    path = Path(resume)
    if not path.is_dir():
        raise NotFoundError(f"no such training checkpoint folder {str(path)!r} (expected a step-NNNNNNNN/)")
    return path


def write_checkpoint(
    checkpoint_dir: Path,
    step: int,
    save_weights: Callable[[Path], Any],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write ``checkpoint_dir/step-NNNNNNNN/`` atomically: ``save_weights(path)`` writes the safetensors file,
    ``state`` goes to ``state.pt``. Older step folders beyond the newest ``keep`` are removed."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step-{step:08d}"
    tmp = checkpoint_dir / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors")
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    found = sorted((int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, old in found[: max(0, len(found) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(
    path: Path | str,
    *,
    format_tag: str,
    what: str,
    config_json: str,
    meta: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``state`` dict and weight tensors of a checkpoint folder, checked against the run resuming it.

    :class:`NotFoundError` when the folder is missing; :class:`CorruptDataError` when a file is missing,
    unreadable or not a ``format_tag`` state (``what`` names the trainer in the message); :class:`InputError`
    when it was written for another model config (``config_json``) or other training settings (``meta``).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_dir():
        raise NotFoundError(f"no such training checkpoint folder {str(path)!r}")
    weights, state_file = path / "model.safetensors", path / "state.pt"
    for f in (weights, state_file):
        if not f.is_file():
            raise CorruptDataError(f"training checkpoint {path} is incomplete: {f.name} is missing")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise CorruptDataError(
            f"training checkpoint {state_file} is unreadable ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != format_tag:
        raise CorruptDataError(f"{state_file} is not a connectomix {what} training state ({format_tag})")
    if state["config"] != config_json:
        raise InputError(
            f"checkpoint {path} was trained with a different model config ({state['config']}), "
            f"not {config_json}"
        )
    if meta is not None and json.loads(state["meta"]) != json.loads(json.dumps(meta)):
        raise InputError(
            f"checkpoint {path} was written with training settings {state['meta']}; this run asks for "
            f"{json.dumps(meta, sort_keys=True)} (use a new checkpoint folder or resume=False)"
        )
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptDataError(f"training checkpoint weights {weights} are unreadable ({exc})") from None
    return state, tensors


def load_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, what: str) -> None:
    r"""Load ``tensors`` into ``model`` (``what`` names it in messages), with one-line :class:`InputError`\ s
    for missing, extra or mis-shaped tensors."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise InputError(f"{source}: missing tensors for the {what}: {', '.join(missing[:6])}")
    if extra:
        raise InputError(f"{source}: tensors the {what} does not have: {', '.join(extra[:6])}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the {what} expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)


def load_optimizer_state(path: Path | str, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore ``opt`` from a checkpoint's state (:class:`InputError` when it does not fit this run)."""
    try:
        opt.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise InputError(f"checkpoint {path}: optimiser state does not fit this run ({exc})") from None


__all__ = [
    "STEP_DIR",
    "latest_checkpoint",
    "load_optimizer_state",
    "load_tensors",
    "read_checkpoint",
    "resume_source",
    "write_checkpoint",
]
