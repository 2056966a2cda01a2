"""Group commit of concurrent submissions in one process: the prompts that arrive while a commit is
under way are inserted together, in the next transaction, so N concurrent submissions cost one
transaction (one write lock, one commit) instead of N.

No thread of its own and no timer, so a lone submission waits for nothing: the first submitter to
find no commit under way leads, commits what is queued (its own row included), and hands the lead
to the first submitter still waiting. A submitter returns once its own row is committed: an
accepted prompt is durable, as before. When a group's transaction fails (a duplicate prompt_id
committed meanwhile by another process), each of its rows is tried alone, so one submitter's
conflict never refuses another's prompt.

Written here, not taken from a library: SQLAlchemy and the drivers commit per transaction, and the
hand-off between request threads is a few lines.
"""

from __future__ import annotations

import threading

from farm.db.clock import db_now
from farm.db.direct_insert import DirectInsert, DirectWriter
from farm.db.models import Prompt
from farm.db.numbers import DirectNumbers

MAX_GROUP = 64  # rows per transaction: bounds how long one commit holds the write lock


class _Pending:
    __slots__ = ("row", "needs_number", "front", "done", "lead", "error")

    def __init__(self, row: dict, needs_number: bool, front: bool):
        self.row, self.needs_number, self.front = row, needs_number, front
        self.done = threading.Event()
        self.lead = False  # set with `done` when this submitter is to lead the next group
        self.error: BaseException | None = None


class GroupCommit:
    def __init__(self, database, max_group: int = MAX_GROUP):
        self.database = database
        self.max_group = max_group
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self.transactions = 0  # committed or not: how many groups were written (tests, benches)
        # Straight to the driver on a connection of its own (farm.db.direct_insert): SQLAlchemy's
        # per-execution work cost more than the insert and the commit together.
        self._writer = DirectWriter(database)
        self._numbers = DirectNumbers(database.engine.dialect)
        self._inserts: dict[frozenset, DirectInsert] = {}

    def insert(self, row: dict, *, number: bool, front: bool = False) -> None:
        """Insert one prompts row and return once it is committed. With `number`, the row gets
        the next prompt number (negated for `front`) in row["number"]. Raises what its own insert
        raised (IntegrityError for a prompt_id already stored)."""
        pending = _Pending(row, number, front)
        with self._lock:
            self._queue.append(pending)
            lead = not self._leading
            self._leading = True
        if not lead:
            pending.done.wait()
            if not pending.lead:
                if pending.error is not None:
                    raise pending.error
                return
        self._lead()
        if pending.error is not None:
            raise pending.error

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue[:self.max_group], self._queue[self.max_group:]
        try:
            self._commit(group)
        finally:
            with self._lock:
                following = self._queue[0] if self._queue else None
                self._leading = following is not None
            for pending in group:
                pending.done.set()
            if following is not None:  # the next group is led by its first submitter
                following.lead = True
                following.done.set()

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self._write(group)
        except Exception as error:  # noqa: BLE001 - decided per row below
            if len(group) == 1:
                group[0].error = error
                return
            for pending in group:  # alone, so that a conflict refuses its own prompt only
                try:
                    self._write([pending])
                except Exception as alone:  # noqa: BLE001 - handed to its submitter
                    pending.error = alone

    def _write(self, group: list[_Pending]) -> None:
        self.transactions += 1
        with self._writer.transaction() as cursor:
            wanting = [pending for pending in group if pending.needs_number]
            if wanting:
                for pending, taken in zip(wanting, self._numbers.take(cursor, len(wanting))):
                    pending.row["number"] = -taken if pending.front else taken
            by_keys: dict[frozenset, list[dict]] = {}
            for pending in group:
                by_keys.setdefault(frozenset(pending.row), []).append(pending.row)
            for keys, rows in by_keys.items():
                statement = self._insert_for(keys)
                cursor.executemany(statement.sql, [statement.parameters(row) for row in rows])

    def _insert_for(self, keys: frozenset) -> DirectInsert:
        statement = self._inserts.get(keys)
        if statement is None:
            # Accepted at the database's time, the clock every other prompt time is judged by.
            statement = DirectInsert(self.database.engine.dialect, Prompt.__table__, sorted(keys),
                                     {"created_at": db_now()})
            self._inserts[keys] = statement
        return statement

    def close(self) -> None:
        """Give back the connection kept for submissions."""
        self._writer.close()
