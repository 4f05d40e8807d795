-- Every change of a refund, in order, with its source: what the POS and the
-- operator read as the refund's history (GET /v1/refunds/{id}/events), and
-- the audit trail of operator actions (actor, note).
CREATE TABLE refund_events (
    -- The rowid: increasing, and cheaper than AUTOINCREMENT (no sequence
    -- table written per insert); events are never deleted.
    id               INTEGER PRIMARY KEY,
    refund_id        TEXT    NOT NULL,
    at               INTEGER NOT NULL,
    source           TEXT    NOT NULL CHECK (source IN ('request', 'provider', 'status_query', 'webhook', 'reconciliation', 'operator')),
    status           TEXT    NOT NULL,
    previous_status  TEXT,
    provider_code    TEXT,
    provider_status  TEXT,
    detail           TEXT,
    actor            TEXT
);
CREATE INDEX refund_events_refund ON refund_events (refund_id, id);
CREATE INDEX refunds_review ON refunds (created_at) WHERE review_reason IS NOT NULL OR status = 'pending';
