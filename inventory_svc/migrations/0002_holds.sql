-- Holds (reservations), their link to the ledger, and idempotency keys of stock-changing calls.
CREATE TABLE inventory.holds (
    id          uuid PRIMARY KEY,
    owner       text NOT NULL CHECK (length(owner) BETWEEN 1 AND 200),
    sku         text NOT NULL REFERENCES inventory.stock (sku),
    qty         integer NOT NULL CHECK (qty > 0),
    state       text NOT NULL DEFAULT 'ACTIVE' CHECK (state IN ('ACTIVE', 'COMMITTED', 'RELEASED', 'EXPIRED')),
    expires_at  timestamptz NOT NULL,
    order_id    text,
    created_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    -- A hold ends exactly once, and an ended hold records when.
    CONSTRAINT holds_ended_iff_not_active CHECK ((state = 'ACTIVE') = (ended_at IS NULL))
);

-- Expired holds per SKU (reclaim under the SKU's lock) and overall (the sweeper).
CREATE INDEX holds_active_sku_idx ON inventory.holds (sku, expires_at) WHERE state = 'ACTIVE';
CREATE INDEX holds_active_expiry_idx ON inventory.holds (expires_at) WHERE state = 'ACTIVE';

ALTER TABLE inventory.ledger
    ADD COLUMN hold_id uuid REFERENCES inventory.holds (id),
    ADD COLUMN order_id text,
    ADD CONSTRAINT ledger_reason_known CHECK (reason IN ('INITIAL', 'ADJUST', 'HOLD', 'RESIZE', 'RELEASE', 'EXPIRE', 'COMMIT'));

CREATE INDEX ledger_hold_idx ON inventory.ledger (hold_id) WHERE hold_id IS NOT NULL;

CREATE TABLE inventory.idempotency (
    operation     text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key)
);
