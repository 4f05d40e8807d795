-- One row that /readyz writes: a database that answers reads but cannot
-- take a write (a full or failing disk, a read-only standby) is not ready.
CREATE TABLE readiness_probe (
    id          integer PRIMARY KEY,
    checked_at  timestamptz NOT NULL
);
