-- The service cancels a duplicate subscription at PayPal itself and refunds what was taken on
-- it: when the cancellation went through, and the provider's id of each refund.
ALTER TABLE checkouts ADD COLUMN duplicate_cancelled_at INTEGER;
ALTER TABLE payments ADD COLUMN provider_refund_id TEXT;
