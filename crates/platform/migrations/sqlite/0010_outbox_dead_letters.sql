-- Dead letters: a message its receiver refused for good, or that failed past the attempt
-- limit, is kept with its last error for an operator to retry or discard, never marked
-- delivered. Pending = not delivered, not dead.
ALTER TABLE outbox ADD COLUMN dead_at INTEGER;
ALTER TABLE outbox ADD COLUMN discarded_at INTEGER;
ALTER TABLE outbox ADD COLUMN discard_reason TEXT;
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND dead_at IS NULL;
CREATE INDEX outbox_dead ON outbox (created_at, message_id) WHERE dead_at IS NOT NULL AND discarded_at IS NULL;
CREATE INDEX outbox_pending ON outbox (created_at, message_id) WHERE delivered_at IS NULL AND dead_at IS NULL;
