-- Devices: address allocation without scanning the subnet, the per-server peer-change log,
-- and promo codes.

-- The next host index to hand out on this server (1 is the server's own address).
ALTER TABLE vpn_servers ADD COLUMN next_host INTEGER NOT NULL DEFAULT 2;
-- The device's host index within the server's subnets (IPv4 and IPv6 use the same index).
ALTER TABLE devices ADD COLUMN host INTEGER;
CREATE UNIQUE INDEX devices_server_host ON devices (server_id, host);

-- Released host indexes wait out a quarantine before reuse, so a returning device can never
-- shadow one that was just revoked.
CREATE TABLE released_addresses (
    server_id    INTEGER NOT NULL REFERENCES vpn_servers (id) ON DELETE CASCADE,
    host         INTEGER NOT NULL CHECK (host >= 2),
    available_at INTEGER NOT NULL,
    PRIMARY KEY (server_id, host)
);
CREATE INDEX released_addresses_available ON released_addresses (server_id, available_at);

-- Every change to a server's peers, in revision order; nodes apply and acknowledge revisions.
CREATE TABLE peer_changes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    server_id      INTEGER NOT NULL REFERENCES vpn_servers (id) ON DELETE CASCADE,
    revision       INTEGER NOT NULL CHECK (revision > 0),
    op             TEXT    NOT NULL CHECK (op IN ('upsert', 'remove')),
    device_id      INTEGER REFERENCES devices (id) ON DELETE SET NULL,
    public_key     TEXT    NOT NULL,
    -- A key rotation's upsert names the key it replaces, so the node removes the old peer.
    old_public_key TEXT,
    -- For upserts: the peer's allowed IPs, e.g. "10.8.0.2/32, fd00::2/128".
    allowed_ips    TEXT,
    reason         TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    UNIQUE (server_id, revision)
);

CREATE TABLE promo_codes (
    code        TEXT    PRIMARY KEY CHECK (code = upper(code) AND length(code) BETWEEN 3 AND 32),
    description TEXT    NOT NULL DEFAULT '',
    percent_off INTEGER NOT NULL CHECK (percent_off BETWEEN 1 AND 100),
    valid_from  INTEGER,
    valid_until INTEGER,
    -- NULL: unlimited. The CHECK below makes over-redemption impossible, whatever the race.
    max_uses    INTEGER CHECK (max_uses IS NULL OR max_uses >= 0),
    uses        INTEGER NOT NULL DEFAULT 0 CHECK (uses >= 0),
    active      INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    CHECK (max_uses IS NULL OR uses <= max_uses)
);
INSERT INTO promo_codes (code, description, percent_off, created_at, updated_at) VALUES
    ('TRIAL20', '20% off the first month, for trial users', 20, 0, 0),
    ('COMEBACK30', '30% off the first month, for returning users', 30, 0, 0);

CREATE TABLE promo_redemptions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    code       TEXT    NOT NULL REFERENCES promo_codes (code),
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    payment_id INTEGER REFERENCES payments (id),
    created_at INTEGER NOT NULL,
    UNIQUE (code, user_id)
);
