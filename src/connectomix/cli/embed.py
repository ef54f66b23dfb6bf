"""``cx embed``: morphology embeddings (SegCLR-compatible): convert between formats, train, run."""

from __future__ import annotations

import typer

embed_app = typer.Typer(help="Morphology embeddings (SegCLR-compatible): convert, train, run.")
