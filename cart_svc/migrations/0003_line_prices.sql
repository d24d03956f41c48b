-- The cart's record of the unit price its line's hold keeps (a hold's price never changes), read by the cap on a
-- cart's total before inventory is asked. NULL for lines written before prices were held with the units.
ALTER TABLE cart.lines ADD COLUMN price integer CHECK (price >= 0);
