-- The send claim: a refund leaves for the provider only after a compare-and-swap
-- from 'prepared' to 'sent' that records the time by which the sender must have
-- sent it; a sender past that time abandons the call.
ALTER TABLE refunds ADD COLUMN send_by BIGINT;
-- Consecutive "the provider has no such refund" answers to status queries.
ALTER TABLE refunds ADD COLUMN not_found_streak BIGINT NOT NULL DEFAULT 0;
UPDATE refunds SET send_by = updated_at WHERE submission = 'sent';

-- A sale's currency is pinned only by what the provider confirmed (a sale
-- lookup or a succeeded refund), never by a request that may fail.
ALTER TABLE sales ADD COLUMN currency_confirmed BIGINT NOT NULL DEFAULT 0;
UPDATE sales SET currency_confirmed = 1
 WHERE amount_minor IS NOT NULL
    OR EXISTS (SELECT 1 FROM refunds r WHERE r.account = sales.account
               AND r.transaction_no = sales.transaction_no AND r.status = 'succeeded');
-- Refunds the provider lists for the sale that were not made by this gateway
-- (its dashboard, another integration): they count against the sale too.
ALTER TABLE sales ADD COLUMN external_minor BIGINT NOT NULL DEFAULT 0;

-- Webhooks that match no refund are retried with backoff, by one process at a time.
ALTER TABLE webhook_events ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE webhook_events ADD COLUMN next_attempt_at BIGINT;
ALTER TABLE webhook_events ADD COLUMN lease_until BIGINT;
UPDATE webhook_events SET next_attempt_at = received_at WHERE state = 'unmatched';
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'unmatched';
