-- Client idempotency keys (ARCHITECTURE.md "Cross-service work"): a retry with the same
-- request_id and body gets the first response back; another body is refused.
CREATE TABLE idempotency_keys (
    operation TEXT NOT NULL,
    caller_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (operation, caller_id, request_id)
);
