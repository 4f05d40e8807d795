-- The operators' console (issue 22): one row per signed-in browser. The
-- cookie holds a random session id; only its SHA-256 is stored, so a copy
-- of the database signs nobody in. `csrf_token` must come back with every
-- form the session posts. A session ends when idle too long, when too old,
-- or at sign-out (the row is deleted).
CREATE TABLE console_sessions (
    id_sha256    TEXT    PRIMARY KEY,
    operator     TEXT    NOT NULL,
    csrf_token   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_last_seen ON console_sessions (last_seen_at);
