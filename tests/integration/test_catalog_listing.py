"""The listing's ways to find a page against real Postgres (a search's sort index walked, or all its matches sorted;
without a search, the page's SKUs from the index first): each gives exactly the page of the plain ordered query."""

import asyncio

import psycopg
import pytest
from psycopg import sql

from catalog_svc import repository
from catalog_svc.query import parse_list_query
from devstack.postgres import create_database, dsn_for
from devstack.prepare import prepare

SEARCHES = ("", "a", "wireless", "mous", "cotton tee", "s", "organic")
ORDERS = [(by, d) for by in ("price", "sales", "name", "newest") for d in ("asc", "desc")]


@pytest.fixture(scope="module")
def demo_dsn(pg_admin_dsn):
    """A database of its own with the demo catalog (2,400 products), shared by the module's tests."""
    dsn = dsn_for(pg_admin_dsn, create_database(pg_admin_dsn))
    asyncio.run(prepare(dsn))
    return dsn


async def every_match(conn, query) -> list[str]:
    """All matches in the asked order, by the plain query the strategies must agree with."""
    where, params = repository._filters(query)
    order = sql.SQL("ORDER BY {key} {dir}, sku ASC").format(
        key=repository._SORT_EXPRESSIONS[query.sort_by], dir=sql.SQL("DESC" if query.descending else "ASC"))
    cur = await conn.execute(sql.SQL("SELECT sku FROM catalog.products{where} {order}").format(where=where, order=order),
                             params)
    return [sku for (sku,) in await cur.fetchall()]


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("category", ["", "electronic"])
async def test_both_ways_give_the_page_of_the_plain_query(demo_dsn, monkeypatch, search, category):
    async with await psycopg.AsyncConnection.connect(demo_dsn) as conn:
        for by, d in ORDERS:
            first = parse_list_query(page=None, limit=7, sort_by=by, sort_dir=d, category=category, search=search)
            expected = await every_match(conn, first)
            total = await repository.count_products(conn, first)
            assert total == len(expected)
            last_page = max(1, -(-total // 7))
            for page in sorted({1, 2, last_page // 2 or 1, last_page}):
                query = parse_list_query(page=page, limit=7, sort_by=by, sort_dir=d, category=category, search=search)
                want = expected[query.offset:query.offset + query.limit]
                for few in (0, 10**9):  # every count taken as many matches (index walked), then as few (sorted)
                    monkeypatch.setattr(repository, "FEW_MATCHES", few)
                    got = [r.sku for r in await repository.list_page(conn, query, total)]
                    assert got == want, (search, category, by, d, page, few)
