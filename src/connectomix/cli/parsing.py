"""Parsing of option values shared by the sub-commands (one-line errors that say what was expected)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from connectomix.errors import InputError
from connectomix.volume.box import Box


def parse_triple(text: str, name: str, minimum: int = 1) -> tuple[int, int, int]:
    """``"Z,Y,X"`` → a (z, y, x) triple of integers ≥ ``minimum``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{name} must be 3 comma-separated integers Z,Y,X, got {text!r}") from None
    if len(values) != 3 or any(v < minimum for v in values):
        raise InputError(f"{name} must be 3 integers Z,Y,X, each at least {minimum}, got {text!r}")
    return values  # type: ignore[return-value]


def parse_box_xyz(text: str, name: str = "--box") -> Box:
    """``"X0,Y0,Z0:X1,Y1,Z1"`` (voxels, x-y-z like Neuroglancer, stop exclusive) → a (z, y, x) Box."""
    try:
        start_text, stop_text = text.split(":")
        start = [int(v) for v in start_text.split(",")]
        stop = [int(v) for v in stop_text.split(",")]
    except ValueError:
        raise InputError(f"{name} must look like X0,Y0,Z0:X1,Y1,Z1 (voxels), got {text!r}") from None
    if len(start) != 3 or len(stop) != 3:
        raise InputError(f"{name} must look like X0,Y0,Z0:X1,Y1,Z1 (voxels), got {text!r}")
    box = Box.from_xyz(start, stop)
    if box.empty:
        raise InputError(f"{name} is empty: {text!r}")
    return box


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


WorkspaceOption = Annotated[
    Path | None, typer.Option("--workspace", help="Workspace directory [CX_WORKSPACE or cx-workspace].")
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL or SQLite file [CX_DATABASE_URL or WORKSPACE/connectomix.db]."),
]


def resolve_workspace_and_db(workspace: Path | None, db: str | None) -> tuple[Path, str]:
    """The workspace directory and database URL in force: options, then settings, then defaults."""
    from connectomix.config import get_settings
    from connectomix.proofread.db import database_url

    settings = get_settings()
    directory = workspace if workspace is not None else settings.workspace
    if db is not None:
        return directory, database_url(db)
    if settings.database_url:
        return directory, settings.database_url
    return directory, database_url(directory / "connectomix.db")
