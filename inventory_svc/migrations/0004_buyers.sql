-- Who a hold's units are for (a cart's shopper), kept through checkout and sale, so a per-buyer purchase
-- limit can be decided under the SKU's lock from the holds themselves: active (in a cart or an order
-- awaiting payment) and committed (sold) units count. Holds made before this have no buyer.
ALTER TABLE inventory.holds ADD COLUMN buyer text CHECK (length(buyer) BETWEEN 1 AND 200);

CREATE INDEX holds_buyer_idx ON inventory.holds (sku, buyer) WHERE buyer IS NOT NULL AND state IN ('ACTIVE', 'COMMITTED');
