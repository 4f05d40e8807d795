-- Native column types: times as timestamptz, flags as boolean, metadata and
-- webhook fields as jsonb. Existing rows are converted in place (Unix
-- milliseconds to the same instant).
--
-- Enums stay checked text. The refund tables keep only the CHECKs they had
-- (status, submission, amount): Postgres reads every CHECK expression of a
-- table anew for each INSERT or UPDATE, and four more cost about 15% of the
-- write floor (refund-bench). Provider, currency and metadata are typed at the
-- gateway's store boundary, which refuses to read a value that is not valid.
--
-- The gateway's clock counts Unix milliseconds: `rg_ts` converts the stored
-- values below, `rg_ms` reads instants back as milliseconds (exact to the
-- millisecond). Writes bind timestamptz values.
CREATE FUNCTION rg_ts(ms BIGINT) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN to_timestamp(ms / 1000.0);
CREATE FUNCTION rg_ms(t timestamptz) RETURNS BIGINT
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN round(extract(epoch FROM t) * 1000)::BIGINT;

DROP INDEX refunds_review;
DROP INDEX refunds_due;
DROP INDEX refunds_client_created;

ALTER TABLE refunds
    ALTER COLUMN livemode TYPE boolean USING livemode <> 0,
    ALTER COLUMN metadata TYPE jsonb USING metadata::jsonb,
    ALTER COLUMN inflight_until TYPE timestamptz USING rg_ts(inflight_until),
    ALTER COLUMN next_check_at TYPE timestamptz USING rg_ts(next_check_at),
    ALTER COLUMN lease_until TYPE timestamptz USING rg_ts(lease_until),
    ALTER COLUMN send_by TYPE timestamptz USING rg_ts(send_by),
    ALTER COLUMN created_at TYPE timestamptz USING rg_ts(created_at),
    ALTER COLUMN updated_at TYPE timestamptz USING rg_ts(updated_at);

CREATE INDEX refunds_client_created ON refunds (client, created_at DESC, id DESC);
CREATE INDEX refunds_due ON refunds (next_check_at) WHERE status = 'pending';
CREATE INDEX refunds_review ON refunds (created_at) WHERE review_reason IS NOT NULL OR status = 'pending';

ALTER TABLE sales
    ALTER COLUMN currency_confirmed DROP DEFAULT,
    ALTER COLUMN currency_confirmed TYPE boolean USING currency_confirmed <> 0,
    ALTER COLUMN currency_confirmed SET DEFAULT false;

DROP INDEX webhook_events_due;
ALTER TABLE webhook_events
    ALTER COLUMN fields TYPE jsonb USING fields::jsonb,
    ALTER COLUMN received_at TYPE timestamptz USING rg_ts(received_at),
    ALTER COLUMN next_attempt_at TYPE timestamptz USING rg_ts(next_attempt_at),
    ALTER COLUMN lease_until TYPE timestamptz USING rg_ts(lease_until),
    ADD CONSTRAINT webhook_events_provider_check CHECK (provider IN ('pockyt', 'pay10')),
    ADD CONSTRAINT webhook_events_state_check CHECK (state IN ('received', 'ignored', 'unmatched', 'expired', 'queried', 'rejected', 'conflict', 'applied', 'stale'));
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE state = 'unmatched';

DROP INDEX email_outbox_due;
ALTER TABLE email_outbox
    ALTER COLUMN next_attempt_at TYPE timestamptz USING rg_ts(next_attempt_at),
    ALTER COLUMN lease_until TYPE timestamptz USING rg_ts(lease_until),
    ALTER COLUMN created_at TYPE timestamptz USING rg_ts(created_at),
    ALTER COLUMN sent_at TYPE timestamptz USING rg_ts(sent_at);
CREATE INDEX email_outbox_due ON email_outbox (next_attempt_at) WHERE state = 'pending';

ALTER TABLE refund_events
    ALTER COLUMN at TYPE timestamptz USING rg_ts(at);
