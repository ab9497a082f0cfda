-- Return authorisations received from disputes, labels, tracking, pickups, drop-off
-- locations and the per-buyer free-return counter. Portable types only (TEXT, BIGINT,
-- BYTEA): instants are unix microseconds, booleans 0/1, money minor units + currency code.
-- Addresses and inspections are stored as their encoded protobuf messages.

-- One authorisation per order; `label_id` is the order's live label (one label per order),
-- set with a conditional update so two concurrent requests cannot both issue one.
CREATE TABLE return_authorisations (
    order_id TEXT PRIMARY KEY,
    dispute_id TEXT NOT NULL,
    buyer_id TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    destination_country TEXT NOT NULL,
    item_value_currency TEXT NOT NULL,
    item_value_minor BIGINT NOT NULL,
    delivered_at BIGINT,
    free_return BIGINT NOT NULL,
    postage_payer TEXT,
    ship_by BIGINT,
    reason TEXT NOT NULL,
    return_to BYTEA,
    authorised_at BIGINT NOT NULL,
    label_id TEXT
);

-- Free returns counted per buyer per calendar month (UTC), incremented only while below the
-- policy's limit, inside the label's transaction.
CREATE TABLE free_return_quota (
    buyer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    used BIGINT NOT NULL,
    PRIMARY KEY (buyer_id, month)
);

-- The last tracking serial issued per carrier: tracking numbers are unique by construction.
CREATE TABLE tracking_serials (
    provider_code TEXT PRIMARY KEY,
    last_serial BIGINT NOT NULL
);

CREATE TABLE return_labels (
    label_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    buyer_id TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    method TEXT NOT NULL,
    provider_code TEXT NOT NULL,
    tracking_number TEXT NOT NULL UNIQUE,
    ship_by BIGINT NOT NULL,
    paid_by TEXT NOT NULL,
    postage_currency TEXT NOT NULL,
    postage_minor BIGINT NOT NULL,
    free_return BIGINT NOT NULL,
    quota_month TEXT,
    qr_payload TEXT NOT NULL,
    status TEXT NOT NULL,
    status_at BIGINT,
    sender BYTEA NOT NULL,
    return_to BYTEA,
    inspection BYTEA,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    accepted_at BIGINT,
    delivered_at BIGINT,
    voided_at BIGINT
);
CREATE INDEX return_labels_order ON return_labels (order_id);
CREATE INDEX return_labels_buyer ON return_labels (buyer_id);
CREATE INDEX return_labels_provider ON return_labels (provider_code);

-- Carrier scans; the carrier's event id is the idempotency key, scoped by carrier.
CREATE TABLE tracking_events (
    provider_code TEXT NOT NULL,
    carrier_event_id TEXT NOT NULL,
    label_id TEXT NOT NULL,
    tracking_number TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    location TEXT NOT NULL,
    details TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (provider_code, carrier_event_id)
);
CREATE INDEX tracking_events_label ON tracking_events (label_id, occurred_at);

CREATE TABLE pickups (
    pickup_id TEXT PRIMARY KEY,
    label_id TEXT NOT NULL,
    provider_code TEXT NOT NULL,
    window_start BIGINT NOT NULL,
    window_end BIGINT NOT NULL,
    address BYTEA NOT NULL,
    status TEXT NOT NULL,
    confirmation_reference TEXT NOT NULL,
    instructions TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX pickups_label ON pickups (label_id);

-- Coordinates in microdegrees (no floating-point columns in the portable set).
CREATE TABLE drop_off_locations (
    provider_code TEXT NOT NULL,
    location_id TEXT NOT NULL,
    country_code TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    address BYTEA NOT NULL,
    postal_code TEXT NOT NULL,
    latitude_e6 BIGINT NOT NULL,
    longitude_e6 BIGINT NOT NULL,
    opening_hours TEXT NOT NULL,
    active BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (provider_code, location_id)
);
CREATE INDEX drop_off_locations_country ON drop_off_locations (country_code);
