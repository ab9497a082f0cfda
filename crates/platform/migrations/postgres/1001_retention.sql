-- Retention (crates/platform/src/retention.rs) deletes rows by age in batches of 1,000: each
-- batch is an index range scan on the instant its table ages by.
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
CREATE INDEX inbox_by_age ON inbox (received_at);
-- Only delivered rows are swept; dead and pending ones have no delivered_at.
CREATE INDEX outbox_delivered_by_age ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
