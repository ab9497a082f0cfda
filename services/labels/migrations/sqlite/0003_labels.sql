-- Return authorisations received from disputes, labels, tracking, pickups, drop-off
-- locations and the per-buyer free-return counter. Portable types only (TEXT, INTEGER,
-- BLOB): instants are unix microseconds, booleans 0/1, money minor units + currency code.
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
    item_value_minor INTEGER NOT NULL,
    delivered_at INTEGER,
    free_return INTEGER NOT NULL,
    postage_payer TEXT,
    ship_by INTEGER,
    reason TEXT NOT NULL,
    return_to BLOB,
    authorised_at INTEGER NOT NULL,
    label_id TEXT
);

-- Free returns counted per buyer per calendar month (UTC), incremented only while below the
-- policy's limit, inside the label's transaction.
CREATE TABLE free_return_quota (
    buyer_id TEXT NOT NULL,
    month TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (buyer_id, month)
);

-- The last tracking serial issued per carrier: tracking numbers are unique by construction.
CREATE TABLE tracking_serials (
    provider_code TEXT PRIMARY KEY,
    last_serial INTEGER NOT NULL
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
    ship_by INTEGER NOT NULL,
    paid_by TEXT NOT NULL,
    postage_currency TEXT NOT NULL,
    postage_minor INTEGER NOT NULL,
    free_return INTEGER NOT NULL,
    quota_month TEXT,
    qr_payload TEXT NOT NULL,
    status TEXT NOT NULL,
    status_at INTEGER,
    sender BLOB NOT NULL,
    return_to BLOB,
    inspection BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    accepted_at INTEGER,
    delivered_at INTEGER,
    voided_at INTEGER
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
    occurred_at INTEGER NOT NULL,
    location TEXT NOT NULL,
    details TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (provider_code, carrier_event_id)
);
CREATE INDEX tracking_events_label ON tracking_events (label_id, occurred_at);

CREATE TABLE pickups (
    pickup_id TEXT PRIMARY KEY,
    label_id TEXT NOT NULL,
    provider_code TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER NOT NULL,
    address BLOB NOT NULL,
    status TEXT NOT NULL,
    confirmation_reference TEXT NOT NULL,
    instructions TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX pickups_label ON pickups (label_id);

-- Coordinates in microdegrees (no floating-point columns in the portable set).
CREATE TABLE drop_off_locations (
    provider_code TEXT NOT NULL,
    location_id TEXT NOT NULL,
    country_code TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    address BLOB NOT NULL,
    postal_code TEXT NOT NULL,
    latitude_e6 INTEGER NOT NULL,
    longitude_e6 INTEGER NOT NULL,
    opening_hours TEXT NOT NULL,
    active INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (provider_code, location_id)
);
CREATE INDEX drop_off_locations_country ON drop_off_locations (country_code);
