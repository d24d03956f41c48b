-- Orders, their lines with prices fixed at checkout, payment attempts per idempotency key,
-- the stand-in payment provider's own record of charges, and the outbox of units sold.
CREATE TABLE orders.orders (
    id            uuid PRIMARY KEY,
    user_id       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'EXPIRED')),
    total         bigint NOT NULL CHECK (total >= 0),
    currency      text NOT NULL,
    pay_before    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    payment_id    text,
    paid_at       timestamptz,
    checkout_key  text,
    CONSTRAINT orders_paid_has_payment CHECK ((status = 'PAID') = (payment_id IS NOT NULL AND paid_at IS NOT NULL))
);
CREATE UNIQUE INDEX orders_checkout_key_idx ON orders.orders (user_id, checkout_key) WHERE checkout_key IS NOT NULL;
CREATE INDEX orders_user_idx ON orders.orders (user_id, created_at DESC, id);
CREATE INDEX orders_due_idx ON orders.orders (pay_before) WHERE status = 'PENDING_PAYMENT';

CREATE TABLE orders.items (
    order_id  uuid NOT NULL REFERENCES orders.orders (id),
    position  integer NOT NULL,
    sku       text NOT NULL,
    name      text NOT NULL,
    price     integer NOT NULL CHECK (price >= 0),
    qty       integer NOT NULL CHECK (qty BETWEEN 1 AND 100),
    hold_id   uuid NOT NULL,
    PRIMARY KEY (order_id, position)
);

CREATE TABLE orders.payments (
    user_id          text NOT NULL,
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea NOT NULL,
    order_id         uuid NOT NULL REFERENCES orders.orders (id),
    payment_id       text NOT NULL UNIQUE,
    -- PENDING is written (and committed) before the provider is called.
    state            text NOT NULL CHECK (state IN ('PENDING', 'SUCCEEDED', 'DECLINED', 'REFUNDED')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);

-- What the stand-in provider charged: its own books, idempotent per payment id.
CREATE TABLE orders.provider_charges (
    payment_id   text PRIMARY KEY,
    amount       bigint NOT NULL,
    token        text NOT NULL,
    charged_at   timestamptz NOT NULL DEFAULT now(),
    refunded_at  timestamptz
);

CREATE TABLE orders.outbox (
    order_id      uuid PRIMARY KEY REFERENCES orders.orders (id),
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON orders.outbox (created_at) WHERE delivered_at IS NULL;
