-- The end of a dedicated subscription releases its order's server: a pool server goes to
-- maintenance (an operator wipes it before it is pooled again) at once; an instance created
-- for the order is cancelled at the provider by the order runner, and its server retired.
ALTER TABLE server_provisioning_queue ADD COLUMN release_requested_at INTEGER;
ALTER TABLE server_provisioning_queue ADD COLUMN released_at INTEGER;
-- When the runner last sent a create for the order: a process taking the order over waits
-- out the provider's settle time from then before it believes "no such instance".
ALTER TABLE server_provisioning_queue ADD COLUMN create_sent_at INTEGER;
