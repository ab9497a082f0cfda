-- Relayed refund requests that arrived before their order's capture (relays run apart, so
-- either message may come first). The validated CreateRefundRequest is kept, encoded, and
-- turned into a refund by RecordCapture in the capture's own transaction, under the same
-- rules as a CreateRefund at that moment; `outcome` is `created` or the rule that refused
-- it (e.g. `over_refund`), `refund_id` the refund created.
CREATE TABLE refunds_awaiting_capture (
    message_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    dispute_id TEXT NOT NULL,
    request BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    resolved_at INTEGER,
    outcome TEXT,
    refund_id TEXT
);
CREATE INDEX refunds_awaiting_capture_by_order
    ON refunds_awaiting_capture (order_id, received_at, message_id);
