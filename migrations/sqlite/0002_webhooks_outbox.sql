-- Every verified provider webhook, stored once (deduplicated), with what it
-- was matched to and what it did.
CREATE TABLE webhook_events (
    id                  TEXT    PRIMARY KEY,
    provider            TEXT    NOT NULL,
    account             TEXT    NOT NULL,
    dedupe_key          TEXT    NOT NULL,
    transaction_no      TEXT,
    provider_refund_id  TEXT,
    provider_reference  TEXT,
    amount              TEXT,
    outcome             TEXT    NOT NULL,
    provider_status     TEXT,
    fields              TEXT    NOT NULL,
    refund_id           TEXT,
    state               TEXT    NOT NULL,
    note                TEXT,
    received_at         INTEGER NOT NULL
);
CREATE UNIQUE INDEX webhook_events_dedupe ON webhook_events (account, dedupe_key);
CREATE INDEX webhook_events_refund ON webhook_events (refund_id);
CREATE INDEX webhook_events_unmatched_ref ON webhook_events (account, provider_reference) WHERE state = 'unmatched';
CREATE INDEX webhook_events_unmatched_id ON webhook_events (account, provider_refund_id) WHERE state = 'unmatched';

-- Receipt emails, enqueued in the transaction that makes a refund succeed and
-- sent by a worker with retries; one per refund.
CREATE TABLE email_outbox (
    refund_id        TEXT    PRIMARY KEY,
    to_addr          TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sent', 'abandoned')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER
);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE state = 'pending';
