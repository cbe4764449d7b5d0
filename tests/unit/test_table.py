"""How a failed Delta commit is told apart: another writer first (a conflict: plan again)
or the store failing (an error). Commits against real tables: tests/integration/
test_tables.py."""

import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import Transaction

from rayops.data import table as delta
from rayops.errors import StorageError
from rayops.storage import resolve


class _Refusing:
    """A table whose commit fails with delta-rs' ``message``."""

    def __init__(self, message: str) -> None:
        self.message = message

    def version(self) -> int:
        return 3

    def create_write_transaction(self, *args, **kwargs) -> None:
        raise CommitFailedError(self.message)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Metadata changed since last commit", delta.CommitConflict),  # both created the table
        ("Concurrent append failed", delta.CommitConflict),
        ("Version 4 already exists", delta.CommitConflict),
        ("Invalid JSON in log record", StorageError),
    ],
)
def test_another_writer_first_is_a_conflict_anything_else_an_error(tmp_path, message, kind):
    with pytest.raises(
        kind, match="after version 3" if kind is delta.CommitConflict else "cannot commit to"
    ):
        delta.commit(
            resolve(str(tmp_path)),
            _Refusing(message),
            [],
            mode="append",
            schema=pa.schema([("x", pa.int64())]),
            partition_by=[],
            metadata={},
            transaction=Transaction("rayops", 1),
        )
