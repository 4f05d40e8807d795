-- Sales seen by the gateway: the refundable amount (where the provider told us)
-- and the running total of non-failed refunds, updated atomically so concurrent
-- refunds can never together exceed the sale.
CREATE TABLE sales (
    account         TEXT    NOT NULL,
    transaction_no  TEXT    NOT NULL,
    amount_minor    INTEGER,
    currency        TEXT    NOT NULL,
    reserved_minor  INTEGER NOT NULL DEFAULT 0 CHECK (reserved_minor >= 0),
    PRIMARY KEY (account, transaction_no)
);

-- One row per refund, written before the provider is called. The idempotency
-- columns live here too: the claim and the record are one insert.
CREATE TABLE refunds (
    id                  TEXT    PRIMARY KEY,
    client              TEXT    NOT NULL,
    account             TEXT    NOT NULL,
    provider            TEXT    NOT NULL,
    livemode            INTEGER NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    amount_minor        INTEGER NOT NULL CHECK (amount_minor > 0),
    currency            TEXT    NOT NULL,
    settle_currency     TEXT,
    transaction_no      TEXT    NOT NULL,
    reference           TEXT,
    refund_reference    TEXT,
    provider_reference  TEXT    NOT NULL,
    provider_refund_id  TEXT,
    provider_status     TEXT,
    provider_code       TEXT,
    provider_message    TEXT,
    failure_code        TEXT,
    failure_message     TEXT,
    reason              TEXT,
    receipt_email       TEXT,
    metadata            TEXT    NOT NULL,
    idempotency_key     TEXT,
    request_hash        TEXT    NOT NULL,
    submission          TEXT    NOT NULL CHECK (submission IN ('prepared', 'sent')),
    response_code       INTEGER,
    response_body       TEXT,
    inflight_until      INTEGER,
    check_attempts      INTEGER NOT NULL DEFAULT 0,
    next_check_at       INTEGER,
    lease_until         INTEGER,
    review_reason       TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

CREATE UNIQUE INDEX refunds_client_idempotency_key ON refunds (client, idempotency_key);
CREATE UNIQUE INDEX refunds_client_refund_reference ON refunds (client, refund_reference);
CREATE UNIQUE INDEX refunds_provider_reference ON refunds (account, provider_reference);
CREATE INDEX refunds_client_created ON refunds (client, created_at DESC, id DESC);
CREATE INDEX refunds_account_transaction ON refunds (account, transaction_no);
CREATE INDEX refunds_due ON refunds (next_check_at) WHERE status = 'pending';
