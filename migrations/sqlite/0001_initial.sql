-- TrueVault control plane: the whole data model of the seed, made consistent.
-- Portable conventions (see docs/architecture.md): times are Unix milliseconds bound from the
-- application's Clock, money is integer cents, flags are 0/1 integers, JSON is TEXT.
-- Every invariant that concurrency could break is a constraint here, not a check in code.

CREATE TABLE users (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid                  TEXT    NOT NULL UNIQUE,
    -- Stored lower-cased; the CHECK makes a differently-cased duplicate impossible.
    email                 TEXT    NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    password_hash         TEXT    NOT NULL,
    first_name            TEXT    NOT NULL DEFAULT '',
    last_name             TEXT    NOT NULL DEFAULT '',
    role                  TEXT    NOT NULL DEFAULT 'customer' CHECK (role IN ('customer', 'admin')),
    status                TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
    -- Set only once the email is verified and listed on vip_list; NULL means not a VIP.
    vip_tier              TEXT    CHECK (vip_tier IN ('vip_basic', 'vip_dedicated')),
    email_verified_at     INTEGER,
    failed_logins         INTEGER NOT NULL DEFAULT 0 CHECK (failed_logins >= 0),
    failed_login_first_at INTEGER,
    locked_until          INTEGER,
    dedicated_server_id   INTEGER REFERENCES vpn_servers (id) ON DELETE SET NULL,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);

