"""``cx serve`` (the proofreading web app) and ``cx users`` (proofreaders, admins and their API tokens)."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from connectomix.cli.parsing import DbOption, WorkspaceOption, resolve_workspace_and_db
from connectomix.errors import InputError

users_app = typer.Typer(help="Proofreaders and admins: add (prints the API token once), list, revoke.")
console = Console()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_command(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless --allow-remote).")
    ] = "127.0.0.1",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
    edit_log: Annotated[str, typer.Option("--edit-log", help="Name of the edit log to proofread.")] = "seg",
    em: Annotated[
        str | None, typer.Option("--em", help="EM volume URL shown under the segmentation [the log's raw].")
    ] = None,
    lease: Annotated[float, typer.Option(help="Seconds a claimed task is held without a heartbeat.")] = 600.0,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="Allow binding a non-loopback address (trusted networks).")
    ] = False,
) -> None:
    """Serve the proofreading page, its JSON API, the volumes (precomputed) and Neuroglancer."""
    if not 0 < port < 65536:
        raise InputError(f"--port must be 1..65535, got {port}")
    if not is_loopback(host) and not allow_remote:
        raise InputError(
            f"--host {host} is not a loopback address; the volumes are served without a token, so pass "
            f"--allow-remote to serve other machines"
        )
    import uvicorn

    from connectomix.proofread.web import create_app

    directory, url = resolve_workspace_and_db(workspace, db)
    app = create_app(url, directory, edit_log=edit_log, em_url=em, lease_seconds=lease)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"proofreading {edit_log!r} in {directory} at http://{shown}:{port}/ (Ctrl-C stops)")
    # Neuroglancer tabs hold an idle event stream open: do not wait for them on Ctrl-C.
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, _ . -).")],
    role: Annotated[str, typer.Option(help="proofreader or admin.")] = "proofreader",
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Add a user and print their API token (shown this once; only its hash is stored)."""
    from connectomix.proofread.users import Users

    _, url = resolve_workspace_and_db(workspace, db)
    token = Users(url).add(name, role)
    console.print(f"added {role} {name!r}; API token (shown once, keep it secret):", highlight=False)
    print(token)


@users_app.command("list")
def users_list(workspace: WorkspaceOption = None, db: DbOption = None) -> None:
    """List the users, their roles and whether they are revoked."""
    from datetime import UTC, datetime

    from connectomix.proofread.users import Users

    _, url = resolve_workspace_and_db(workspace, db)
    table = Table(title="users")
    for column in ("name", "role", "created (UTC)", "status"):
        table.add_column(column)
    for user in Users(url).list():
        created = datetime.fromtimestamp(user.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(user.name, user.role, created, "revoked" if user.disabled else "active")
    console.print(table)


@users_app.command("revoke")
def users_revoke(
    name: Annotated[str, typer.Argument(help="User whose token stops working.")],
    workspace: WorkspaceOption = None,
    db: DbOption = None,
) -> None:
    """Revoke a user: their token stops working at once."""
    from connectomix.proofread.users import Users

    _, url = resolve_workspace_and_db(workspace, db)
    Users(url).revoke(name)
    console.print(f"revoked {name!r}")


__all__ = ["is_loopback", "serve_command", "users_app"]
