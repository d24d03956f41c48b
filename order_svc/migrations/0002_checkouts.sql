-- Checkouts under way: written before the cart is asked, so a checkout cut off after the cart
-- handed its lines over (but before its order was stored) is finished by the reconciler.
CREATE TABLE orders.checkouts (
    order_id      uuid PRIMARY KEY,
    user_id       text NOT NULL,
    checkout_key  text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_pending_idx ON orders.payments (created_at) WHERE state = 'PENDING';
