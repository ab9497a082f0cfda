-- One clock per purpose in settlement: `next_attempt_at` stays on the business clock (when
-- money work is due: release, expected arrival, status polls), while retries after a
-- transient provider failure wait on the wall clock in `retry_after` (unix microseconds,
-- NULL when not backing off), so an outage is not "over" because a test clock jumped.
-- `lease_until` is now wall-clock too; in production both clocks are the system clock, so
-- leases written before this migration keep their meaning.
ALTER TABLE refunds ADD COLUMN retry_after BIGINT;
