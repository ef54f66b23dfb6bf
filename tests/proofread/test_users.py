"""Users and API tokens: hashed storage, authentication, roles, revocation, and the ``cx users`` commands."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from connectomix.cli.serve import is_loopback, serve_command, users_app
from connectomix.errors import AuthenticationError, ConflictError, InputError, NotFoundError
from connectomix.proofread.db import open_database
from connectomix.proofread.users import USERS, Users, hash_token


def test_add_authenticate_list_revoke(database_url) -> None:
    clock = iter([100.0, 200.0])
    users = Users(database_url, clock=lambda: next(clock))
    alice = users.add("alice", "proofreader")
    root = users.add("root", "admin")
    assert alice != root and len(alice) >= 40
    me = users.authenticate(alice)
    assert (me.name, me.role, me.is_admin, me.created_at) == ("alice", "proofreader", False, 100.0)
    assert users.authenticate(root).is_admin
    assert [u.name for u in users.list()] == ["alice", "root"]
    revoked = users.revoke("alice")
    assert revoked.disabled
    with pytest.raises(AuthenticationError):
        users.authenticate(alice)
    assert users.authenticate(root).name == "root"  # others keep working
    # a second Users over the same database sees the same users (schema created once)
    assert [u.disabled for u in Users(database_url).list()] == [True, False]


def test_tokens_are_stored_only_as_hashes(database_url) -> None:
    users = Users(database_url)
    token = users.add("bob")
    with open_database(database_url).engine.connect() as connection:
        rows = connection.execute(sa.select(USERS)).mappings().all()
    stored = " ".join(str(value) for row in rows for value in row.values())
    assert token not in stored
    assert rows[0]["token_sha256"] == hash_token(token) != token


@pytest.mark.parametrize("token", [None, "", "x" * 43, "y" * 1000])
def test_unknown_or_malformed_tokens_fail(tmp_path, token) -> None:
    users = Users(tmp_path / "cx.db")
    users.add("alice")
    with pytest.raises(AuthenticationError):
        users.authenticate(token)


def test_bad_names_roles_and_duplicates(tmp_path) -> None:
    users = Users(tmp_path / "cx.db")
    users.add("alice")
    with pytest.raises(ConflictError, match="already exists"):
        users.add("alice", "admin")
    for name in ["", " alice", "a/b", "x" * 65, "-dash"]:
        with pytest.raises(InputError):
            users.add(name)
    with pytest.raises(InputError, match="role"):
        users.add("carol", "superuser")
    with pytest.raises(NotFoundError):
        users.revoke("nobody")
    with pytest.raises(NotFoundError):
        users.get("nobody")


def test_cli_add_list_revoke(tmp_path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "cx.db")
    result = runner.invoke(users_app, ["add", "alice", "--role", "admin", "--db", db])
    assert result.exit_code == 0, result.output
    token = result.output.strip().splitlines()[-1]
    assert Users(db).authenticate(token).role == "admin"
    result = runner.invoke(users_app, ["list", "--db", db])
    assert result.exit_code == 0 and "alice" in result.output and "active" in result.output
    result = runner.invoke(users_app, ["revoke", "alice", "--db", db])
    assert result.exit_code == 0, result.output
    with pytest.raises(AuthenticationError):
        Users(db).authenticate(token)
    result = runner.invoke(users_app, ["add", "bob", "--role", "boss", "--db", db])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)


def test_serve_refuses_non_loopback_hosts_without_allow_remote(tmp_path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(InputError, match="allow-remote"):
        serve_command(host="0.0.0.0", workspace=tmp_path, db=str(tmp_path / "cx.db"))
