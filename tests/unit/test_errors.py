"""The error hierarchy and the SQLSTATE mapping (contract §6)."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from aiecs_persistence import (
    DatabaseError,
    ErrorCode,
    InvalidTransitionError,
    PersistenceError,
    QueryTimeoutError,
    RetryExhaustedError,
    SchemaMismatchError,
    ValidationError,
)
from aiecs_persistence.errors import mask_password
from aiecs_persistence.sqlstates import is_transient, translate


def test_hierarchy_and_codes():
    assert issubclass(InvalidTransitionError, ValidationError)
    assert issubclass(SchemaMismatchError, DatabaseError)
    for cls, code in [(ValidationError, "E001"), (InvalidTransitionError, "E001"),
                      (QueryTimeoutError, "E002"), (RetryExhaustedError, "E005"),
                      (DatabaseError, "E006"), (SchemaMismatchError, "E006")]:
        assert issubclass(cls, PersistenceError)
        assert cls("x").code is ErrorCode(code)


class Diag:
    def __init__(self, **kw):
        self.message_primary = kw.get("primary")
        self.constraint_name = kw.get("constraint")
        self.column_name = kw.get("column")
        self.message_detail = kw.get("detail")


class FakeDriverError(psycopg.DatabaseError):
    """A psycopg error as the server would raise it, with its SQLSTATE and diagnostics."""

    def __init__(self, sqlstate, **kw):
        super().__init__(kw.get("primary", "boom"))
        self.sqlstate = sqlstate
        self._fake_diag = Diag(**kw)

    @property
    def diag(self):
        return self._fake_diag


OperationalError = psycopg.OperationalError


@pytest.mark.parametrize(("state", "cls"), [
    ("23514", ValidationError), ("23502", ValidationError), ("22P02", ValidationError),
    ("AE001", InvalidTransitionError), ("57014", QueryTimeoutError),
    ("55P03", QueryTimeoutError), ("40001", RetryExhaustedError),
    ("40P01", RetryExhaustedError), ("57P01", RetryExhaustedError),
    ("08006", RetryExhaustedError), ("42P01", DatabaseError), ("XX000", DatabaseError),
])
def test_sqlstate_mapping(state, cls):
    err = translate(FakeDriverError(state), operation="save")
    assert type(err) is cls
    assert err.sqlstate == state


def test_constraint_and_transition_are_carried():
    err = translate(FakeDriverError(
        "23514", primary='new row violates check constraint "ck_task_history_error_pair"',
        constraint="ck_task_history_error_pair"))
    assert err.constraint == "ck_task_history_error_pair"
    assert "ck_task_history_error_pair" in str(err)
    t = translate(FakeDriverError("AE001", primary="illegal transition: completed -> running",
                                  detail="tasks.status cannot move from completed to running"))
    assert isinstance(t, InvalidTransitionError)
    assert (t.from_status, t.to_status) == ("completed", "running")


def test_sqlalchemy_wrapper_is_unwrapped():
    def Wrapper(orig):
        return sa.exc.DBAPIError("SELECT 1", None, orig)

    assert isinstance(translate(Wrapper(FakeDriverError("57014"))), QueryTimeoutError)
    assert is_transient(Wrapper(OperationalError("server closed the connection")))
    assert not is_transient(Wrapper(FakeDriverError("23505")))


@pytest.mark.parametrize("text", [
    "postgresql://bob:s3cr3t@db:5432/x failed",
    "postgresql+psycopg://bob:s3cr3t@db/x",
    "host=db password=s3cr3t user=bob",
    "host=db password='s3 cr3t' user=bob",
])
def test_passwords_are_masked(text):
    masked = mask_password(text)
    assert "s3cr3t" not in masked and "s3 cr3t" not in masked
    assert "***" in masked
    assert "s3cr3t" not in str(DatabaseError(text)) and "s3cr3t" not in repr(DatabaseError(text))
