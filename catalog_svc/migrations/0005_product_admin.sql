-- The merchant's management of products: SKUs may also hold "_" and "." (API.md), products can be taken out of
-- sale (listed), every change is recorded, and a create may carry an idempotency key.
ALTER TABLE catalog.products DROP CONSTRAINT products_sku_check;
ALTER TABLE catalog.products ADD CONSTRAINT products_sku_check CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$');

-- False: out of sale. Left out of the listing, search and product page; still read by the cart and checkout.
ALTER TABLE catalog.products ADD COLUMN listed boolean NOT NULL DEFAULT true;

-- Every listing reads listed products only, so the listing's indexes hold only those: a page's SKUs still come
-- from the sort key's index alone (an index-only scan), and a count from the category's, as before.
DROP INDEX catalog.products_category_idx;
DROP INDEX catalog.products_created_idx;
DROP INDEX catalog.products_price_idx;
DROP INDEX catalog.products_sales_idx;
DROP INDEX catalog.products_name_idx;
DROP INDEX catalog.products_category_created_idx;
DROP INDEX catalog.products_category_price_idx;
DROP INDEX catalog.products_category_sales_idx;
DROP INDEX catalog.products_category_name_idx;
CREATE INDEX products_category_idx ON catalog.products (category) WHERE listed;
CREATE INDEX products_created_idx ON catalog.products (created_at, sku) WHERE listed;
CREATE INDEX products_price_idx ON catalog.products (price, sku) WHERE listed;
CREATE INDEX products_sales_idx ON catalog.products (sales, sku) WHERE listed;
CREATE INDEX products_name_idx ON catalog.products ((lower(name) COLLATE "C"), sku) WHERE listed;
CREATE INDEX products_category_created_idx ON catalog.products (category, created_at, sku) WHERE listed;
CREATE INDEX products_category_price_idx ON catalog.products (category, price, sku) WHERE listed;
CREATE INDEX products_category_sales_idx ON catalog.products (category, sales, sku) WHERE listed;
CREATE INDEX products_category_name_idx ON catalog.products (category, (lower(name) COLLATE "C"), sku) WHERE listed;

-- Who changed which product when, and its managed fields before (NULL for a creation) and after.
CREATE TABLE catalog.product_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL CHECK (action IN ('create', 'update', 'upsert')),
    changed_at  timestamptz NOT NULL DEFAULT now(),
    before      jsonb,
    after       jsonb NOT NULL
);
CREATE INDEX product_changes_sku_idx ON catalog.product_changes (sku, id);

-- Idempotency keys of the admin's creates (shop_runtime.idempotency), with the stored answer.
CREATE TABLE catalog.idempotency_keys (
    operation     text NOT NULL,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key)
);
