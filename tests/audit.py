"""The suite audit (suite_audit) of a test's database, callable from sync and async tests alike."""

from __future__ import annotations

import asyncio
import concurrent.futures

import psycopg

from suite_audit.checks import audit_suite


async def _audit_of(dsn: str) -> list[str]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await audit_suite(conn)


def audit_dsn(dsn: str) -> list[str]:
    """`audit_suite` of the database of `dsn`, for tests: callable from sync and async code alike."""
    # Its own thread and event loop, so a caller already inside a running loop can wait for it.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(_audit_of(dsn))).result()
