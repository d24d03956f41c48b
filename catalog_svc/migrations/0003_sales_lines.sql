-- Units sold per recorded order and SKU, so the catalog's sales figures can be checked against the
-- order book; and the units sold outside this suite's orders (demo or imported figures).
CREATE TABLE catalog.sales_lines (
    order_id  text NOT NULL REFERENCES catalog.sales_recorded (order_id),
    sku       text NOT NULL,
    qty       integer NOT NULL CHECK (qty > 0),
    PRIMARY KEY (order_id, sku)
);

-- products.sales = sales_imported + the units of this product in sales_lines.
ALTER TABLE catalog.products ADD COLUMN sales_imported integer NOT NULL DEFAULT 0 CHECK (sales_imported >= 0);

-- Every figure counted so far becomes imported: the units of orders recorded before this migration
-- were never itemized, so they fold into sales_imported and have no sales_lines.
UPDATE catalog.products SET sales_imported = sales;

-- Which recorded orders have their lines in sales_lines: false for those recorded before this
-- migration (counted in sales_imported instead), true for every order recorded from now on.
ALTER TABLE catalog.sales_recorded ADD COLUMN itemized boolean NOT NULL DEFAULT false;
ALTER TABLE catalog.sales_recorded ALTER COLUMN itemized SET DEFAULT true;
