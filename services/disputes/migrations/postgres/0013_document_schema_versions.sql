-- The JSON documents (a dispute's `data`, an order's `facts` and `clock`, a history entry's
-- `data`) carry the schema version they were written in, so a reader can upgrade an old
-- document or refuse one newer than it understands instead of misreading it
-- (docs/persistence.md). Every row written before this migration is version 1.
ALTER TABLE disputes ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE orders ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE dispute_events ADD COLUMN schema_version INTEGER NOT NULL DEFAULT 1;
