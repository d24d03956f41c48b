-- Cart changes made under the shopper's Idempotency-Key, with their first answer, for replay.
CREATE TABLE cart.changes (
    user_id       text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