CREATE TABLE vip_list (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    email      TEXT    NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    tier       TEXT    NOT NULL CHECK (tier IN ('vip_basic', 'vip_dedicated')),
    note       TEXT    NOT NULL DEFAULT '',
    added_by   INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE plans (
    code                TEXT    PRIMARY KEY CHECK (length(code) BETWEEN 1 AND 32),
    name                TEXT    NOT NULL,
    -- NULL: unlimited.
    max_devices         INTEGER CHECK (max_devices IS NULL OR max_devices >= 0),
    -- NULL: every region.
    regional_identities INTEGER CHECK (regional_identities IS NULL OR regional_identities >= 0),
    price_cents         INTEGER NOT NULL CHECK (price_cents >= 0),
    currency            TEXT    NOT NULL DEFAULT 'USD',
    billing_period      TEXT    NOT NULL DEFAULT 'month' CHECK (billing_period IN ('none', 'month', 'year')),
    is_public           INTEGER NOT NULL DEFAULT 1 CHECK (is_public IN (0, 1)),
    sort_order          INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

INSERT INTO plans (code, name, max_devices, regional_identities, price_cents, currency, billing_period, is_public, sort_order, created_at, updated_at) VALUES
    ('trial',     '7-day free trial', 1,    1,    0,    'USD', 'none',  0, 0, 0, 0),
    ('personal',  'Personal',         3,    3,    999,  'USD', 'month', 1, 1, 0, 0),
    ('family',    'Family',           NULL, NULL, 1499, 'USD', 'month', 1, 2, 0, 0),
    ('business',  'Business',         NULL, NULL, 2999, 'USD', 'month', 1, 3, 0, 0),
    ('dedicated', 'Dedicated server', NULL, NULL, 4999, 'USD', 'month', 1, 4, 0, 0);

CREATE TABLE subscriptions (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id                  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    plan_type                TEXT    NOT NULL REFERENCES plans (code),
    status                   TEXT    NOT NULL CHECK (status IN ('trial', 'active', 'past_due', 'suspended', 'cancelled', 'expired')),
    trial_started            INTEGER,
    trial_ends               INTEGER,
    trial_converted          INTEGER NOT NULL DEFAULT 0 CHECK (trial_converted IN (0, 1)),
    converted_at             INTEGER,
    current_period_start     INTEGER NOT NULL,
    -- NULL: no end (a VIP's lifetime grant).
    current_period_end       INTEGER,
    cancel_at_period_end     INTEGER NOT NULL DEFAULT 0 CHECK (cancel_at_period_end IN (0, 1)),
    provider                 TEXT,
    provider_subscription_id TEXT,
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    CHECK (status <> 'trial' OR (trial_started IS NOT NULL AND trial_ends IS NOT NULL)),
    UNIQUE (provider, provider_subscription_id)
);
-- At most one current subscription per user.
CREATE UNIQUE INDEX subscriptions_one_current ON subscriptions (user_id)
    WHERE status IN ('trial', 'active', 'past_due', 'suspended');

CREATE TABLE trial_tracking (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id            INTEGER NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    trial_started      INTEGER NOT NULL,
    trial_ends         INTEGER NOT NULL CHECK (trial_ends > trial_started),
    reminder_day1_sent INTEGER NOT NULL DEFAULT 0 CHECK (reminder_day1_sent IN (0, 1)),
    reminder_day5_sent INTEGER NOT NULL DEFAULT 0 CHECK (reminder_day5_sent IN (0, 1)),
    reminder_day6_sent INTEGER NOT NULL DEFAULT 0 CHECK (reminder_day6_sent IN (0, 1)),
    converted          INTEGER NOT NULL DEFAULT 0 CHECK (converted IN (0, 1)),
    converted_at       INTEGER,
    expired            INTEGER NOT NULL DEFAULT 0 CHECK (expired IN (0, 1)),
    expired_at         INTEGER,
    created_at         INTEGER NOT NULL
);

CREATE TABLE vpn_servers (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid                 TEXT    NOT NULL UNIQUE,
    name                 TEXT    NOT NULL UNIQUE,
    provider             TEXT    NOT NULL DEFAULT 'manual',
    provider_instance_id TEXT,
    region               TEXT    NOT NULL,
    country              TEXT    NOT NULL,
    endpoint_host        TEXT    NOT NULL,
    endpoint_port        INTEGER NOT NULL DEFAULT 51820 CHECK (endpoint_port BETWEEN 1 AND 65535),
    wg_public_key        TEXT    UNIQUE,
    ipv4_subnet          TEXT    NOT NULL,
    ipv6_subnet          TEXT,
    server_type          TEXT    NOT NULL DEFAULT 'shared' CHECK (server_type IN ('shared', 'dedicated')),
    dedicated_user_id    INTEGER REFERENCES users (id) ON DELETE SET NULL,
    status               TEXT    NOT NULL DEFAULT 'offline' CHECK (status IN ('provisioning', 'online', 'offline', 'maintenance', 'retired')),
    -- 0..1000 (per mille), fed by node heartbeats; used to pick the least loaded server.
    load_permille        INTEGER NOT NULL DEFAULT 0 CHECK (load_permille BETWEEN 0 AND 1000),
    -- Grows with every peer change on this server; nodes acknowledge revisions.
    config_revision      INTEGER NOT NULL DEFAULT 0 CHECK (config_revision >= 0),
    last_seen_at         INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    UNIQUE (provider, provider_instance_id)
);
CREATE INDEX vpn_servers_region_status ON vpn_servers (region, status);

CREATE TABLE devices (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid              TEXT    NOT NULL UNIQUE,
    user_id           INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    server_id         INTEGER NOT NULL REFERENCES vpn_servers (id),
    name              TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    -- base64 of 32 bytes; the client's private key is never stored.
    public_key        TEXT    NOT NULL UNIQUE CHECK (length(public_key) = 44),
    ipv4_address      TEXT    NOT NULL,
    ipv6_address      TEXT,
    status            TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'active', 'disabled')),
    disabled_reason   TEXT,
    last_handshake_at INTEGER,
    rx_bytes          INTEGER NOT NULL DEFAULT 0,
    tx_bytes          INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (server_id, ipv4_address),
    UNIQUE (server_id, ipv6_address),
    UNIQUE (user_id, name)
);
CREATE INDEX devices_user ON devices (user_id, status);

CREATE TABLE payments (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid                     TEXT    NOT NULL UNIQUE,
    user_id                  INTEGER NOT NULL REFERENCES users (id),
    provider                 TEXT    NOT NULL CHECK (provider IN ('paypal', 'manual')),
    provider_payment_id      TEXT    NOT NULL,
    provider_subscription_id TEXT,
    plan_type                TEXT    REFERENCES plans (code),
    amount_cents             INTEGER NOT NULL CHECK (amount_cents >= 0),
    currency                 TEXT    NOT NULL DEFAULT 'USD',
    status                   TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'refunded', 'partially_refunded')),
    created_at               INTEGER NOT NULL,
    updated_at               INTEGER NOT NULL,
    UNIQUE (provider, provider_payment_id)
);

-- One processed payment event per provider event id: a replayed webhook is a no-op.
CREATE TABLE payment_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    provider     TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    received_at  INTEGER NOT NULL,
    processed_at INTEGER,
    UNIQUE (provider, event_id)
);

CREATE TABLE invoice_sequence (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_number INTEGER NOT NULL CHECK (last_number >= 0)
);
INSERT INTO invoice_sequence (id, last_number) VALUES (1, 0);

