-- A task whose input has not arrived yet (a PayPal event ahead of the activation it depends
-- on): what it waits for, so the arrival wakes it, and since when, so it waits at most three
-- days. An operator's retry clears both.
ALTER TABLE scheduled_tasks ADD COLUMN waiting_for TEXT;
ALTER TABLE scheduled_tasks ADD COLUMN waiting_since BIGINT;
CREATE INDEX scheduled_tasks_waiting_for ON scheduled_tasks (waiting_for) WHERE waiting_for IS NOT NULL;
