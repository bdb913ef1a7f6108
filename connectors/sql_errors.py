"""What a SQL database's errors mean for a run: worth a retry, a record's refusal, and words without values."""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc


def transient(error: BaseException) -> bool:
    """A lost or refused connection: worth another try. Anything the statement itself caused is not."""
    return isinstance(error, sa_exc.DBAPIError) and (
        error.connection_invalidated or isinstance(error, sa_exc.OperationalError))


# SQLSTATE classes whose PostgreSQL messages name identifiers only (integrity, access, connection, transaction,
# resources, operator intervention); data exceptions (22) and raised exceptions (P0) quote values
_NAMES_ONLY = ("08", "23", "40", "42", "53", "55", "57")


def refused_by_a_record(error: sa_exc.DBAPIError) -> bool:
    """Whether some record of the batch made the store refuse it (so that a smaller batch may pass).

    Integrity and data errors, and errors a trigger raised; not errors of the statement itself (a missing
    column, a denied privilege), which every smaller batch would meet again.
    """
    if isinstance(error, sa_exc.IntegrityError | sa_exc.DataError):
        return True
    diag = getattr(error.orig, "diag", None)
    return diag is not None and bool(diag.sqlstate) and raised_by_user_code(diag)


def raised_by_user_code(diag: Any) -> bool:
    """Whether PostgreSQL raised this error on behalf of a procedural language (RAISE in PL/pgSQL, plpy.error…).

    Only the server's own errors have trustworthy fields: user code sets SQLSTATE, message, column, constraint and
    table to anything, values included. The server says where it raised the error: pl_exec.c, plpy_*.c, plperl.c.
    """
    source = diag.source_file or ""
    return source.startswith("pl") or not source  # no source at all: nothing vouches for the fields


def db_error(error: BaseException | None) -> str:
    """A driver error in words that name identifiers and never a value: PostgreSQL's structured diagnostics."""
    if error is None:
        return "unknown error"
    name = type(error).__name__
    diag = getattr(error, "diag", None)
    if diag is not None and diag.sqlstate and raised_by_user_code(diag):
        # a trigger or function chose this error: its SQLSTATE, message and fields are free text
        return f"{name} (SQLSTATE {diag.sqlstate}) raised by a trigger or function"
    if diag is not None and diag.sqlstate:
        table = ".".join(part for part in (diag.schema_name, diag.table_name) if part)
        named = [f"{what} {value}" for what, value in (("table", table), ("column", diag.column_name),
                                                          ("constraint", diag.constraint_name),
                                                          ("type", diag.datatype_name)) if value]
        words = diag.message_primary if diag.sqlstate[:2] in _NAMES_ONLY and diag.message_primary else ""
        return f"{name} (SQLSTATE {diag.sqlstate})" + (f": {words}" if words else "") + \
            (f" [{', '.join(named)}]" if named else "")
    if diag is not None or type(error).__module__ == "sqlite3":
        # a connection-level psycopg error (hosts and ports), or SQLite's own words (identifiers only)
        text = str(error).splitlines()
        return f"{name}: {text[0].strip()}" if text else name
    return name  # another driver: its text may quote values
