-- Carts: one line per user and SKU, each with the inventory hold that keeps its units.
CREATE TABLE cart.lines (
    user_id         text NOT NULL,
    sku             text NOT NULL,
    qty             integer NOT NULL CHECK (qty BETWEEN 1 AND 100),
    hold_id         uuid NOT NULL,
    reserved_until  timestamptz NOT NULL,
    added_at        timestamptz NOT NULL,
    PRIMARY KEY (user_id, sku)
);

-- Carts handed over to orders, so a retried checkout answers the same.
CREATE TABLE cart.checkouts (
    order_id    text PRIMARY KEY,
    user_id     text NOT NULL,
    response    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
