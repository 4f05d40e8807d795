-- Optimistic concurrency for refund updates: every write bumps the version,
-- and an update applies only to the version it was computed from.
ALTER TABLE refunds ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
