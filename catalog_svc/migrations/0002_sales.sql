-- Paid orders whose units are counted in products.sales, so each is counted once.
CREATE TABLE catalog.sales_recorded (
    order_id     text PRIMARY KEY,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
