-- Messages for other services, written in the same transaction as the change that causes
-- them, delivered by the relay at least once.
CREATE TABLE outbox (
    message_id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    traceparent TEXT,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

-- Messages received from other services, so a redelivery is applied zero more times.
CREATE TABLE inbox (
    message_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
