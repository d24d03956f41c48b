"""The catalog's SQL, over the `catalog` schema only."""

from __future__ import annotations

from psycopg import AsyncConnection, sql

from catalog_svc.model import ProductChange, ProductRow
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
_COLUMNS_OF_P = sql.SQL("p.sku, p.name, p.description, p.category, p.price, p.sales")


def _filters(query: ListQuery) -> tuple[sql.Composable, list]:
    # Listed products only: the listing's indexes hold only those (migration 0005), so `listed` is written as
    # their predicate is, for the planner to use them.
    clauses: list[sql.Composable] = [sql.SQL("listed")]
    params: list = []
    if query.category is not None:
        clauses.append(sql.SQL("category = %s"))
        params.append(query.category)
    if query.words:
        clauses.append(sql.SQL("search @@ to_tsquery('simple', %s)"))
        params.append(prefix_tsquery(query.words))
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


async def category_exists(conn: AsyncConnection, slug: str) -> bool:
    """True when the category is known."""
    cur = await conn.execute("SELECT 1 FROM catalog.categories WHERE slug = %s", (slug,))
    return await cur.fetchone() is not None


# Up to this many matches of a search, a page is cut from all of them sorted in memory (a bitmap scan of the
# search index, then a top-N sort: under 2 ms); past it, from the sort key's index, filtering as it goes, which
# meets a page's worth of matches within a few times the page (`search=a`: 0.03 ms, where sorting its 100,000
# matches takes 100 ms). The planner cannot choose between them itself: its statistics do not say where along
# a sort key the matches lie, and for `search=mous` by descending price (mice are cheap, so the index walks
# 29,000 rows before the first mouse) it took the index: 32 ms on 100,000 products instead of 1 ms.
FEW_MATCHES = 5000


async def count_products(conn: AsyncConnection, query: ListQuery) -> int:
    """The number of products matching `query`'s filters, over all pages."""
    where, params = _filters(query)
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM catalog.products{where}").format(where=where), params)
    row = await cur.fetchone()
    # count(*) without GROUP BY always returns exactly one row, even when nothing matches.
    assert row is not None
    (total,) = row
    return total


async def list_page(conn: AsyncConnection, query: ListQuery, total: int) -> list[ProductRow]:
    """One page of the `total` matches of `query`, in the asked order, ties broken by ascending sku."""
    where, params = _filters(query)
    key, direction = _SORT_EXPRESSIONS[query.sort_by], sql.SQL("DESC" if query.descending else "ASC")
    sort = sql.SQL("ORDER BY {key} {dir}, sku ASC").format(key=key, dir=direction)
    order = sort + sql.SQL(" LIMIT %s OFFSET %s")
    if not query.words:
        # The page's SKUs first, from the sort key's index alone (an index-only scan: no row is read to be
        # skipped), then only the page's rows: a deep page no longer reads every row before it
        # (sortBy=sales, page 500: 126 ms, now 22 ms). Name order gains nothing: Postgres reads no expression
        # index (lower(name)) without its rows.
        page_sql = sql.SQL(
            "SELECT {cols} FROM catalog.products WHERE sku IN"
            " (SELECT sku FROM catalog.products{where} {order}) {sort}")
    elif total <= FEW_MATCHES:
        # Only each match's SKU and sort key are kept and sorted, then the page's rows read by SKU: copying
        # whole rows (descriptions) for every match cost a fifth more.
        page_sql = sql.SQL(
            "WITH matches AS MATERIALIZED (SELECT sku, {key} AS sort_key FROM catalog.products{where})"
            " SELECT {p_cols} FROM catalog.products p JOIN (SELECT sku, sort_key FROM matches"
            " ORDER BY sort_key {dir}, sku ASC LIMIT %s OFFSET %s) page ON page.sku = p.sku"
            " ORDER BY page.sort_key {dir}, p.sku ASC")
    else:
        page_sql = sql.SQL("SELECT {cols} FROM catalog.products{where} {order}")
    cur = await conn.execute(page_sql.format(cols=_COLUMNS, p_cols=_COLUMNS_OF_P, where=where, order=order, sort=sort,
                                             key=key, dir=direction),
                             [*params, query.limit, query.offset])
    return [ProductRow(*r) for r in await cur.fetchall()]


