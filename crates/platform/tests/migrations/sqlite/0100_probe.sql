-- A table for the platform crate's own database tests.
CREATE TABLE probe (
    id TEXT PRIMARY KEY,
    amount INTEGER NOT NULL,
    at_micros INTEGER NOT NULL,
    flag INTEGER NOT NULL
);
