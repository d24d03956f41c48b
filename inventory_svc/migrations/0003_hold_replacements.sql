-- An expired hold held again for its order (ExtendHolds) names its replacement, so naming the
-- expired hold again extends the replacement instead of holding the units twice.
ALTER TABLE inventory.holds ADD COLUMN replaced_by uuid REFERENCES inventory.holds (id);
