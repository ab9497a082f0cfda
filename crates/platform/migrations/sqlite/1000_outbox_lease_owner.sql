-- Who holds a row's delivery lease: the relay's instance id (stable across restarts of the
-- same replica). A starting process takes over only its own previous incarnation's leases;
-- another live replica's lease is left to run out, so a row is never sent by two at once.
ALTER TABLE outbox ADD COLUMN lease_owner TEXT;
