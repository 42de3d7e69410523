-- A checkout started at the payment provider: its events (which carry the provider's id)
-- find the user, the plan and the promo code here.
CREATE TABLE checkouts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    plan_code    TEXT    NOT NULL REFERENCES plans (code),
    promo_code   TEXT,
    -- For a dedicated server: where the buyer wants it.
    region       TEXT,
    provider     TEXT    NOT NULL,
    provider_ref TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed')),
    created_at   INTEGER NOT NULL,
    completed_at INTEGER,
    UNIQUE (provider, provider_ref)
);
CREATE INDEX checkouts_user ON checkouts (user_id);
