-- When a task started waiting for its input (a PayPal event ahead of the one it depends on):
-- it waits at most three days from then. An operator's retry starts the wait afresh.
ALTER TABLE scheduled_tasks ADD COLUMN waiting_since INTEGER;
