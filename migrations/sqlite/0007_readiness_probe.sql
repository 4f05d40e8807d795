-- One row that /readyz writes: a database that answers reads but cannot
-- take a write (a full or failing disk) is not ready.
CREATE TABLE readiness_probe (
    id          INTEGER PRIMARY KEY,
    checked_at  INTEGER NOT NULL
);
