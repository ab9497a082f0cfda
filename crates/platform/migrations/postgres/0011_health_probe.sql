-- One row the health probe rewrites: a service reports NOT_SERVING while its database
-- cannot take a committed write (a full disk, a read-only replica).
CREATE TABLE health_probe (
    id BIGINT PRIMARY KEY,
    probed_at BIGINT NOT NULL
);
