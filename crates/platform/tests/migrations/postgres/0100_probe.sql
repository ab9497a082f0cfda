-- A table for the platform crate's own database tests.
CREATE TABLE probe (
    id TEXT PRIMARY KEY,
    amount BIGINT NOT NULL,
    at_micros BIGINT NOT NULL,
    flag BIGINT NOT NULL
);