async def get_products(conn: AsyncConnection, skus: list[str], *, unlisted: bool = False) -> list[ProductRow]:
    """The listed products among `skus`; with `unlisted`, the unlisted ones too (each row says which it is)."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols}, listed FROM catalog.products WHERE sku = ANY(%s){only_listed}").format(
            cols=_COLUMNS, only_listed=sql.SQL("" if unlisted else " AND listed")), (skus,)
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


# The merchant's changes (catalog_svc.admin): each writes the product and its catalog.product_changes row in one
# statement or one transaction, the fields before and after as JSON objects of the managed fields.

IDEMPOTENCY_TABLE = sql.Identifier("catalog", "idempotency_keys")


def _fields_json(prefix: str) -> str:
    return (f"jsonb_build_object('name', {prefix}.name, 'description', {prefix}.description, 'category',"
            f" {prefix}.category, 'price', {prefix}.price, 'listed', {prefix}.listed)")


async def add_categories(conn: AsyncConnection, slugs: list[str]) -> None:
    """Makes the categories of `slugs` that do not exist yet, each named after its slug ("home-office": "Home
    Office", as the demo's are); in slug order, so concurrent calls wait for each other in one order."""
    unique = sorted(set(slugs))
    await conn.execute(
        "INSERT INTO catalog.categories (slug, name) SELECT * FROM unnest(%s::text[], %s::text[]) ORDER BY 1"
        " ON CONFLICT DO NOTHING",
        (unique, [s.replace("-", " ").title() for s in unique]))


async def insert_product(conn: AsyncConnection, row: ProductRow, actor: str) -> bool:
    """Creates the product and records its creation by `actor`; False (and nothing written) when the SKU exists."""
    cur = await conn.execute(
        f"""
        WITH created AS (
            INSERT INTO catalog.products (sku, name, description, category, price) VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (sku) DO NOTHING
            RETURNING sku, name, description, category, price, listed
        )
        INSERT INTO catalog.product_changes (sku, actor, action, after)
        SELECT created.sku, %s, 'create', {_fields_json('created')} FROM created
        RETURNING 1
        """,
        (row.sku, row.name, row.description, row.category, row.price, actor))
    return await cur.fetchone() is not None


async def lock_product(conn: AsyncConnection, sku: str) -> ProductRow | None:
    """The product, listed or not, locked until the transaction ends; None when the SKU is unknown."""
    cur = await conn.execute(
        sql.SQL("SELECT {cols}, listed FROM catalog.products WHERE sku = %s FOR UPDATE").format(cols=_COLUMNS), (sku,))
    row = await cur.fetchone()
    return None if row is None else ProductRow(*row)


async def update_product(conn: AsyncConnection, row: ProductRow, actor: str) -> None:
    """Writes the managed fields of `row` (locked by lock_product) and records the change by `actor`."""
    await conn.execute(
        f"""
        WITH changed AS (
            UPDATE catalog.products p SET name = %s, description = %s, category = %s, price = %s, listed = %s
            WHERE sku = %s
            RETURNING p.sku, {_fields_json('old')} AS before, {_fields_json('new')} AS after
        )
        INSERT INTO catalog.product_changes (sku, actor, action, before, after)
        SELECT sku, %s, 'update', before, after FROM changed
        """,
        (row.name, row.description, row.category, row.price, row.listed, row.sku, actor))


async def upsert_products(conn: AsyncConnection, rows: list[ProductRow], actor: str) -> int:
    """Creates the products of `rows` (distinct SKUs) that do not exist and sets the managed fields (but `listed`)
    of those that do, recording each product created or changed by `actor` with its fields before; a product
    whose fields already are those given is neither written nor recorded. Returns how many were created.

    One statement: Postgres 18's RETURNING old/new gives each row's fields before and after as written, however
    many transactions write the same products at once. Rows go in in SKU order, so two batches sharing SKUs
    wait for each other in one order and cannot deadlock."""
    cur = await conn.execute(
        f"""
        WITH written AS (
            INSERT INTO catalog.products AS p (sku, name, description, category, price)
            SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[]) ORDER BY 1
            ON CONFLICT (sku) DO UPDATE
                SET name = excluded.name, description = excluded.description, category = excluded.category,
                    price = excluded.price
                WHERE (p.name, p.description, p.category, p.price)
                    IS DISTINCT FROM (excluded.name, excluded.description, excluded.category, excluded.price)
            RETURNING new.sku, old.sku IS NULL AS created,
                      CASE WHEN old.sku IS NULL THEN NULL ELSE {_fields_json('old')} END AS before,
                      {_fields_json('new')} AS after
        ), recorded AS (
            INSERT INTO catalog.product_changes (sku, actor, action, before, after)
            SELECT sku, %s, 'upsert', before, after FROM written
        )
        SELECT count(*) FILTER (WHERE created) FROM written
        """,
        ([r.sku for r in rows], [r.name for r in rows], [r.description for r in rows], [r.category for r in rows],
         [r.price for r in rows], actor))
    row = await cur.fetchone()
    assert row is not None  # an aggregate without GROUP BY answers one row
    return row[0]


async def product_exists(conn: AsyncConnection, sku: str) -> bool:
    """True when the catalog has the SKU, listed or not."""
    cur = await conn.execute("SELECT 1 FROM catalog.products WHERE sku = %s", (sku,))
    return await cur.fetchone() is not None


async def product_changes(conn: AsyncConnection, sku: str, limit: int, offset: int) -> tuple[list[ProductChange], int]:
    """One page of the product's recorded changes, newest first, and how many it has."""
    cur = await conn.execute(
        "SELECT sku, actor, action, changed_at, before, after FROM catalog.product_changes WHERE sku = %s"
        " ORDER BY id DESC LIMIT %s OFFSET %s", (sku, limit, offset))
    changes = [ProductChange(*r) for r in await cur.fetchall()]
    cur = await conn.execute("SELECT count(*) FROM catalog.product_changes WHERE sku = %s", (sku,))
    total = await cur.fetchone()
    assert total is not None
    return changes, total[0]
