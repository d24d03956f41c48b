-- Categories and products of the catalog; units sold grow with paid orders.
CREATE TABLE catalog.categories (
    slug text PRIMARY KEY CHECK (slug ~ '^[a-z0-9-]{1,64}$'),
    name text NOT NULL
);

CREATE TABLE catalog.products (
    sku         text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9-]{1,64}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    category    text NOT NULL REFERENCES catalog.categories (slug),
    price       integer NOT NULL CHECK (price >= 0),
    sales       integer NOT NULL DEFAULT 0 CHECK (sales >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- 'simple' keeps words unstemmed, so a typed prefix ("mous") matches the word ("mouse").
    search      tsvector GENERATED ALWAYS AS (to_tsvector('simple', name || ' ' || description)) STORED
);

CREATE INDEX products_category_idx ON catalog.products (category);
CREATE INDEX products_search_idx ON catalog.products USING gin (search);
CREATE INDEX products_created_idx ON catalog.products (created_at, sku);
CREATE INDEX products_price_idx ON catalog.products (price, sku);
CREATE INDEX products_sales_idx ON catalog.products (sales, sku);
CREATE INDEX products_name_idx ON catalog.products ((lower(name) COLLATE "C"), sku);
