-- The daily reconciliation against the provider's books (issue 21).
-- One report per account and day; a re-run replaces its items and counts
-- the run. `lease_until`/`lease_token` let one of several processes run it.
CREATE TABLE reconciliations (
    id            TEXT        PRIMARY KEY,
    account       TEXT        NOT NULL,
    provider      TEXT        NOT NULL,
    day           TEXT        NOT NULL,
    state         TEXT        NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    runs          INTEGER     NOT NULL DEFAULT 0,
    lease_until   INTEGER    ,
    lease_token   TEXT,
    started_at    INTEGER     NOT NULL,
    finished_at   INTEGER    ,
    discrepancies INTEGER     NOT NULL DEFAULT 0,
    summary       TEXT,
    error         TEXT,
    UNIQUE (account, day)
);
CREATE INDEX reconciliations_day ON reconciliations (day, account);

-- One line per refund compared (or found at the provider only).
CREATE TABLE reconciliation_items (
    report_id          TEXT   NOT NULL REFERENCES reconciliations (id) ON DELETE CASCADE,
    n                  INTEGER NOT NULL,
    kind               TEXT   NOT NULL,
    refund_id          TEXT,
    transaction_no     TEXT,
    provider_refund_id TEXT,
    provider_reference TEXT,
    currency           TEXT,
    gateway_amount     TEXT,
    provider_amount    TEXT,
    gateway_status     TEXT,
    provider_status    TEXT,
    provider_outcome   TEXT,
    note               TEXT,
    PRIMARY KEY (report_id, n)
);

-- Refunds the provider has made that the gateway did not (its dashboard,
-- another system): they count against their sale from when they are found.
CREATE TABLE outside_refunds (
    account            TEXT        NOT NULL,
    provider_refund_id TEXT        NOT NULL,
    provider           TEXT        NOT NULL,
    transaction_no     TEXT        NOT NULL,
    provider_reference TEXT,
    amount_minor       INTEGER     NOT NULL,
    currency           TEXT        NOT NULL,
    provider_status    TEXT,
    found_in           TEXT        NOT NULL,
    found_at           INTEGER     NOT NULL,
    review_reason      TEXT,
    -- An operator who has looked at it (it leaves the review queue).
    acknowledged_by    TEXT,
    acknowledged_note  TEXT,
    acknowledged_at    INTEGER    ,
    PRIMARY KEY (account, provider_refund_id)
);
CREATE INDEX outside_refunds_sale ON outside_refunds (account, transaction_no);

-- A day's refunds of one account, read in pages by the reconciliation.
CREATE INDEX refunds_account_created ON refunds (account, created_at DESC, id DESC);
