-- Flash-sale campaigns beside the stock they sell, prices held with the units, and stock adjustments by reason.
--
-- A campaign's quota is stock: set aside under the SKU's lock when the campaign is created (stock.set_aside grows,
-- so `available` at the regular price shrinks), held from while the campaign is live (set_aside shrinks, reserved
-- grows), and what is left goes back to regular stock at the instant the campaign ends or is cancelled. Every move
-- is a ledger entry. Per campaign item: quota = remaining + held + sold + returned, where held and sold are the
-- item's holds (ACTIVE, COMMITTED) and remaining, returned are stored here.

CREATE TABLE inventory.campaigns (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    starts_at     timestamptz NOT NULL,
    -- For a live campaign cancelled, the instant it was cancelled (it ended then).
    ends_at       timestamptz NOT NULL,
    -- Set when cancelled before it started (status CANCELLED) or while live (status ENDED, ends_at moved).
    cancelled_at  timestamptz,
    created_at    timestamptz NOT NULL,
    created_by    text NOT NULL,
    CONSTRAINT campaigns_window CHECK (ends_at > starts_at)
);

CREATE INDEX campaigns_window_idx ON inventory.campaigns (starts_at, id);

CREATE TABLE inventory.campaign_items (
    campaign_id   uuid NOT NULL REFERENCES inventory.campaigns (id),
    sku           text NOT NULL REFERENCES inventory.stock (sku),
    -- The order the item was given in.
    position      integer NOT NULL,
    sale_price    integer NOT NULL CHECK (sale_price > 0),
    quota         integer NOT NULL CHECK (quota > 0),
    -- 0: the store's max_units_per_user.
    max_per_user  integer NOT NULL CHECK (max_per_user >= 0),
    -- Units of the quota neither held nor sold and still set aside (counted in stock.set_aside); 0 once closed.
    remaining     integer NOT NULL CHECK (remaining >= 0),
    -- Units of the quota back in regular stock: what was left when the item closed, and held units that came
    -- back (released, expired) after the campaign's end.
    returned      integer NOT NULL DEFAULT 0 CHECK (returned >= 0),
    -- When `remaining` went back to regular stock (the campaign's end or cancellation, applied under the SKU's
    -- lock by the first write after it, or by the sweeper); NULL while the quota is set aside.
    closed_at     timestamptz,
    PRIMARY KEY (campaign_id, sku),
    CONSTRAINT campaign_items_within_quota CHECK (remaining + returned <= quota),
    CONSTRAINT campaign_items_revenue_fits CHECK (quota::bigint * sale_price <= 2147483647),
    CONSTRAINT campaign_items_closed_empty CHECK (closed_at IS NULL OR remaining = 0)
);

-- The open items of a SKU (read under its lock by every write), and those a sweeper must close.
CREATE INDEX campaign_items_open_sku_idx ON inventory.campaign_items (sku) WHERE closed_at IS NULL;
-- Every campaign of a SKU, open or closed: the overlap check of a new campaign, the SKU filter of a listing.
CREATE INDEX campaign_items_sku_idx ON inventory.campaign_items (sku, campaign_id);

-- Adds refused per campaign item and reason, for the campaign's report.
CREATE TABLE inventory.campaign_refusals (
    campaign_id  uuid NOT NULL,
    sku          text NOT NULL,
    reason       text NOT NULL,
    refused      integer NOT NULL CHECK (refused >= 0),
    PRIMARY KEY (campaign_id, sku, reason),
    FOREIGN KEY (campaign_id, sku) REFERENCES inventory.campaign_items (campaign_id, sku)
);

-- Units set aside for campaigns are neither held nor available at the regular price.
ALTER TABLE inventory.stock
    ADD COLUMN set_aside integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT stock_set_aside_nonnegative CHECK (set_aside >= 0),
    DROP CONSTRAINT stock_reserved_within_on_hand,
    ADD CONSTRAINT stock_committed_within_on_hand CHECK (reserved + set_aside <= on_hand);

-- The price each hold's units were held at, and the campaign whose quota they came from (NULL: regular stock).
-- Holds made before this migration have no price (NULL).
ALTER TABLE inventory.holds
    ADD COLUMN price integer CHECK (price >= 0),
    ADD COLUMN campaign_id uuid,
    ADD CONSTRAINT holds_campaign_item FOREIGN KEY (campaign_id, sku)
        REFERENCES inventory.campaign_items (campaign_id, sku);

-- A buyer's units of one campaign (its per-user limit), and an item's held and sold units (its figures).
CREATE INDEX holds_campaign_idx ON inventory.holds (campaign_id, sku, state) WHERE campaign_id IS NOT NULL;

-- The ledger follows set-aside units too, and names the campaign a movement belongs to.
ALTER TABLE inventory.ledger
    ADD COLUMN set_aside_delta integer NOT NULL DEFAULT 0,
    ADD COLUMN set_aside_after integer NOT NULL DEFAULT 0,
    ADD COLUMN campaign_id uuid,
    DROP CONSTRAINT ledger_reason_known,
    -- SET_ASIDE: a quota set aside; CAMPAIGN_END: what was left of it back to regular stock. RESTOCK, DAMAGED,
    -- RETURNED, CORRECTION: stock adjustments by delta.
    ADD CONSTRAINT ledger_reason_known CHECK (reason IN (
        'INITIAL', 'ADJUST', 'HOLD', 'RESIZE', 'RELEASE', 'EXPIRE', 'COMMIT',
        'SET_ASIDE', 'CAMPAIGN_END', 'RESTOCK', 'DAMAGED', 'RETURNED', 'CORRECTION'));
