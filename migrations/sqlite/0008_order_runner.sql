-- The order runner's state: the instance it created (or found again by its display name),
-- when to look at the order next, and which control-plane process is looking now (a lease,
-- so two replicas never drive one order, and a stopped one's orders are taken over).
ALTER TABLE server_provisioning_queue ADD COLUMN provider TEXT;
ALTER TABLE server_provisioning_queue ADD COLUMN provider_instance_id TEXT;
ALTER TABLE server_provisioning_queue ADD COLUMN ip_address TEXT;
-- Operator retries of a failed order; part of the failure mails' dedupe keys.
ALTER TABLE server_provisioning_queue ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0);
ALTER TABLE server_provisioning_queue ADD COLUMN next_run_at INTEGER;
ALTER TABLE server_provisioning_queue ADD COLUMN lease_owner TEXT;
ALTER TABLE server_provisioning_queue ADD COLUMN lease_until INTEGER;
CREATE INDEX server_provisioning_queue_due ON server_provisioning_queue (status, next_run_at);
