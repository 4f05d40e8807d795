-- What the POS is told of (issue 20): each domain event of a refund change,
-- recorded in the transaction of the change. `seq` is the feed position,
-- given after commit by one sequencer at a time (so a reader never sees a
-- later position before an earlier one: no gaps for a resuming POS).
CREATE TABLE pos_events (
    id             TEXT        PRIMARY KEY,
    seq            BIGINT      UNIQUE,
    client         TEXT        NOT NULL,
    refund_id      TEXT        NOT NULL,
    refund_version BIGINT      NOT NULL,
    ordinal        INTEGER     NOT NULL,
    type           TEXT        NOT NULL,
    created_at     INTEGER     NOT NULL,
    data           TEXT        NOT NULL,
    fanned_out     INTEGER     NOT NULL DEFAULT 0
);
CREATE INDEX pos_events_client_seq ON pos_events (client, seq);
CREATE INDEX pos_events_unsequenced ON pos_events (created_at) WHERE seq IS NULL;
CREATE INDEX pos_events_unfanned ON pos_events (seq) WHERE fanned_out = 0 AND seq IS NOT NULL;
CREATE INDEX pos_events_refund ON pos_events (refund_id, seq);

-- One row per event and receiving endpoint (Standard Webhooks delivery).
CREATE TABLE webhook_deliveries (
    id              TEXT        PRIMARY KEY,
    event_id        TEXT        NOT NULL REFERENCES pos_events (id) ON DELETE CASCADE,
    client          TEXT        NOT NULL,
    endpoint        TEXT        NOT NULL,
    refund_id       TEXT        NOT NULL,
    seq             BIGINT      NOT NULL,
    state           TEXT        NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT      NOT NULL DEFAULT 0,
    next_attempt_at INTEGER     NOT NULL,
    lease_until     INTEGER    ,
    lease_token     TEXT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      INTEGER     NOT NULL,
    delivered_at    INTEGER    ,
    UNIQUE (event_id, endpoint)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint, refund_id, seq) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_client ON webhook_deliveries (client, state, created_at);

-- Every attempt, for operators.
CREATE TABLE webhook_attempts (
    delivery_id  TEXT        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at           INTEGER     NOT NULL,
    http_status  BIGINT,
    error        TEXT,
    duration_ms  BIGINT      NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, at);

-- Endpoints disabled by a `410 Gone` (until an operator enables them).
CREATE TABLE webhook_endpoints_disabled (
    client       TEXT        NOT NULL,
    endpoint     TEXT        NOT NULL,
    disabled_at  INTEGER     NOT NULL,
    reason       TEXT        NOT NULL,
    PRIMARY KEY (client, endpoint)
);

-- Why a pending refund is pending (the refund object's `pending_reason`).
ALTER TABLE refunds ADD COLUMN pending_reason TEXT;
-- Whether the refund's `refund.created` is recorded (its first change
-- after the send claim records it, whatever that change is). Refunds from
-- before this migration count as announced: they are not announced again.
ALTER TABLE refunds ADD COLUMN announced INTEGER NOT NULL DEFAULT 0;
UPDATE refunds SET announced = 1;