CREATE TABLE invoices (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Gapless: taken from invoice_sequence inside the transaction that creates the invoice.
    number         INTEGER NOT NULL UNIQUE CHECK (number > 0),
    user_id        INTEGER NOT NULL REFERENCES users (id),
    payment_id     INTEGER UNIQUE REFERENCES payments (id),
    currency       TEXT    NOT NULL DEFAULT 'USD',
    subtotal_cents INTEGER NOT NULL CHECK (subtotal_cents >= 0),
    discount_cents INTEGER NOT NULL DEFAULT 0 CHECK (discount_cents >= 0),
    tax_cents      INTEGER NOT NULL DEFAULT 0 CHECK (tax_cents >= 0),
    total_cents    INTEGER NOT NULL CHECK (total_cents >= 0),
    status         TEXT    NOT NULL CHECK (status IN ('issued', 'paid', 'void', 'refunded')),
    line_items     TEXT    NOT NULL DEFAULT '[]',
    period_start   INTEGER,
    period_end     INTEGER,
    issued_at      INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    CHECK (total_cents = subtotal_cents - discount_cents + tax_cents)
);

CREATE TABLE server_pool (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    provider             TEXT    NOT NULL,
    provider_instance_id TEXT,
    region               TEXT    NOT NULL,
    ip_address           TEXT,
    ipv6_address         TEXT,
    status               TEXT    NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'provisioning', 'assigned', 'maintenance', 'retired')),
    tier                 TEXT    NOT NULL DEFAULT 'dedicated' CHECK (tier IN ('shared', 'dedicated', 'enterprise')),
    assigned_user_id     INTEGER REFERENCES users (id) ON DELETE SET NULL,
    assigned_at          INTEGER,
    monthly_cost_cents   INTEGER CHECK (monthly_cost_cents IS NULL OR monthly_cost_cents >= 0),
    specs                TEXT    NOT NULL DEFAULT '{}',
    -- The node's keys never leave the node: only the server row (with its public key) is linked.
    vpn_server_id        INTEGER UNIQUE REFERENCES vpn_servers (id),
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    UNIQUE (provider, provider_instance_id),
    CHECK (status <> 'assigned' OR assigned_user_id IS NOT NULL)
);
CREATE INDEX server_pool_claim ON server_pool (status, tier, region);

CREATE TABLE server_provisioning_queue (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id               INTEGER NOT NULL REFERENCES users (id),
    -- One provisioning order per payment.
    payment_id            INTEGER NOT NULL UNIQUE REFERENCES payments (id),
    plan_type             TEXT    NOT NULL,
    region_preference     TEXT,
    status                TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'provisioning', 'configuring', 'completed', 'failed')),
    -- One pool server per order.
    server_pool_id        INTEGER UNIQUE REFERENCES server_pool (id),
    vpn_server_id         INTEGER REFERENCES vpn_servers (id),
    -- The provider-side name recorded before any create call, so a retry can look it up.
    provider_display_name TEXT    UNIQUE,
    error_message         TEXT,
    deadline_at           INTEGER,
    started_at            INTEGER,
    completed_at          INTEGER,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);

CREATE TABLE scheduled_tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Unique per workflow run and step: triggering twice cannot schedule twice.
    task_key         TEXT    NOT NULL UNIQUE,
    workflow         TEXT    NOT NULL,
    step             TEXT    NOT NULL,
    payload          TEXT    NOT NULL DEFAULT '{}',
    user_id          INTEGER REFERENCES users (id) ON DELETE CASCADE,
    run_at           INTEGER NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'succeeded', 'dead', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL DEFAULT 8 CHECK (max_attempts > 0),
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    completed_at     INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX scheduled_tasks_due ON scheduled_tasks (status, run_at);

CREATE TABLE mail_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid            TEXT    NOT NULL UNIQUE,
    user_id         INTEGER REFERENCES users (id) ON DELETE SET NULL,
    to_address      TEXT    NOT NULL,
    template        TEXT    NOT NULL,
    -- Template placeholders as a JSON object; rendered when the mail is sent.
    context         TEXT    NOT NULL DEFAULT '{}',
    dedupe_key      TEXT    UNIQUE,
    status          TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    sent_at         INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX mail_outbox_due ON mail_outbox (status, next_attempt_at);

-- A login session is a refresh-token family: presenting a rotated token revokes the session.
CREATE TABLE auth_sessions (
    id             TEXT    PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    ip             TEXT,
    user_agent     TEXT
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE refresh_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL REFERENCES auth_sessions (id) ON DELETE CASCADE,
    -- SHA-256 of the token; the token itself is never stored.
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE one_time_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT    NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    token_hash TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL CHECK (expires_at > created_at),
    used_at    INTEGER
);
CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, purpose);

CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    actor_user_id INTEGER REFERENCES users (id) ON DELETE SET NULL,
    -- 'user:<id>', 'cli' or 'system': who acted, even after the user row is gone.
    actor         TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    details       TEXT    NOT NULL DEFAULT '{}',
    ip            TEXT,
    created_at    INTEGER NOT NULL
);
CREATE INDEX audit_log_created ON audit_log (created_at);
