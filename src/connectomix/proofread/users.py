"""Proofreaders and admins with API tokens (schema component ``users`` in the workspace database).

A token is ``secrets.token_urlsafe(32)``: it is shown once, when the user is added, and never stored; the
table keeps its SHA-256 hex digest. :meth:`Users.authenticate` hashes the presented token, looks the digest
up and compares it with :func:`hmac.compare_digest`. Revoked (disabled) users cannot authenticate.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from connectomix.errors import AuthenticationError, ConflictError, InputError, NotFoundError
from connectomix.proofread.db import Database, open_database

Role = Literal["proofreader", "admin"]
ROLES: tuple[str, ...] = get_args(Role)

#: user names: letters, digits, ``_``, ``.``, ``-``; 1 to 64 characters, starting with a letter or digit.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

_METADATA = sa.MetaData()
USERS = sa.Table(
    "cx_users",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_sha256", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
)


def _create_users(connection: Connection) -> None:
    USERS.create(connection, checkfirst=True)


MIGRATIONS = [_create_users]


@dataclass(frozen=True)
class User:
    """A proofreader or admin. ``created_at`` is unix seconds."""

    name: str
    role: Role
    created_at: float
    disabled: bool = False

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "disabled": self.disabled,
        }


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    """Validate a user name (see :data:`NAME_PATTERN`); returns it. Raises InputError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(
            f"user name must be 1-64 letters, digits, '_', '.' or '-' starting with a letter or digit, "
            f"got {name!r}"
        )
    return name


def check_role(role: str) -> Role:
    """Validate a role (``proofreader`` or ``admin``); returns it. Raises InputError."""
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


class Users:
    """The users of a workspace database (creates the ``users`` schema on first use)."""

    def __init__(
        self, db: Database | str | Path | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = open_database(db)
        self.clock = clock
        self.db.ensure_schema("users", MIGRATIONS)

    def add(self, name: str, role: str = "proofreader") -> str:
        """Add a user; returns the new API token (the only time it is ever shown).

        Raises InputError for a bad name or role and ConflictError when the name is taken.
        """
        check_name(name)
        role = check_role(role)
        token = secrets.token_urlsafe(32)
        with self.db.begin() as connection:
            if connection.execute(sa.select(USERS.c.id).where(USERS.c.name == name)).first() is not None:
                raise ConflictError(f"user {name!r} already exists; pick another name or revoke it first")
            connection.execute(
                USERS.insert().values(
                    name=name,
                    role=role,
                    token_sha256=hash_token(token),
                    created_at=self.clock(),
                    disabled=False,
                )
            )
        return token

    def authenticate(self, token: str | None) -> User:
        """The enabled user holding ``token``; AuthenticationError for a missing, unknown or revoked token."""
        if not token or not isinstance(token, str) or len(token) > 512:
            raise AuthenticationError("missing or malformed API token (send 'Authorization: Bearer TOKEN')")
        digest = hash_token(token)
        with self.db.engine.connect() as connection:
            rows = connection.execute(sa.select(USERS).where(USERS.c.token_sha256 == digest)).mappings().all()
        for row in rows:
            if hmac.compare_digest(str(row["token_sha256"]), digest) and not row["disabled"]:
                return _user(row)
        raise AuthenticationError("unknown or revoked API token")

    def get(self, name: str) -> User:
        """The user called ``name`` (enabled or not); NotFoundError if there is none."""
        with self.db.engine.connect() as connection:
            row = connection.execute(sa.select(USERS).where(USERS.c.name == name)).mappings().first()
        if row is None:
            raise NotFoundError(f"no user {name!r} (see `cx users list`)")
        return _user(row)

    def list(self) -> builtins.list[User]:
        """Every user, revoked ones included, by name."""
        with self.db.engine.connect() as connection:
            rows = connection.execute(sa.select(USERS).order_by(USERS.c.name)).mappings().all()
        return [_user(row) for row in rows]

    def revoke(self, name: str) -> User:
        """Disable ``name``: its token stops working at once. NotFoundError for an unknown user."""
        with self.db.begin() as connection:
            result = connection.execute(USERS.update().where(USERS.c.name == name).values(disabled=True))
            if result.rowcount == 0:
                raise NotFoundError(f"no user {name!r} to revoke (see `cx users list`)")
        return self.get(name)


def _user(row: sa.RowMapping) -> User:
    return User(
        name=str(row["name"]),
        role=check_role(str(row["role"])),
        created_at=float(row["created_at"]),
        disabled=bool(row["disabled"]),
    )


__all__ = ["ROLES", "Role", "User", "Users", "check_name", "check_role", "hash_token"]
