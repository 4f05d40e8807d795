-- Webhooks find refunds by the provider's refund id.
CREATE INDEX refunds_provider_refund_id ON refunds (account, provider_refund_id);
