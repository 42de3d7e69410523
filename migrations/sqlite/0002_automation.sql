-- Automation: regional identities, scanner tokens, and indexes for the task engine.

-- A user's stable presence in one region: the region's preferred server for that user.
CREATE TABLE regional_identities (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    region     TEXT    NOT NULL,
    -- NULL until the region has a server; devices fall back to the least loaded one.
    server_id  INTEGER REFERENCES vpn_servers (id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (user_id, region)
);

-- The seed's network-scanner app authenticates with this per-user secret (stored hashed).
CREATE TABLE scanner_tokens (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER NOT NULL
);

CREATE INDEX scheduled_tasks_user ON scheduled_tasks (user_id, workflow, status);
CREATE INDEX scheduled_tasks_lease ON scheduled_tasks (status, lease_expires_at);
CREATE INDEX subscriptions_trial_end ON subscriptions (status, trial_ends);
