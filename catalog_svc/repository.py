"""The catalog's SQL, over the `catalog` schema only."""

from __future__ import annotations

from psycopg import AsyncConnection, sql

from catalog_svc.model import ProductRow
from catalog_svc.query import ListQuery, prefix_tsquery

# Sort keys of the API to SQL expressions; each has an index ending in sku for the tie-break.
# Names compare lower-cased and byte-wise (C collation), so the order never depends on the server locale.
_SORT_EXPRESSIONS = {
    "sales": sql.SQL("sales"),
    "price": sql.SQL("price"),
    "name": sql.SQL("lower(name) COLLATE \"C\""),
    "newest": sql.SQL("created_at"),
}

_COLUMNS = sql.SQL("sku, name, description, category, price, sales")


def _filters(query: ListQuery) -> tuple[sql.Composable, list]:
    clauses: list[sql.Composable] = []
    params: list = []
    if query.category is not None:
        clauses.append(sql.SQL("category = %s"))
        params.append(query.category)
    if query.words:
        clauses.append(sql.SQL("search @@ to_tsquery('simple', %s)"))
        params.append(prefix_tsquery(query.words))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
    return where, params


async def category_exists(conn: AsyncConnection, slug: str) -> bool:
    """True when the category is known."""
    cur = await conn.execute("SELECT 1 FROM catalog.categories WHERE slug = %s", (slug,))
    return await cur.fetchone() is not None


async def list_products(conn: AsyncConnection, query: ListQuery) -> tuple[list[ProductRow], int]:
    """One page of matches in the asked order, ties broken by ascending sku, and the count of all matches."""
    where, params = _filters(query)
    direction = sql.SQL("DESC" if query.descending else "ASC")
    page_sql = sql.SQL("SELECT {cols} FROM catalog.products{where} ORDER BY {key} {dir}, sku ASC LIMIT %s OFFSET %s").format(
        cols=_COLUMNS, where=where, key=_SORT_EXPRESSIONS[query.sort_by], dir=direction
    )
    cur = await conn.execute(page_sql, [*params, query.limit, query.offset])
    rows = [ProductRow(*r) for r in await cur.fetchall()]
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM catalog.products{where}").format(where=where), params)
    (total,) = await cur.fetchone()
    return rows, total


async def get_products(conn: AsyncConnection, skus: list[str]) -> list[ProductRow]:
    """The products among `skus` that exist."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols} FROM catalog.products WHERE sku = ANY(%s)").format(cols=_COLUMNS), (skus,)
    )
    return [ProductRow(*r) for r in await cur.fetchall()]


async def record_sales(conn: AsyncConnection, order_id: str, lines: list[tuple[str, int]]) -> bool:
    """Adds an order's units to units sold, and keeps them per SKU in sales_lines, unless the order was
    counted before; True if it was counted now. A SKU named twice counts the sum of its quantities."""
    cur = await conn.execute(
        "INSERT INTO catalog.sales_recorded (order_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING 1", (order_id,))
    if await cur.fetchone() is None:
        return False
    units: dict[str, int] = {}
    for sku, qty in lines:
        units[sku] = units.get(sku, 0) + qty
    # Summed per SKU first: sales_lines keeps one row per SKU, and an UPDATE ... FROM applies only one of
    # several rows matching the same product. The counts grow by exactly the lines written.
    await conn.execute(
        """
        WITH added AS (
            INSERT INTO catalog.sales_lines (order_id, sku, qty)
            SELECT %s, sku, qty FROM unnest(%s::text[], %s::int[]) AS l(sku, qty)
            RETURNING sku, qty
        )
        UPDATE catalog.products p SET sales = p.sales + a.qty FROM added a WHERE p.sku = a.sku
        """,
        (order_id, list(units), list(units.values())),
    )
    return True
