-- Order facts (recorded by the platform) with the order's protection clock, disputes with
-- their append-only history, and the deadlines that fire by themselves.
-- `facts`, `clock` and `data` hold the domain types as JSON (crates/domain negotiation.rs);
-- the columns beside them are what queries filter, sort and lock on.
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    buyer_id TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    facts TEXT NOT NULL,
    clock TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE disputes (
    dispute_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    buyer_id TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    state TEXT NOT NULL,
    -- 'YYYY-MM' when authorised as a free return: the buyer's monthly quota counts these.
    free_return_month TEXT,
    data TEXT NOT NULL,
    -- Optimistic concurrency: every update is conditional on the version read.
    version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX disputes_by_buyer ON disputes (buyer_id, dispute_id);
CREATE INDEX disputes_by_seller ON disputes (seller_id, dispute_id);
CREATE INDEX disputes_by_order ON disputes (order_id);
-- One active dispute per order, held by the database as well as by the rules.
CREATE UNIQUE INDEX disputes_one_active_per_order ON disputes (order_id)
    WHERE state NOT IN ('RESOLVED', 'CANCELLED');

-- Append-only history: rows are inserted, never updated or deleted.
CREATE TABLE dispute_events (
    event_id TEXT PRIMARY KEY,
    dispute_id TEXT NOT NULL REFERENCES disputes (dispute_id),
    sequence INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (dispute_id, sequence)
);

-- Durable deadlines, written in the transaction that starts them.
-- fired: 0 pending, 1 fired, 2 superseded (the dispute moved on before it fell due).
CREATE TABLE deadlines (
    dispute_id TEXT NOT NULL REFERENCES disputes (dispute_id),
    kind TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    fired INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (dispute_id, kind, due_at)
);
CREATE INDEX deadlines_pending ON deadlines (due_at) WHERE fired = 0;
