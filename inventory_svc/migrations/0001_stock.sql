-- Stock per SKU and the append-only ledger of every movement of it.
CREATE TABLE inventory.stock (
    sku        text PRIMARY KEY,
    on_hand    integer NOT NULL,
    reserved   integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The last line of defence of the inventory rules: never negative, never more held than on hand.
    CONSTRAINT stock_on_hand_nonnegative CHECK (on_hand >= 0),
    CONSTRAINT stock_reserved_nonnegative CHECK (reserved >= 0),
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

CREATE TABLE inventory.ledger (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku             text NOT NULL REFERENCES inventory.stock (sku),
    -- Why the stock moved, e.g. INITIAL, RESTOCK.
    reason          text NOT NULL,
    on_hand_delta   integer NOT NULL,
    reserved_delta  integer NOT NULL,
    -- The figures after this movement, so the ledger can be replayed and checked row by row.
    on_hand_after   integer NOT NULL,
    reserved_after  integer NOT NULL,
    actor           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ledger_sku_idx ON inventory.ledger (sku, id);
