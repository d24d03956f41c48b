"""A pool and connections whose transactions undo, on an exception, the fake repositories' writes."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Callable


class FakeConnection:
    """A connection whose transaction() undoes, when an exception leaves it, the repository writes made
    through it inside it. Writes outside a transaction (the order's side connection) stand at once."""

    def __init__(self, statements: list[str] | None = None) -> None:
        self._undo: list[list[Callable[[], None]]] = []
        self.statements = statements if statements is not None else []

    async def execute(self, query: str, params: object = None) -> None:
        """The one statement service code runs itself, a replay's durability barrier (shop_runtime.idempotency):
        nothing to fake, only kept, so a test can see that a replay passed one."""
        self.statements.append(query)

    @asynccontextmanager
    async def transaction(self):
        self._undo.append([])
        try:
            yield self
        except BaseException:
            for undo in reversed(self._undo.pop()):
                undo()
            raise
        done = self._undo.pop()
        if self._undo:  # a savepoint: its writes are the outer transaction's now
            self._undo[-1].extend(done)

    @asynccontextmanager
    async def pipeline(self):
        """Pipeline mode changes when statements travel, not what they do: nothing to fake."""
        yield self

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Remembers how to undo a write, if a transaction is open."""
        if self._undo:
            self._undo[-1].append(undo)

    async def __aenter__(self) -> "FakeConnection":
        return self

    async def __aexit__(self, *exc) -> None:
        return None


class FakePool:
    """A pool whose connection() yields a new FakeConnection; `side()` stands in for Orders._side. `statements`:
    what service code ran on its connections itself."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @asynccontextmanager
    async def connection(self):
        yield FakeConnection(self.statements)

    async def side(self) -> FakeConnection:
        return FakeConnection()


class Tables:
    """Writes that a FakeConnection's transaction can undo."""

    @staticmethod
    def _put(conn: FakeConnection, table: dict, key, value) -> None:
        had, old = key in table, table.get(key)
        table[key] = value
        conn.on_rollback(lambda: table.__setitem__(key, old) if had else table.pop(key, None))

    @staticmethod
    def _drop(conn: FakeConnection, table: dict, key) -> None:
        if key in table:
            old = table.pop(key)
            conn.on_rollback(lambda: table.__setitem__(key, old))
