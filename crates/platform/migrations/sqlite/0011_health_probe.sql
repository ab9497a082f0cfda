-- One row the health probe rewrites: a service reports NOT_SERVING while its database
-- cannot take a committed write (a full disk, a read-only replica).
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY,
    probed_at INTEGER NOT NULL
);
