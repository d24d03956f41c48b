-- An order line's units keep the price they were held at, and the campaign whose quota they came from (NULL: regular
-- stock, and every line stored before campaigns).
ALTER TABLE orders.items ADD COLUMN campaign_id uuid;
