-- Captures, refunds, chargebacks, return progress, settlement attempts and the ledger.
-- Money is minor units plus a currency code; instants are unix microseconds; booleans 0/1.

-- What was captured per order: the ceiling of refunds plus chargebacks. Refund requests
-- lock this row (FOR UPDATE) so concurrent requests on one order are checked one by one.
CREATE TABLE captures (
    order_id TEXT PRIMARY KEY,
    buyer_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    payment_method TEXT NOT NULL,
    buyer_tier TEXT NOT NULL,
    captured_at INTEGER NOT NULL,
    payment_reference TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per refund; `next_attempt_at` is when the settlement worker next looks at it and
-- (`claimed_by`, `lease_until`) the lease a worker holds while talking to the provider.
CREATE TABLE refunds (
    refund_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    buyer_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    net_minor INTEGER NOT NULL,
    deductions TEXT NOT NULL,
    reason TEXT NOT NULL,
    release_condition TEXT NOT NULL,
    return_label_id TEXT NOT NULL,
    status TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    expected_earliest INTEGER,
    expected_latest INTEGER,
    provider_reference TEXT NOT NULL,
    fast_refund INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    failure_reason TEXT NOT NULL,
    status_reason TEXT NOT NULL,
    note TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    released_at INTEGER,
    succeeded_at INTEGER,
    next_attempt_at INTEGER,
    claimed_by TEXT,
    lease_until INTEGER,
    message_id TEXT UNIQUE,
    version INTEGER NOT NULL
);
CREATE INDEX refunds_by_order ON refunds (order_id, refund_id);
CREATE INDEX refunds_by_buyer ON refunds (buyer_id, refund_id);
CREATE INDEX refunds_due ON refunds (next_attempt_at) WHERE status IN ('PENDING', 'SUBMITTED');

-- Card chargebacks; the network reference is unique.
CREATE TABLE chargebacks (
    chargeback_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    network_reference TEXT NOT NULL UNIQUE,
    reason TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX chargebacks_by_order ON chargebacks (order_id);

-- Return progress seen per order and label, kept so a refund created after the event
-- (relays may deliver out of order) is released at once.
CREATE TABLE return_events (
    order_id TEXT NOT NULL,
    return_label_id TEXT NOT NULL,
    progress TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    notes TEXT NOT NULL,
    PRIMARY KEY (order_id, return_label_id, progress)
);

-- Every call to the payment provider, for audit and for counting attempts.
CREATE TABLE refund_attempts (
    attempt_id TEXT PRIMARY KEY,
    refund_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    worker TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    provider_reference TEXT NOT NULL,
    error TEXT NOT NULL
);
CREATE INDEX refund_attempts_by_refund ON refund_attempts (refund_id);

-- Append-only ledger of refund movements: each status change writes a reversal of the old
-- status (-net, -1) and an entry for the new one (+net, +1), so sums per status are the
-- refunds currently in it and the grand total is the sum of all refunds.
CREATE TABLE refund_ledger (
    entry_id TEXT PRIMARY KEY,
    refund_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    status TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    count_delta INTEGER NOT NULL,
    day TEXT NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX refund_ledger_by_time ON refund_ledger (at);
